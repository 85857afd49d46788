"""Panoptic quality (PQ) with the semantics of the official PanNuke metric.

Which numbers equal the official metric: the ``instance`` variant
(:func:`harness.metrics.evaluate_segmentation`) scored against ground truth whose void pixels
(0 in every mask channel) are background. A dataset that can map void elsewhere says so in its
options (PanNuke's ``void_policy``: ``background`` is the official ground truth and is what an
unset policy becomes under ``pq_variant: instance``; ``thesis`` turns void into neoplastic as
the thesis's masks did, and goes with the ``thesis`` variant, which reproduces the thesis's
numbers, not the official metric).

:func:`panoptic_quality` scores one pair of instance maps exactly as PanNuke-metrics'
``get_fast_pq`` with ``match_iou >= 0.5`` does (github.com/TissueImageAnalytics/PanNuke-metrics,
``utils.py``). :func:`aggregate_pq` turns per-class instance maps of a whole test set
(:func:`aggregate_pq_chunks`: given a chunk at a time) into the reported mPQ/bPQ: per-image
class nanmean, then per-tissue nanmean, then nanmean over tissues (``pnm:run.py``).

Why hand-written instead of ``torchmetrics.detection.PanopticQuality``: torchmetrics accumulates
IoU/TP/FP/FN over the *whole dataset* per category before averaging, so it has no per-image
score, no per-image class nanmean and no per-tissue averaging; its numbers do not match
PanNuke's (PanNuke-metrics' README: the official scores are computed with its code). Speed is a
second reason: the joint-histogram code below needs a handful of vectorised NumPy passes per
image whatever the number of nuclei (benchmarks/test_pq_speed.py measures it against PanNuke's
per-instance loop; torchmetrics itself was not timed here).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import numpy as np

__all__ = [
    "PQResult",
    "panoptic_quality",
    "binarize_channels",
    "image_pq",
    "per_image_pq",
    "summarise_pq",
    "aggregate_pq",
    "aggregate_pq_chunks",
    "pooled_pq",
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

def _checked_map(instances: np.ndarray, name: str) -> np.ndarray:
    """Validate an instance map (2-D; integer, bool, or float holding integers, as PanNuke's
    float64 masks) and return it as an array, without copying it."""
    a = np.asarray(instances)
    if a.ndim != 2:
        raise ValueError(f"{name} must be a 2-D instance map, got shape {a.shape}")
    if a.dtype.kind not in "biuf":  # dtype.kind, not np.issubdtype: this runs per image and class
        raise ValueError(f"{name} must hold integer instance ids, got dtype {a.dtype}")
    return a


def _ids(values: np.ndarray, name: str) -> np.ndarray:
    """Foreground ids (the non-zero pixels of a map, row-major) as ``intp``; only these are
    checked, since zeros are valid whatever the dtype."""
    kind = values.dtype.kind
    if kind == "b":
        return values.astype(np.intp)
    if kind == "f":
        as_int = values.astype(np.int64)
        if not np.array_equal(as_int, values):  # also NaN and inf
            raise ValueError(f"{name} holds non-integer values")
        values = as_int
    if kind != "u" and values.size and values.min() < 0:
        raise ValueError(f"{name} holds negative ids")
    return values.astype(np.intp, copy=False)


#: Largest id counted with a dense ``bincount`` (one ``intp`` per id up to it); a map with larger
#: ids is relabelled by rank first (``np.unique`` over its foreground pixels).
_DENSE_ID_LIMIT = 1 << 20


def _labels(fg: np.ndarray, both: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Areas indexed by label and the labels of the overlap pixels, for one map.

    ``fg`` holds the ids of the map's foreground pixels, ``both`` those of the pixels where both
    maps are foreground. Labels are the ids themselves, or their ranks (``1..n``) when ids are
    huge; either way in id order, which keeps the reference's pair order."""
    if fg.size and int(fg.max()) > _DENSE_ID_LIMIT:
        ids, inverse = np.unique(fg, return_inverse=True)
        return np.bincount(inverse.reshape(-1) + 1), np.searchsorted(ids, both) + 1
    return np.bincount(fg, minlength=1), both


