"""Evaluation of a fine-tuned model on the (complete) test fold."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as nnf

from harness.data.base import LabeledArrays
from harness.data.torchdata import Normalizer
from harness.engine import metering
from harness.engine.context import StageContext
from harness.engine.model import build_unet
from harness.console import progress_bar
from harness.engine.runtime import Precision, no_tf32, resolve_num_workers
from harness.heads import out_channels, readers
from harness.metrics.family import MetricFamily
from harness.metrics.stream import auto_workers
from harness.safeload import STAGE_FIX, load_state_dict_file
from harness.store import atomic_write_json, stage_meta

if TYPE_CHECKING:
    from harness.spec.models import FinetuneSettings


#: Images per scoring chunk that ``eval_workers: auto`` sizes the pool by (the metric chunk).
_SCORE_CHUNK = 64


class _Images(torch.utils.data.Dataset):
    def __init__(self, images: np.ndarray, rows: np.ndarray):
        self.images, self.rows = images, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> torch.Tensor:
        """uint8 (3, H, W): a quarter of float32's bytes to copy; made float on the device."""
        img = np.array(self.images[int(self.rows[i])])
        return torch.from_numpy(img).permute(2, 0, 1)


@torch.no_grad()
def predict(model: torch.nn.Module, images: np.ndarray, rows: Sequence[int], normalizer: Normalizer,
            device: torch.device, batch_size: int, precision: Precision, quiet: bool | None = None,
            label: str = "predict", num_workers: int | str = "auto", reader: Any = None):
    """Yield ``(start, class_maps)`` chunks of argmax predictions (uint8, ``(n, H, W)``) for
    ``images[rows]``: full images, padded to a multiple of 32 for the U-Net and cropped back.
    Tiles travel as uint8 (pinned on CUDA, loaded by ``num_workers`` workers, ``auto`` as
    training's) and become float on the device. ``reader``
    (:func:`harness.heads.readers.reader`) turns logits into another chunk type."""
    from harness.engine.loader import fit_shared_memory

    reader = reader or readers.reader("semantic", 0)
    model.eval().to(device)
    data = _Images(images, np.asarray(rows))
    workers, prefetch = fit_shared_memory(data, batch_size, resolve_num_workers(num_workers, device), 2)
    loader = torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=False,
                                         pin_memory=device.type == "cuda", num_workers=workers,
                                         prefetch_factor=prefetch if workers else None)
    start, rows = 0, np.asarray(rows)
    meter = metering.meter(label, "predict", len(loader))
    with progress_bar(label, len(loader), quiet) as advance:
        for batch in loader:
            h, w = batch.shape[-2:]
            ph, pw = (-h) % 32, (-w) % 32
            x = normalizer(batch.to(device, non_blocking=True).float().div_(255.0))
            if ph or pw:
                x = nnf.pad(x, (0, pw, 0, ph), mode="reflect")
            with precision.autocast(), no_tf32():
                logits = model(x)
            pred = reader.read(logits[..., :h, :w])
            yield start, pred
            start += len(pred)
            advance(1)
            if meter is not None and meter.tick():
                break  # a calibration run: the other images are not computed (background)
        for rest in range(start, len(rows), batch_size):
            n = min(batch_size, len(rows) - rest)
            yield rest, reader.empty(n, tuple(images.shape[1:3]))


def load_model(path, encoder_name: str, num_classes: int,
               build: Callable[[str, int], torch.nn.Module] = build_unet) -> tuple[torch.nn.Module, Normalizer]:
    """A fine-tuned model artifact (``model.pt`` + the normalisation in its stage meta), into
    ``build(encoder_name, num_classes)`` (a U-Net by default; a protocol's ``build_model``)."""
    norm = stage_meta(path)["result"]["normalization"]
    model = build(encoder_name, num_classes)
    model.load_state_dict(load_state_dict_file(path / "model.pt", fix=STAGE_FIX))
    return model, Normalizer({"mean": norm["mean"], "std": norm["std"]}, norm["mode"])


def evaluate(ctx: StageContext, *, arrays: LabeledArrays, test_ids: Sequence[str], num_classes: int,
             class_names: Sequence[str], metric_family: MetricFamily, settings: FinetuneSettings,
             build: Callable[[str, int], torch.nn.Module] = build_unet,
             head: str = "semantic") -> dict[str, Any]:
    """Predict the test fold, score it with the metric family (batches scored in its worker
    processes while the next are predicted; a ``hover`` chunk is post-processed there too),
    write ``metrics.json`` and ``predictions.npz``. ``metric_family``: the registered family
    (:meth:`harness.plugins.Registry.metric_family`) that scores it."""
    model, normalizer = load_model(ctx.inputs["model"], settings.encoder,
                                   out_channels(head, num_classes), build)
    index = arrays.index_of()
    rows = np.array([index[s] for s in test_ids], dtype=np.int64)
    chunks = predict(model, arrays.images, rows, normalizer, ctx.device, settings.eval_batch_size,
                     Precision(ctx.device, settings.eval_precision == "amp"), ctx.quiet,
                     label=ctx.label, reader=readers.reader(head, num_classes))
    workers = settings.eval_workers
    if workers == "auto":
        workers = auto_workers(len(rows), _SCORE_CHUNK)
    scorer = metric_family.scorer(arrays, rows, class_names, workers)
    parts = []
    try:
        for _, part in chunks:
            parts.append(part)
            scorer.add(part)
        metrics = scorer.finish()
    finally:
        scorer.close()
    decoded = readers.decoded(scorer, parts)
    pred = decoded["classes"] if decoded else (
        np.concatenate(parts) if parts else np.zeros((0,) + arrays.classes.shape[1:], np.uint8))
    if decoded:
        metrics["pred_instances"] = readers.DESCRIPTION[head]
    np.savez_compressed(ctx.out / "predictions.npz", **(decoded or {"classes": pred}),
                        ids=np.array(list(test_ids)))
    atomic_write_json(ctx.out / "metrics.json", metrics)
    return {"test_images": len(test_ids), **predicted_classes(pred, ["background", *class_names])}


def predicted_classes(pred: np.ndarray, names: Sequence[str]) -> dict[str, Any]:
    """Facts about the predictions, per image: on how many images each class is predicted, and
    how many images are predicted as a single class throughout (a model that predicts only
    background everywhere has ``single_class_images`` equal to the number of images)."""
    present = np.stack([(pred == c).any(axis=(1, 2)) for c in range(len(names))], axis=1) \
        if len(pred) else np.zeros((0, len(names)), bool)
    return {"images_with_class": {n: int(v) for n, v in zip(names, present.sum(0))},
            "single_class_images": int((present.sum(1) == 1).sum())}
