"""Panoptic quality (PQ) with the semantics of the official PanNuke metric.

Which numbers equal the official metric: the ``instance`` variant
(:func:`harness.metrics.evaluate_segmentation`) scored against ground truth whose void pixels
(0 in every mask channel) are background. A dataset that can map void elsewhere says so in its
options (PanNuke's ``void_policy``: ``background`` is the official ground truth and is what an
unset policy becomes under ``pq_variant: instance``; ``thesis`` turns void into neoplastic as
the thesis's masks did, and goes with the ``thesis`` variant, which reproduces the thesis's
numbers, not the official metric).

:func:`panoptic_quality` scores one pair of instance maps exactly as PanNuke-metrics'
``get_fast_pq`` with ``match_iou >= 0.5`` does (reference §1.5). :func:`aggregate_pq` turns
per-class instance maps of a whole test set into the reported mPQ/bPQ: per-image class nanmean,
then per-tissue nanmean, then nanmean over tissues (``pnm:run.py``).

Why hand-written instead of ``torchmetrics.detection.PanopticQuality``: torchmetrics accumulates
IoU/TP/FP/FN over the *whole dataset* per category before averaging, so it has no per-image score,
no per-image class nanmean and no per-tissue averaging; its numbers do not match PanNuke's
(reference §1.5, "Do not substitute"). Speed is a second reason: the joint-histogram code below
needs a handful of vectorised NumPy passes per image whatever the number of nuclei
(benchmarks/test_pq_speed.py measures it against PanNuke's per-instance loop; torchmetrics itself
was not timed here).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

__all__ = [
    "PQResult",
    "panoptic_quality",
    "binarize_channels",
    "per_image_pq",
    "summarise_pq",
    "aggregate_pq",
]


class PQResult(NamedTuple):
    """Scores of one image pair. ``dq``/``sq``/``pq`` are NaN when both maps are empty."""

    dq: float
    sq: float
    pq: float
    tp: int
    fp: int
    fn: int


# ----------------------------------------------------------------------------------------------
# One image pair
# ----------------------------------------------------------------------------------------------

def _flat_ids(instances: np.ndarray, name: str) -> np.ndarray:
    """Validate an instance map and return its ids as a flat ``intp`` array (``bincount`` input)."""
    a = np.asarray(instances)
    if a.ndim != 2:
        raise ValueError(f"{name} must be a 2-D instance map, got shape {a.shape}")
    if a.dtype == bool:
        return a.ravel().astype(np.intp)
    if np.issubdtype(a.dtype, np.floating):
        # PanNuke stores masks as float64 with integer values; anything else is a caller bug.
        as_int = a.astype(np.int64)
        if not np.array_equal(as_int, a):
            raise ValueError(f"{name} holds non-integer values")
        a = as_int
    elif not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"{name} must hold integer instance ids, got dtype {a.dtype}")
    flat = a.ravel().astype(np.intp, copy=False)
    if flat.size and flat.min() < 0:
        raise ValueError(f"{name} holds negative ids")
    return flat


def _compact(flat: np.ndarray) -> np.ndarray:
    """Relabel ids to ``0..n`` keeping 0 (background) at 0.

    This is the ``np.unique(..., return_inverse=True)`` remap; for bounded ids (the usual case)
    a bincount lookup table gives the same labels without sorting, huge ids use ``np.unique``.
    """
    if flat.size == 0:
        return flat
    top = int(flat.max())
    if top <= 4 * flat.size + (1 << 16):
        present = np.bincount(flat, minlength=1) > 0
        present[0] = False
        lut = np.cumsum(present, dtype=np.intp)  # id -> rank among foreground ids, 0 -> 0
        return lut[flat]
    ids, inverse = np.unique(flat, return_inverse=True)
    inverse = inverse.reshape(-1).astype(np.intp, copy=False)
    return inverse if ids[0] == 0 else inverse + 1


def _overlaps(t: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                     np.ndarray, np.ndarray]:
    """Areas per id and intersections of every overlapping foreground pair.

    Returns ``t_area`` and ``p_area`` (indexed by id, entry 0 = background) and the arrays
    ``ti, pi, inter`` listing each (true id, pred id) pair with a non-empty intersection in
    row-major (true id, pred id) order -- the order ``get_fast_pq``'s ``np.nonzero`` uses.
    """
    n_pix = t.size
    n_t, n_p = int(t.max()) + 1, int(p.max()) + 1
    # Sparse or huge ids (e.g. PanNuke's 3512): make them contiguous first, the side with the
    # larger ids first (predictions from connected components are contiguous already).
    if n_t * n_p > n_pix and n_t >= n_p:
        t = _compact(t)
        n_t = int(t.max()) + 1
    if n_t * n_p > n_pix:
        p = _compact(p)
        n_p = int(p.max()) + 1
    if n_t * n_p > n_pix:
        t = _compact(t)
        n_t = int(t.max()) + 1
    keys = t * n_p + p
    if n_t * n_p <= max(n_pix, 1 << 12):
        # Dense joint histogram of (true id, pred id); its marginals are the areas.
        joint = np.bincount(keys, minlength=n_t * n_p).reshape(n_t, n_p)
        t_area, p_area = joint.sum(axis=1), joint.sum(axis=0)
        ti, pi = np.nonzero(joint[1:, 1:])
        inter = joint[1:, 1:][ti, pi]
        ti += 1
        pi += 1
    else:  # very many instances: a sparse histogram of the pairs that actually occur
        t_area, p_area = np.bincount(t, minlength=n_t), np.bincount(p, minlength=n_p)
        fg = (t > 0) & (p > 0)
        pair_keys, inter = np.unique(keys[fg], return_counts=True)
        ti, pi = np.divmod(pair_keys, n_p)
    # Ids absent from the (compacted or raw) map have zero area and are not instances.
    return t_area, p_area, ti, pi, inter


def panoptic_quality(true_instances: np.ndarray, pred_instances: np.ndarray,
                     iou_threshold: float = 0.5) -> PQResult:
    """PQ of one pair of 2-D instance maps (0 = background; other ids need not be contiguous).

    Semantics of PanNuke's ``get_fast_pq``: IoU = inter / (|t| + |p| - inter); a pair matches iff
    IoU > ``iou_threshold`` (strictly), which for thresholds >= 0.5 makes matches unique (no
    Hungarian step); TP = matched pairs, FP = unmatched predicted ids, FN = unmatched true ids;
    DQ = TP / (TP + FP/2 + FN/2), SQ = sum of matched IoU / (TP + 1e-6), PQ = DQ * SQ.

    Differences from the reference, on purpose:

    * every non-zero id is an instance even when 0 does not occur (the reference drops the first
      id, which crashes on a prediction covering the whole image, reference §6.3);
    * both maps empty gives ``dq = sq = pq = nan`` with ``tp = fp = fn = 0`` (the reference divides
      0 by 0). Empty truth with predictions gives 0, and so does an empty prediction;
    * thresholds below 0.5 raise ``ValueError`` (they would need Hungarian matching).
    """
    if not iou_threshold >= 0.5:  # also rejects NaN
        raise ValueError(f"iou_threshold must be >= 0.5 (unique matching), got {iou_threshold}")
    t = _flat_ids(true_instances, "true_instances")
    p = _flat_ids(pred_instances, "pred_instances")
    if t.size != p.size or np.shape(true_instances) != np.shape(pred_instances):
        raise ValueError(f"shape mismatch: true {np.shape(true_instances)} "
                         f"vs pred {np.shape(pred_instances)}")
    if t.size == 0:
        return PQResult(math.nan, math.nan, math.nan, 0, 0, 0)

    t_area, p_area, ti, pi, inter = _overlaps(t, p)
    n_true = int(np.count_nonzero(t_area[1:]))
    n_pred = int(np.count_nonzero(p_area[1:]))
    iou = inter / (t_area[ti] + p_area[pi] - inter)
    matched = iou[iou > iou_threshold]
    tp = int(matched.size)
    fp, fn = n_pred - tp, n_true - tp
    if tp + fp + fn == 0:
        return PQResult(math.nan, math.nan, math.nan, 0, 0, 0)
    dq = tp / (tp + 0.5 * fp + 0.5 * fn)
    sq = float(matched.sum()) / (tp + 1.0e-6)
    return PQResult(float(dq), float(sq), float(dq * sq), tp, fp, fn)


# ----------------------------------------------------------------------------------------------
# A whole test set (PanNuke-metrics run.py)
# ----------------------------------------------------------------------------------------------

def binarize_channels(channels: np.ndarray) -> np.ndarray:
    """Merge per-class instance maps ``(H, W, C)`` into one ``(H, W)`` instance map.

    Every (channel, id) gets its own id; where channels overlap the later channel wins, like
    PanNuke-metrics' ``binarize`` (ids are unique but not contiguous here, which PQ ignores).
    """
    ch = np.asarray(channels)
    if ch.ndim != 3:
        raise ValueError(f"expected (H, W, C) channels, got shape {ch.shape}")
    out = np.zeros(ch.shape[:2], dtype=np.int64)
    offset = 0
    for c in range(ch.shape[2]):
        layer = ch[..., c].astype(np.int64, copy=False)
        fg = layer > 0
        if fg.any():
            out[fg] = layer[fg] + offset
            offset += int(layer.max())
    return out


def _single_valued(a: np.ndarray) -> bool:
    """``len(np.unique(a)) == 1`` without sorting."""
    return bool(a.min() == a.max())


def per_image_pq(true_channels: np.ndarray, pred_channels: np.ndarray,
                 iou_threshold: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Per-image bPQ ``(N,)`` and per-image, per-class PQ ``(N, C)``; NaN where GT is absent.

    A class whose GT channel holds a single value (empty, or covering the whole image) is NaN,
    as in ``pnm:run.py``; so is bPQ when the binarized GT holds a single value.
    """
    true = np.asarray(true_channels)
    pred = np.asarray(pred_channels)
    if true.ndim != 4 or true.shape != pred.shape:
        raise ValueError(f"expected matching (N, H, W, C) maps, got {true.shape} and {pred.shape}")
    n, _, _, n_cls = true.shape
    bpq = np.full(n, np.nan)
    class_pq = np.full((n, n_cls), np.nan)
    for i in range(n):
        t_bin = binarize_channels(true[i])
        if not _single_valued(t_bin):
            bpq[i] = panoptic_quality(t_bin, binarize_channels(pred[i]), iou_threshold).pq
        for j in range(n_cls):
            t = true[i, :, :, j]
            if not _single_valued(t):
                class_pq[i, j] = panoptic_quality(t, pred[i, :, :, j], iou_threshold).pq
    return bpq, class_pq


