"""PRICon's pure tensor operations: mask pooling, valid classes, point sampling, region and image
pooling (``pricon:src/model.py`` ``training_step`` L181-283; thesis §3.2, Eqs. 3.2-3.4).

Shapes: ``B`` images, ``C`` classes (background included, it is an ordinary class), ``D``
feature channels, dense maps at ``R x R``. Dense features ``z`` are (B, D, R, R) (or already
flattened, (B, D, R*R)); pooled masks are (B, C, R, R) (or (B, C, R*R)) holding per-cell class
fractions in [0, 1].

Skip rule (an extension of the reference): an image with **no class present in both views** is
skipped, i.e. it contributes no points and no regions. The reference crashes on such an image
(``random.choice([])``); it can occur only for extreme crops. Its image-level features are
unaffected (the image term needs no mask).

Randomness only comes from ``torch.multinomial`` with the optional ``generator`` argument, so a
seeded :class:`torch.Generator` (on the tensors' device) makes sampling reproducible.

Host syncs: which (image, class) pairs are valid decides how many points and regions there are,
so it is read on the host once per step (:func:`valid_pairs`, one device-to-host copy shared
by the point sampling and the region pooling); nothing else here waits for the device.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from harness.engine.host_syncs import to_host

__all__ = [
    "one_hot_masks",
    "pool_masks",
    "valid_classes",
    "valid_pairs",
    "sample_point_indices",
    "sample_points",
    "region_pool",
    "image_pool",
    "upsample_dense",
]


def _flat(t: torch.Tensor, name: str) -> torch.Tensor:
    if t.dim() == 4:
        return t.flatten(2)
    if t.dim() == 3:
        return t
    raise ValueError(f"{name} must be (B, K, R, R) or (B, K, R*R), got shape {tuple(t.shape)}")


def one_hot_masks(masks: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(B, H, W) class maps -> (B, C, H, W) one-hot (bool), the values and memory layout of
    ``F.one_hot(masks, C).permute(0, 3, 1, 2)`` without its range checks, which read the maps'
    minimum and maximum on the host (on CPU; CUDA skips them). A class outside ``0..C-1`` gives
    an all-zero row."""
    return (masks[..., None] == torch.arange(num_classes, device=masks.device)).permute(0, 3, 1, 2)


def pool_masks(one_hot_masks: torch.Tensor, R: int) -> torch.Tensor:
    """(B, C, H, W) one-hot masks -> (B, C, R, R) class fractions per cell.

    ``adaptive_avg_pool2d(one_hot.float(), R)`` (``pricon:src/model.py L189-201``). For the
    upsampled-resolution ablation (thesis Table 4.6c) pool directly at the target ``R'``.
    """
    if one_hot_masks.dim() != 4:
        raise ValueError(f"pool_masks expects (B, C, H, W), got shape {tuple(one_hot_masks.shape)}")
    return F.adaptive_avg_pool2d(one_hot_masks.float(), R)


def valid_classes(pooled1: torch.Tensor, pooled2: torch.Tensor) -> torch.Tensor:
    """(B, C) bool: class c is present (some non-zero cell) in **both** views' pooled masks of
    image b (``pricon:src/model.py get_valid_classes`` L107-116)."""
    m1, m2 = _flat(pooled1, "pooled1"), _flat(pooled2, "pooled2")
    if m1.shape != m2.shape:
        raise ValueError(f"pooled masks differ in shape: {tuple(m1.shape)} vs {tuple(m2.shape)}")
    return (m1 != 0).any(dim=2) & (m2 != 0).any(dim=2)


