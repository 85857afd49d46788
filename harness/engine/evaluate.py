"""Evaluation of a fine-tuned model on the (complete) test fold."""

from __future__ import annotations

import json
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as nnf

from harness.data.augment import eval_transforms
from harness.data.base import LabeledArrays
from harness.data.torchdata import Normalizer, SegmentationSamples
from harness.engine.context import StageContext
from harness.engine.model import build_unet
from harness.engine.runtime import Precision, progress_bar
from harness.store import atomic_write_json


@torch.no_grad()
def predict(model: torch.nn.Module, arrays: LabeledArrays, ids: Sequence[str], normalizer: Normalizer,
            device: torch.device, batch_size: int, precision: Precision, quiet: bool | None,
            label: str = "predict") -> np.ndarray:
    """Argmax class maps ``(N, H, W)`` uint8 for the given ids (full images, padded to a multiple
    of 32 for the U-Net and cropped back)."""
    model.eval().to(device)
    data = SegmentationSamples(arrays, ids, eval_transforms())
    loader = torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=False)
    out = []
    with progress_bar(label, len(loader), quiet) as advance:
        for images, _ in loader:
            h, w = images.shape[-2:]
            ph, pw = (-h) % 32, (-w) % 32
            x = normalizer(images.to(device))
            if ph or pw:
                x = nnf.pad(x, (0, pw, 0, ph), mode="reflect")
            with precision.autocast():
                logits = model(x)
            out.append(logits[..., :h, :w].argmax(1).to(torch.uint8).cpu().numpy())
            advance(1)
    return np.concatenate(out) if out else np.zeros((0,) + arrays.classes.shape[1:], np.uint8)


def evaluate(ctx: StageContext, *, arrays: LabeledArrays, test_ids: Sequence[str], num_classes: int,
             class_names: Sequence[str], metric_family: str, settings: Any) -> dict[str, Any]:
    from harness.metrics import evaluate_dice, evaluate_segmentation

    ft = ctx.inputs["model"]
    meta = json.loads((ft / "meta.json").read_text())
    norm = meta["result"]["normalization"]
    normalizer = Normalizer({"mean": norm["mean"], "std": norm["std"]}, norm["mode"])
    model = build_unet(settings.encoder, num_classes)
    model.load_state_dict(torch.load(ft / "model.pt", map_location="cpu", weights_only=True))
    pred = predict(model, arrays, test_ids, normalizer, ctx.device, settings.eval_batch_size,
                   Precision(ctx.device, settings.amp), ctx.quiet, label=f"{ctx.label}")
    index = arrays.index_of()
    rows = np.array([index[s] for s in test_ids], dtype=np.int64)
    true_classes = np.asarray(arrays.classes[rows])
    if metric_family == "dice":
        metrics = {"dice": evaluate_dice(pred, true_classes)}
    else:
        true_inst = np.asarray(arrays.instances[rows])
        tissues = [arrays.tissues[r] for r in rows]
        metrics = evaluate_segmentation(pred, true_classes, true_inst, tissues, list(class_names))
    np.savez_compressed(ctx.out / "predictions.npz", classes=pred, ids=np.array(list(test_ids)))
    atomic_write_json(ctx.out / "metrics.json", metrics)
    return {"test_images": len(test_ids)}
