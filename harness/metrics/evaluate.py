"""Score semantic predictions with both PQ variants (PanNuke-metrics' ``get_fast_pq``; the
thesis code's ``segmentation/train.py`` L63-94)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .instances import _STRUCTURES, CONNECTIVITY, _as_batch
from .pq import image_pq, pooled_pq, summarise_pq

__all__ = ["evaluate_segmentation", "score_chunk", "summarise_chunks"]

#: Images converted to per-class channels at a time (bounds memory on a 2,700-image fold).
_CHUNK = 64

Scores = dict[str, tuple[np.ndarray, np.ndarray]]


def score_chunk(pred: np.ndarray, true: np.ndarray, inst: np.ndarray, k: int) -> Scores:
    """Per-image ``(bPQ, class PQ)`` of both variants for a few images (see
    :func:`evaluate_segmentation`). Pure and picklable: it runs in worker processes too.

    ``pred`` is ``(N, H, W)`` class maps (instances: connected components), or a chunk with a
    ``decode()`` giving ``(class maps, instance maps)`` (a ``hover`` head's outputs,
    :class:`harness.heads.hover_post.HoverMaps`); then the result also holds ``"maps"``.

    Each image's per-class planes are built one image at a time, channel first, exactly as
    :func:`~harness.metrics.instances.instances_to_channels`, ``semantic_to_instances`` and
    ``semantic_to_binary_channels`` build their channels, never as ``(N, H, W, K)`` arrays
    (a 64-image chunk of those is ~84 MB per variant, written and read again)."""
    from scipy import ndimage  # here: listing and validating specs import this module

    pred_inst = None
    if hasattr(pred, "decode"):  # a head's raw outputs (harness.heads): its own instances
        pred, pred_inst = pred.decode()
    _as_batch(pred, k, "predictions")
    _as_batch(true, k)
    if not np.issubdtype(inst.dtype, np.integer):
        raise ValueError(f"instances must hold integer ids, got dtype {inst.dtype}")
    n = pred.shape[0]
    out: Scores = {v: (np.full(n, np.nan), np.full((n, k), np.nan)) for v in ("instance", "thesis")}
    counts = {v: np.zeros((n, k, 4)) for v in out}  # per class TP, FP, FN, IoU sum (pooled PQ)
    structure = _STRUCTURES[CONNECTIVITY]  # predicted instances: connected components
    for i in range(n):
        t_masks = [true[i] == c + 1 for c in range(k)]
        p_masks = [pred[i] == c + 1 for c in range(k)]
        t_inst = []
        for mask in t_masks:
            plane = np.zeros(mask.shape, np.int32)
            np.copyto(plane, inst[i], where=mask, casting="unsafe")
            t_inst.append(plane)
        if pred_inst is None:
            p_inst = [ndimage.label(m, structure=structure)[0] if m.any()
                      else np.zeros(m.shape, np.int32) for m in p_masks]
        else:
            p_inst = [np.where(m, pred_inst[i], 0) for m in p_masks]
        for variant, planes in (("instance", (t_inst, p_inst)),
                                ("thesis", ([m.view(np.uint8) for m in t_masks],
                                            [m.view(np.uint8) for m in p_masks]))):
            bpq, class_pq = out[variant]
            bpq[i], class_pq[i] = image_pq(*planes, counts=counts[variant][i])
    out["counts"] = counts  # type: ignore[assignment]
    if pred_inst is not None:
        out["maps"] = (pred, pred_inst)  # type: ignore[assignment]
    return out


def summarise_chunks(chunks: Sequence[Scores], tissues: Sequence[str],
                     class_names: Sequence[str]) -> dict[str, Any]:
    """The metrics dict of :func:`evaluate_segmentation` from its chunks' scores, in image order."""
    k = len(class_names)
    result: dict[str, Any] = {}
    for variant in ("instance", "thesis"):
        parts = [c[variant] for c in chunks]
        bpq = np.concatenate([b for b, _ in parts]) if parts else np.zeros(0)
        class_pq = np.concatenate([c for _, c in parts]) if parts else np.zeros((0, k))
        result[variant] = summarise_pq(bpq, class_pq, tissues, class_names)
    if chunks and all("counts" in c for c in chunks):
        # CoNIC's mPQ+ (counts pooled over images), beside the per-image aggregation
        result["pooled"] = {v: pooled_pq(np.concatenate([c["counts"][v] for c in chunks]),
                                         class_names) for v in ("instance", "thesis")}
    result["connectivity"] = CONNECTIVITY
    return result


def evaluate_segmentation(pred_classes: np.ndarray, true_classes: np.ndarray,
                          true_instances: np.ndarray, tissues: Sequence[str],
                          class_names: Sequence[str]) -> dict[str, Any]:
    """mPQ/bPQ of ``(N, H, W)`` argmax class maps against GT classes and instances.

    * ``"instance"``: standard PanNuke mPQ/bPQ; GT instances split by class versus the
      :data:`~harness.metrics.instances.CONNECTIVITY`-connected components of each predicted class.
    * ``"thesis"``: the thesis/reference-code "stuff-style" PQ; each class of an image is one
      segment on both sides, so a class scores IoU/(1 + 1e-6) if its IoU > 0.5, else 0. A
      prediction covering the whole image is simply one segment (the reference code crashes).

    Both are :func:`~harness.metrics.pq.aggregate_pq` dicts; they are computed in chunks of images
    so that the ``(N, H, W, K)`` channel arrays never exist for the whole set at once. Every image
    is scored on its own, so chunking (and scoring chunks in other processes while predicting,
    :class:`harness.metrics.stream.ChunkScorer`) leaves the values unchanged.
    """
    pred = np.asarray(pred_classes)
    true = np.asarray(true_classes)
    inst = np.asarray(true_instances)
    if pred.ndim != 3 or pred.shape != true.shape or inst.shape != true.shape:
        raise ValueError(f"expected matching (N, H, W) maps, got pred {pred.shape}, "
                         f"classes {true.shape}, instances {inst.shape}")
    k = len(class_names)
    chunks = [score_chunk(pred[sl], true[sl], inst[sl], k)
              for sl in (slice(i, i + _CHUNK) for i in range(0, pred.shape[0], _CHUNK))]
    return summarise_chunks(chunks, tissues, class_names)
