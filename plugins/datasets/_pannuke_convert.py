"""Converting chunks of the official PanNuke arrays into the cache's maps (the rules are in
:mod:`._pannuke_io`'s docstring): uint8 images, the class and instance maps of both void
policies, and the release's anomalies counted per fold. Split from :mod:`._pannuke_io`, which
reads the release and writes the cache."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from ._pannuke_npy import NpyMember

N_MASK_CHANNELS = 6
#: argmax channel -> class id (channel 5 = background -> 0).
_CHANNEL_TO_CLASS = np.array([1, 2, 3, 4, 5, 0], dtype=np.uint8)
_ID_LIMIT = 1 << 24  # largest accepted instance id (the release's maxima are ~3,517)
_FOUR = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], dtype=bool)  # ndimage.generate_binary_structure(2, 1)


ANOMALY_KEYS = ("overlap_pixels", "overlap_patches", "void_pixels", "void_patches",
                "fully_void_patches", "split_ids", "nucleus_and_background_pixels",
                "nucleus_and_background_patches")


def convert_images(images: np.ndarray, member: NpyMember, indices: np.ndarray) -> np.ndarray:
    """uint8 RGB: ``rint`` and clip of values checked to lie in [-0.5, 255.5] (no NaN)."""
    x = np.asarray(images)
    n = len(x)
    flat = x.reshape(n, -1)
    lo, hi = flat.min(1), flat.max(1)  # a NaN propagates into both
    ok = (lo >= -0.5) & (hi <= 255.5)
    if not ok.all():
        i = int(np.argmin(ok))
        if np.issubdtype(x.dtype, np.floating) and not np.isfinite(flat[i]).all():
            raise member.error(f"index {int(indices[i])}: NaN or infinite values")
        raise member.error(f"index {int(indices[i])}: values {lo[i]:g}..{hi[i]:g} outside 0..255")
    if np.issubdtype(x.dtype, np.integer):
        return x.astype(np.uint8)
    tmp = np.rint(x)
    np.clip(tmp, 0, 255, out=tmp)
    return tmp.astype(np.uint8)


_PLANAR = np.zeros((3, 3, 3), dtype=bool)
_PLANAR[1] = _FOUR  # 4-connectivity within a plane, none across planes


def _as_int_ids(m: np.ndarray, member: NpyMember, indices: np.ndarray) -> np.ndarray:
    """The masks as int32 ids, checking that every value is a finite integer in 0..2^24-1."""
    n = len(m)
    if np.issubdtype(m.dtype, np.floating):
        with np.errstate(invalid="ignore"):
            mi = m.astype(np.int32)  # NaN, inf and huge values cast to garbage: caught here
        bad = (mi != m).reshape(n, -1).any(1)
        if bad.any():
            i = int(np.argmax(bad))
            row = m[i]
            if not np.isfinite(row).all():
                what = "NaN or infinite values"
            elif np.abs(row).max() >= _ID_LIMIT:
                what = f"instance id {np.abs(row).max():g} too large (limit {_ID_LIMIT})"
            else:
                what = "non-integer instance ids"
            raise member.error(f"index {int(indices[i])}: {what}")
    else:
        mi = m
    flat = mi.reshape(n, -1)
    neg = flat.min(1) < 0
    if neg.any():
        raise member.error(f"index {int(indices[np.argmax(neg)])}: negative values")
    top = flat.max(1)
    if (top >= _ID_LIMIT).any():
        i = int(np.argmax(top >= _ID_LIMIT))
        raise member.error(f"index {int(indices[i])}: instance id {top[i]} too large "
                           f"(limit {_ID_LIMIT})")
    return mi.astype(np.int32, copy=False)


def count_split_ids(mi: np.ndarray) -> int:
    """(patch, channel, id) triples of ``(n, H, W, 6)`` int masks whose pixels form more than one
    4-connected component. One labelling of the foreground of all class planes finds the ids
    spread over several components; ids that share their one component with other ids (touching
    nuclei) are checked exactly on their own."""
    from scipy import ndimage  # scipy on use: `harness validate`/`list` import this module

    n, h, w, _ = mi.shape
    planes = np.ascontiguousarray(mi[..., :5].transpose(0, 3, 1, 2)).reshape(n * 5, h, w)
    fg = planes > 0
    if not fg.any():
        return 0
    lab, nlab = ndimage.label(fg, structure=_PLANAR)
    # plane of every foreground pixel (boolean indexing walks the planes in order)
    plane = np.repeat(np.arange(n * 5, dtype=np.int64), fg.reshape(n * 5, -1).sum(1))
    key = plane * _ID_LIMIT + planes[fg]
    base = nlab + 1
    pairs = np.unique(key * base + lab[fg])
    pair_key, pair_lab = pairs // base, pairs % base
    keys, first, count = np.unique(pair_key, return_index=True, return_counts=True)
    split = int((count > 1).sum())
    keys_per_lab = np.bincount(pair_lab, minlength=base)
    ambiguous = (count == 1) & (keys_per_lab[pair_lab[first]] > 1)
    if ambiguous.any():
        boxes = ndimage.find_objects(lab)
        for k, comp in zip(keys[ambiguous], pair_lab[first][ambiguous]):
            box = boxes[int(comp) - 1]
            if ndimage.label(planes[box] == k % _ID_LIMIT, structure=_PLANAR)[1] > 1:
                split += 1
    return split


def convert_masks(masks: np.ndarray, member: NpyMember, indices: np.ndarray,
                  stats: dict[str, int]) -> dict[str, np.ndarray]:
    """Class and instance maps of both void policies for a chunk ``(n, H, W, 6)``."""
    from scipy import ndimage  # scipy on use: `harness validate`/`list` import this module

    mi = _as_int_ids(np.asarray(masks), member, indices)
    n = len(mi)
    # argmax over the six channels, exactly as np.argmax (ties -> the lower channel)
    best = mi[..., 0].copy()
    arg = np.zeros(best.shape, dtype=np.uint8)
    n_nuc = (best > 0).astype(np.uint8)
    for c in range(1, N_MASK_CHANNELS):
        v = mi[..., c]
        arg[v > best] = c
        np.maximum(best, v, out=best)
        if c < 5:
            n_nuc += v > 0
    classes = _CHANNEL_TO_CLASS[arg]
    void = best == 0  # all six channels 0 (values are non-negative)
    classes_bg = classes.copy()
    classes_bg[void] = 0

    # instances: (argmax channel, id) renumbered 1..n per patch in (channel, id) order
    fg = classes_bg > 0
    img = np.repeat(np.arange(n, dtype=np.int64), fg.reshape(n, -1).sum(1))
    stride = 8 * _ID_LIMIT
    key = img * stride + arg[fg].astype(np.int64) * _ID_LIMIT + best[fg]
    uniq, inv = np.unique(key, return_inverse=True)
    owner = uniq // stride
    rank = np.arange(len(uniq)) - np.searchsorted(owner, owner, side="left") + 1
    inst_bg = np.zeros(fg.shape, dtype=np.int32)
    inst_bg[fg] = rank[inv.reshape(-1)]
    inst = inst_bg.copy()
    per_image_void = void.reshape(n, -1).sum(1)
    for i in np.nonzero(per_image_void)[0]:
        labels, _ = ndimage.label(void[i], structure=_FOUR)
        top = int(inst_bg[i].max(initial=0))
        inst[i][void[i]] = labels[void[i]] + top

    # anomaly counts
    overlap = n_nuc > 1
    both = (n_nuc > 0) & (mi[..., 5] > 0)
    stats["overlap_pixels"] += int(overlap.sum())
    stats["overlap_patches"] += int(overlap.reshape(n, -1).any(1).sum())
    stats["void_pixels"] += int(per_image_void.sum())
    stats["void_patches"] += int((per_image_void > 0).sum())
    stats["fully_void_patches"] += int((per_image_void == void[0].size).sum())
    stats["nucleus_and_background_pixels"] += int(both.sum())
    stats["nucleus_and_background_patches"] += int(both.reshape(n, -1).any(1).sum())
    stats["split_ids"] += count_split_ids(mi)
    return {"classes": classes, "instances": inst,
            "classes_background": classes_bg, "instances_background": inst_bg}