def _nanmean(values: np.ndarray, axis: int | None = None) -> Any:
    """``np.nanmean`` that returns NaN for all-NaN or empty input without a RuntimeWarning."""
    values = np.asarray(values, dtype=np.float64)
    if axis is None and values.size == 0:
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(values, axis=axis)


def summarise_pq(bpq: np.ndarray, class_pq: np.ndarray, tissues: Sequence[str],
                 class_names: Sequence[str] | None = None) -> dict[str, Any]:
    """Aggregate per-image scores as ``pnm:run.py`` does (see :func:`aggregate_pq`)."""
    bpq = np.asarray(bpq, dtype=np.float64)
    class_pq = np.asarray(class_pq, dtype=np.float64)
    n, n_cls = class_pq.shape
    tissues = [str(t) for t in tissues]
    if len(tissues) != n or bpq.shape != (n,):
        raise ValueError(f"{n} images but {len(tissues)} tissues and {bpq.shape[0]} bPQ values")
    names = list(class_names) if class_names is not None else [f"class{j + 1}"
                                                               for j in range(n_cls)]
    if len(names) != n_cls:
        raise ValueError(f"{len(names)} class names for {n_cls} channels")

    mpq = _nanmean(class_pq, axis=1) if n else np.zeros(0)
    tissue_arr = np.asarray(tissues, dtype=object)
    per_tissue: dict[str, dict[str, Any]] = {}
    for tissue in sorted(set(tissues)):
        sel = tissue_arr == tissue
        per_tissue[tissue] = {"mpq": float(_nanmean(mpq[sel])),
                              "bpq": float(_nanmean(bpq[sel])),
                              "n": int(sel.sum())}
    return {
        "mpq": float(_nanmean([v["mpq"] for v in per_tissue.values()])),
        "bpq": float(_nanmean([v["bpq"] for v in per_tissue.values()])),
        "per_class": {name: float(_nanmean(class_pq[:, j])) for j, name in enumerate(names)},
        "per_tissue": per_tissue,
        "per_image": {"mpq": [float(v) for v in mpq], "bpq": [float(v) for v in bpq]},
        "n_images": int(n),
    }


def aggregate_pq(true_channels: np.ndarray, pred_channels: np.ndarray, tissues: Sequence[str],
                 class_names: Sequence[str] | None = None,
                 iou_threshold: float = 0.5) -> dict[str, Any]:
    """Dataset-level mPQ/bPQ of ``(N, H, W, C)`` per-class instance maps (reference §1.5).

    Per image: bPQ from the binarized maps and PQ per class (NaN where the GT lacks it);
    mPQ_i = nanmean over classes. Per tissue: nanmean over its images. Reported ``mpq``/``bpq`` =
    nanmean over tissues; ``per_class`` = nanmean over all images (not grouped by tissue).
    NaN stays ``float('nan')``; class names default to ``class1..classC``.
    """
    bpq, class_pq = per_image_pq(true_channels, pred_channels, iou_threshold)
    return summarise_pq(bpq, class_pq, tissues, class_names)