def valid_pairs(valid: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """The (image, class) indices of the True entries of ``valid`` (B, C), row-major (image-major,
    classes ascending), read on the host: one device-to-host copy."""
    images, classes = np.nonzero(to_host(valid))
    return images.astype(np.int64), classes.astype(np.int64)


def sample_point_indices(
    pooled1: torch.Tensor,
    pooled2: torch.Tensor,
    n_points: int,
    valid: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    pairs: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw the point pairs of the point loss (thesis §3.2 "Point-level Loss"; reference
    ``sample_index_pairs`` L150-173, as described in DATA_AND_METHODS §7.4 step 4).

    For every kept image and each of the ``n_points`` iterations: one class uniformly among the
    image's valid classes (the same class for both views), then a cell in view 1 drawn with
    probability proportional to that class's pooled fraction (``torch.multinomial``) and,
    independently, a cell in view 2 from view 2's fractions.

    Returns ``(images, classes, cells1, cells2)``, each (n_points, B') with B' the images that have
    at least one valid class, in their original order (the skip rule): iteration-major, as the
    reference stacks them. ``images`` holds the original image indices, ``cells*`` flat indices
    into the R*R grid. ``pairs``: :func:`valid_pairs` of ``valid`` where the caller has them.
    """
    m1, m2 = _flat(pooled1, "pooled1"), _flat(pooled2, "pooled2")
    if valid is None:
        valid = valid_classes(m1, m2)
    if n_points < 1:
        raise ValueError(f"n_points must be >= 1, got {n_points}")
    images = (pairs if pairs is not None else valid_pairs(valid))[0]
    kept = torch.from_numpy(np.unique(images)).to(m1.device)  # images with a valid class
    nk = kept.numel()
    if nk == 0:
        empty = torch.zeros((n_points, 0), dtype=torch.long, device=m1.device)
        return empty, empty.clone(), empty.clone(), empty.clone()
    # (B', N): a class per (image, iteration), uniform over the image's valid classes
    cls = torch.multinomial(valid[kept].float(), n_points, replacement=True, generator=generator)
    img = kept[:, None].expand(nk, n_points)
    p1 = m1[img, cls].reshape(nk * n_points, -1).float()
    p2 = m2[img, cls].reshape(nk * n_points, -1).float()
    cells1 = torch.multinomial(p1, 1, generator=generator).view(nk, n_points)
    cells2 = torch.multinomial(p2, 1, generator=generator).view(nk, n_points)
    return img.t().contiguous(), cls.t().contiguous(), cells1.t().contiguous(), cells2.t().contiguous()


def sample_points(
    z1: torch.Tensor,
    z2: torch.Tensor,
    pooled1: torch.Tensor,
    pooled2: torch.Tensor,
    n_points: int,
    valid: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    pairs: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Point features and labels for the point loss.

    ``z1``/``z2``: dense features of the two views; ``pooled1``/``pooled2`` their pooled masks at
    the same resolution. Returns ``features`` (2 * B' * n_points, D) and ``labels`` (same length,
    long): view 1 first, then view 2; inside each view iteration-major (all kept images for
    iteration 0, then iteration 1, ...); the labels of view 2 repeat those of view 1
    (``pricon:src/model.py L210-236``). B' excludes images without a valid class (skip rule);
    with none left the result is empty ((0, D) and (0,)).
    """
    f1, f2 = _flat(z1, "z1"), _flat(z2, "z2")
    img, cls, c1, c2 = sample_point_indices(pooled1, pooled2, n_points, valid, generator, pairs)
    img, cls, c1, c2 = img.flatten(), cls.flatten(), c1.flatten(), c2.flatten()
    return torch.cat([_take_cells(f1, img, c1), _take_cells(f2, img, c2)]), torch.cat([cls, cls])


def _take_cells(f: torch.Tensor, img: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
    """(B, D, R*R) features -> (K, D) rows ``f[img[k], :, cells[k]]``.

    Through ``index_select`` on the flattened (B*R*R, D) map rather than ``f[img, :, cells]``:
    the same values, but the backward of advanced indexing (``index_put_`` with accumulation)
    sums the gradients of a cell drawn more than once in a thread-dependent order on CPU, which
    made PRICon's pretraining differ between two 2-thread runs; ``index_select``'s backward
    (``index_add_``) accumulates in index order on CPU."""
    b, d, rr = f.shape
    return f.permute(0, 2, 1).reshape(b * rr, d).index_select(0, img * rr + cells)


def region_pool(
    z1: torch.Tensor,
    z2: torch.Tensor,
    pooled1: torch.Tensor,
    pooled2: torch.Tensor,
    valid: torch.Tensor | None = None,
    pairs: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[torch.Tensor, np.ndarray]:
    """Region features and labels for the region loss (thesis Eq. 3.3; reference
    ``mask_pooling`` L118-148).

    For each image b and each class c valid for it, in both views::

        h = sum_cells m[b, c, cell] * z[b, :, cell] / sum_cells m[b, c, cell]

    with the **soft** pooled fractions ``m`` as weights. Returns ``features`` (2K, D) and
    ``labels`` (2K,) with K = number of valid (image, class) pairs: view 1 first, then view 2,
    each image-major with classes ascending. Images without a valid class contribute nothing.
    The labels are a host array (``int64``; :func:`~harness_builtin.methods.supcon.supcon_loss`
    then needs no copy of them); ``pairs``: :func:`valid_pairs` of ``valid`` where the caller has
    them.
    """
    f1, f2 = _flat(z1, "z1"), _flat(z2, "z2")
    m1, m2 = _flat(pooled1, "pooled1"), _flat(pooled2, "pooled2")
    if valid is None:
        valid = valid_classes(m1, m2)
    b_host, c_host = pairs if pairs is not None else valid_pairs(valid)  # image-major, classes ascending
    b_idx, c_idx = (torch.from_numpy(a).to(f1.device) for a in (b_host, c_host))

    def pool(f: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        w = m[b_idx, c_idx].to(f.dtype)  # (K, R*R)
        # index_select, not f[b_idx]: an image repeats once per valid class, and advanced
        # indexing's backward sums those repeats in a thread-dependent order (see _take_cells)
        num = torch.einsum("kr,kdr->kd", w, f.index_select(0, b_idx))
        return num / w.sum(dim=1, keepdim=True)

    return torch.cat([pool(f1, m1), pool(f2, m2)]), np.concatenate([c_host, c_host])


def image_pool(z: torch.Tensor) -> torch.Tensor:
    """(B, D, R, R) or (B, D, R*R) dense features -> (B, D) global average (the image term pools
    the *projected* map, ``pricon:src/model.py L260-275``)."""
    return _flat(z, "z").mean(dim=2)


def upsample_dense(z: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinearly upsample a (B, D, R, R) dense map to (B, D, size, size) before the loss (thesis
    §4.3, Table 4.6c; not in the reference code). ``align_corners=False``. Pair it with masks
    pooled at the same ``size`` (:func:`pool_masks`). Identity when already at ``size``."""
    if z.dim() != 4:
        raise ValueError(f"upsample_dense expects (B, D, R, R), got shape {tuple(z.shape)}")
    if z.shape[-2:] == (size, size):
        return z
    return F.interpolate(z, size=(size, size), mode="bilinear", align_corners=False)
