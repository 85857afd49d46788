"""NP/HV/NC maps for checking the ``hover`` post-processing against HoVer-Net's function.

Made from synthetic instance maps with touching nuclei (``crowding``), tiny nuclei and nuclei
cut by the border, with smooth noise on the HV maps and the nucleus probability and flipped NC
pixels; quantised (NP to 1/255, HV to 1/256) so that the same integers are made again whatever
float rounding a platform does on the way. Used by tests/test_hover_postproc.py, by
benchmarks/test_hover_postproc_speed.py and (outside this repository) to compute the stored
expected outputs of vqdang/hover_net ``models/hovernet/post_proc.py:process``.
"""

from __future__ import annotations

import hashlib

import numpy as np

from harness.heads.hover_targets import hv_maps
from plugins.datasets._synthetic_draw import draw_set

N_MAPS = 110
SIZE = 256
NUM_CLASSES = 6


def _smooth(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(rng.standard_normal(shape), sigma)


def _tiny_nuclei(rng: np.random.Generator, inst: np.ndarray, cls: np.ndarray) -> None:
    """Paint a few 1-20 px nuclei on background (some under the 10 px minimum)."""
    next_id = int(inst.max()) + 1
    for _ in range(8):
        r, c = rng.integers(0, inst.shape[0], 2)
        h, w = rng.integers(1, 5, 2)
        box = (slice(r, r + h), slice(c, c + w))
        if (inst[box] == 0).all():
            inst[box], cls[box] = next_id, rng.integers(1, NUM_CLASSES)
            next_id += 1


def make_maps(n: int = N_MAPS, size: int = SIZE, seed: int = 25):
    """``n`` tuples ``(nuclei (H, W) float32, hv (2, H, W) float32, types (H, W) uint8)``;
    the first two hold no nucleus at all."""
    tissues = ["Breast", "Colon", "Lung"] * (n // 3 + 1)
    count = (6 * (size // 128) ** 2, 16 * (size // 128) ** 2)  # nuclei twice as large: 1/4
    _, insts, classes = draw_set(seed, 0, size, tissues[:n], count, crowding=0.7, scale=2.0)
    out = []
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        inst, cls = insts[i].copy(), classes[i].copy()
        if i < 2:
            inst[:], cls[:] = 0, 0
        _tiny_nuclei(rng, inst, cls)
        fg = inst > 0
        p = 0.1 + 0.8 * fg + 0.12 * _smooth(rng, fg.shape, 2.0) / 0.14
        nuclei = (np.round(np.clip(p, 0, 1) * 255) / 255).astype(np.float32)
        noisy = hv_maps(inst, min_area=0) + 0.15 * _smooth(rng, (2,) + fg.shape, (0, 1.5, 1.5)) / 0.2
        hv = (np.round(np.clip(noisy, -1.5, 1.5) * 256) / 256).astype(np.float32)
        flip = rng.random(fg.shape) < 0.1
        types = np.where(flip, rng.integers(0, NUM_CLASSES, fg.shape), cls).astype(np.uint8)
        out.append((nuclei, hv, types))
    return out


def digest(maps) -> str:
    """SHA-256 of the maps' bytes (to tell a changed generator from a changed function)."""
    h = hashlib.sha256()
    for arrays in maps:
        for a in arrays:
            h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def canonical(instances: np.ndarray) -> np.ndarray:
    """Ids renumbered ``1..n`` in the raster order of each instance's first pixel (uint16)."""
    flat = instances.ravel()
    ids, first = np.unique(flat, return_index=True)
    order = np.argsort(first[ids > 0])
    table = np.zeros(int(ids.max(initial=0)) + 1, np.uint16)
    table[ids[ids > 0][order]] = np.arange(1, len(order) + 1, dtype=np.uint16)
    return table[instances]
