"""Pseudo-labels: a labeler's argmax over every unlabeled image (no augmentation), batched,
stored as one uint8 memory map, resumable chunk by chunk. In fp32 by default, as the
reference labeled (``finetune.pseudolabel_amp: true`` for mixed precision on CUDA)."""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from harness.engine.context import StageContext
from harness.engine.evaluate import load_model, predict
from harness.engine.runtime import Precision
from harness.store import atomic_write_json

#: Images per resumable chunk (progress is saved after each).
CHUNK = 512


def pseudolabel(ctx: StageContext, *, images: np.ndarray, encoder_name: str, num_classes: int,
                batch_size: int, amp: bool = False, chunk: int | None = None,
                build: Any = None) -> dict[str, Any]:
    """``build(encoder_name, num_classes)``: the labeler's network (a U-Net by default)."""
    chunk = chunk or CHUNK
    model, normalizer = (load_model(ctx.inputs["labeler"], encoder_name, num_classes, build) if build
                         else load_model(ctx.inputs["labeler"], encoder_name, num_classes))
    n, h, w = images.shape[:3]
    path, progress = ctx.work / "masks.npy", ctx.work / "progress.json"
    done = json.loads(progress.read_text())["done"] if progress.exists() and path.exists() else 0
    masks = np.lib.format.open_memmap(path, mode="r+" if done else "w+", dtype=np.uint8, shape=(n, h, w))
    precision = Precision(ctx.device, amp)
    for start in range(done, n, chunk):
        rows = np.arange(start, min(n, start + chunk))
        for offset, pred in predict(model, images, rows, normalizer, ctx.device, batch_size,
                                    precision, ctx.quiet, label=f"{ctx.label} {start}/{n}"):
            masks[start + offset:start + offset + len(pred)] = pred
        masks.flush()
        atomic_write_json(progress, {"done": int(rows[-1]) + 1})
    counts = np.zeros(num_classes, dtype=np.int64)
    for start in range(0, n, chunk):
        counts += np.bincount(np.asarray(masks[start:start + chunk]).ravel(), minlength=num_classes)[:num_classes]
    del masks
    os.replace(path, ctx.out / "masks.npy")
    return {"images": n, "class_fractions": (counts / max(1, counts.sum())).round(6).tolist(),
            "resumed_from_image": done,
            "precision": str(precision.dtype).replace("torch.", "") if precision.dtype else "fp32"}