def _overlaps(t_fg: np.ndarray, p_fg: np.ndarray, t_both: np.ndarray, p_both: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Areas per label and intersections of every overlapping foreground pair.

    Returns ``t_area`` and ``p_area`` (indexed by label; entry 0, background, is 0) and the arrays
    ``ti, pi, inter`` listing each (true label, pred label) pair with a non-empty intersection in
    row-major order -- the order ``get_fast_pq``'s ``np.nonzero`` uses, so that the matched IoUs
    are summed in the reference's order.

    Only foreground pixels are counted, and only the pixels where both maps are foreground are
    relabelled (through rank tables of the ids present) into a dense joint histogram. Ids
    may be as sparse as they like (PanNuke's run to ~4,000 with a few dozen nuclei per channel):
    nothing is done per id or per image-pixel beyond one comparison and one gather per map.
    This replaced a full-image relabelling of each sparse side followed by a joint histogram of
    every pixel (benchmarks/test_pq_speed.py measures both id layouts against it).
    """
    t_area, t_lab = _labels(t_fg, t_both)
    p_area, p_lab = _labels(p_fg, p_both)
    t_present, p_present = t_area > 0, p_area > 0
    t_ids, p_ids = np.flatnonzero(t_present), np.flatnonzero(p_present)  # ascending labels
    m_t, m_p = t_ids.size, p_ids.size
    t_rank = np.cumsum(t_present, dtype=np.intp) - 1  # label -> its rank among present labels
    p_rank = np.cumsum(p_present, dtype=np.intp) - 1
    keys = t_rank[t_lab] * m_p + p_rank[p_lab]
    if m_t * m_p <= max(keys.size, 1 << 12):
        joint = np.bincount(keys, minlength=m_t * m_p).reshape(m_t, m_p)
        ri, rp = np.nonzero(joint)
        inter = joint[ri, rp]
    else:  # very many overlapping instances: only the pairs that occur (sorted keys, row-major)
        pair_keys, inter = np.unique(keys, return_counts=True)
        ri, rp = np.divmod(pair_keys, m_p)
    return t_area, p_area, t_ids[ri], p_ids[rp], inter


def panoptic_quality(true_instances: np.ndarray, pred_instances: np.ndarray,
                     iou_threshold: float = 0.5) -> PQResult:
    """PQ of one pair of 2-D instance maps (0 = background; other ids need not be contiguous).

    Semantics of PanNuke's ``get_fast_pq``: IoU = inter / (|t| + |p| - inter); a pair matches iff
    IoU > ``iou_threshold`` (strictly), which for thresholds >= 0.5 makes matches unique (no
    Hungarian step); TP = matched pairs, FP = unmatched predicted ids, FN = unmatched true ids;
    DQ = TP / (TP + FP/2 + FN/2), SQ = sum of matched IoU / (TP + 1e-6), PQ = DQ * SQ.

    Differences from the reference, on purpose:

    * every non-zero id is an instance even when 0 does not occur (the reference drops the first
      id, which crashes on a prediction covering the whole image, as
      ``pricon:segmentation/train.py`` L63-94 can);
    * both maps empty gives ``dq = sq = pq = nan`` with ``tp = fp = fn = 0`` (the reference divides
      0 by 0). Empty truth with predictions gives 0, and so does an empty prediction;
    * thresholds below 0.5 raise ``ValueError`` (they would need Hungarian matching).
    """
    if not iou_threshold >= 0.5:  # also rejects NaN
        raise ValueError(f"iou_threshold must be >= 0.5 (unique matching), got {iou_threshold}")
    t = _checked_map(true_instances, "true_instances")
    p = _checked_map(pred_instances, "pred_instances")
    if t.shape != p.shape:
        raise ValueError(f"shape mismatch: true {t.shape} vs pred {p.shape}")
    if t.size == 0:
        return PQResult(math.nan, math.nan, math.nan, 0, 0, 0)
    t_mask = t != 0
    t_fg, p_at_t = t[t_mask], p[t_mask]  # nuclei cover a small part of an image: gather them once
    on_p = p_at_t != 0
    t_fg = _ids(t_fg, "true_instances")  # checked here; the overlap pixels are a subset
    p_fg = _ids(p[p != 0], "pred_instances")
    t_area, p_area, ti, pi, inter = _overlaps(
        t_fg, p_fg, t_fg[on_p], p_at_t[on_p].astype(np.intp, copy=False))
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
    return _binarize_planes(np.moveaxis(ch, -1, 0))


def _binarize_planes(planes: Sequence[np.ndarray]) -> np.ndarray:
    """:func:`binarize_channels` of channel-first planes ``(C, H, W)``."""
    out = np.zeros(planes[0].shape, dtype=np.int64)
    offset = 0
    for layer in planes:
        if layer.dtype.kind not in "iu":  # bool, or floats truncated as before
            layer = layer.astype(np.int64)
        fg = layer > 0
        values = layer[fg]  # only the nuclei: a small part of the image
        if values.size:
            out[fg] = values.astype(np.int64) + offset
            offset += int(values.max())
    return out


def _single_valued(a: np.ndarray) -> bool:
    """``len(np.unique(a)) == 1`` without sorting."""
    return bool(a.min() == a.max())


def image_pq(t_planes: Sequence[np.ndarray], p_planes: Sequence[np.ndarray],
             iou_threshold: float = 0.5, counts: np.ndarray | None = None) -> tuple[float, np.ndarray]:
    """bPQ and per-class PQ ``(C,)`` of one image given as per-class instance planes ``(H, W)``
    (channel first); NaN where the GT is absent (see :func:`per_image_pq`). ``counts`` (a
    ``(C, 4)`` array), if given, receives each class's TP, FP, FN and matched-IoU sum, also where
    the GT lacks the class (its predictions are FP), for :func:`pooled_pq`."""
    class_pq = np.full(len(t_planes), np.nan)
    for j, (t, p) in enumerate(zip(t_planes, p_planes)):
        scored = not _single_valued(t)
        if scored or (counts is not None and (t.any() or p.any())):
            r = panoptic_quality(t, p, iou_threshold)
            if scored:
                class_pq[j] = r.pq
            if counts is not None:
                counts[j] = (r.tp, r.fp, r.fn, 0.0 if r.tp == 0 else r.sq * (r.tp + 1.0e-6))
    t_bin = _binarize_planes(t_planes)
    bpq = math.nan
    if not _single_valued(t_bin):
        bpq = panoptic_quality(t_bin, _binarize_planes(p_planes), iou_threshold).pq
    return bpq, class_pq


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
        # one image's channels as contiguous planes: every pass below then reads memory in order
        bpq[i], class_pq[i] = image_pq(np.ascontiguousarray(np.moveaxis(true[i], -1, 0)),
                                       np.ascontiguousarray(np.moveaxis(pred[i], -1, 0)),
                                       iou_threshold)
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


def pooled_pq(counts: np.ndarray, class_names: Sequence[str]) -> dict[str, Any]:
    """CoNIC's mPQ+ (conic-challenge ``compute_stats.py``): per class, TP, FP, FN and the
    matched IoU sum pooled over all images (``counts``: ``(N, C, 4)`` from :func:`image_pq`), then
    DQ = TP / (TP + FP/2 + FN/2 + 1e-6), SQ = IoU sum / (TP + 1e-6), PQ = DQ * SQ; mPQ+ = mean
    over the classes."""
    tp, fp, fn, iou = np.asarray(counts, np.float64).reshape(-1, len(class_names), 4).sum(0).T
    pq = tp / (tp + 0.5 * fp + 0.5 * fn + 1.0e-6) * (iou / (tp + 1.0e-6))
    return {"mpq_plus": float(pq.mean()) if pq.size else math.nan,
            "per_class": {name: float(v) for name, v in zip(class_names, pq)}}


def aggregate_pq(true_channels: np.ndarray, pred_channels: np.ndarray, tissues: Sequence[str],
                 class_names: Sequence[str] | None = None,
                 iou_threshold: float = 0.5) -> dict[str, Any]:
    """Dataset-level mPQ/bPQ of ``(N, H, W, C)`` per-class instance maps (PanNuke-metrics'
    ``run.py``).

    Per image: bPQ from the binarized maps and PQ per class (NaN where the GT lacks it);
    mPQ_i = nanmean over classes. Per tissue: nanmean over its images. Reported ``mpq``/``bpq`` =
    nanmean over tissues; ``per_class`` = nanmean over all images (not grouped by tissue).
    NaN stays ``float('nan')``; class names default to ``class1..classC``.

    For small data: both channel arrays are whole in memory (one PanNuke fold as int32
    ``(2656, 256, 256, 6)`` maps: 8.6 GiB for the pair). For a large set use
    :func:`aggregate_pq_chunks`, which takes the images a chunk at a time, to the same result.
    """
    bpq, class_pq = per_image_pq(true_channels, pred_channels, iou_threshold)
    return summarise_pq(bpq, class_pq, tissues, class_names)


def aggregate_pq_chunks(chunks: Iterable[tuple[np.ndarray, np.ndarray]], tissues: Sequence[str],
                        class_names: Sequence[str] | None = None,
                        iou_threshold: float = 0.5) -> dict[str, Any]:
    """:func:`aggregate_pq` of a set given as an iterable of ``(true_channels, pred_channels)``
    chunks of ``(n, H, W, C)`` maps, in image order (``tissues``: one per image of all chunks):
    each image scores on its own, so the result equals ``aggregate_pq`` of the whole arrays
    while memory holds one chunk (e.g. a generator that builds each chunk's channel maps)."""
    scores = [per_image_pq(true, pred, iou_threshold) for true, pred in chunks]
    if not scores:
        n_cls = len(class_names) if class_names is not None else 0
        return summarise_pq(np.zeros(0), np.zeros((0, n_cls)), tissues, class_names)
    return summarise_pq(np.concatenate([b for b, _ in scores]),
                        np.concatenate([c for _, c in scores]), tissues, class_names)
