"""Throughput of the two-view pretraining pipeline (:class:`harness.data.views.TwoViewDataset`)
against a reference-like one.

The baseline is ``pricon:src/data.py``'s pipeline: per sample, ``PIL.Image.open`` of a 512x512
PNG tile from disk, then (v1, PIL) ``RandomResizedCrop(224, bicubic)``, horizontal flip and a
90/180/270 rotation (each when ``random.random() > 0.5``), ``ColorJitter(0.8, 0.8, 0.8, 0.2)``
with p = 0.8, ``RandomGrayscale(0.2)``, blur with p = 0, ``ToTensor`` and ``Normalize(0.5, 0.5)``,
applied twice (``MultiViewTransform``). Ours reads the same tiles from a read-only, disk-backed
``.npy`` memory map and applies the same ops with the same output size and distributions to both
views. With masks, the baseline also opens a PNG class map and applies the same geometry to it
(nearest), as the reference does.

"Per worker": one process, ``num_workers=0``, ``torch.set_num_threads(1)`` for both, batches of
16 through a ``DataLoader`` (collation included). Both pipelines are timed batch by batch in
interleaved windows; the fastest window of each is compared (as ``timeit`` takes the minimum:
robust to other load on a shared machine) and the median ratio is reported too.

Run::

    .venv/bin/python -m pytest benchmarks/test_view_pipeline_speed.py -m benchmark -p no:cacheprovider
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import functional as TF

from harness.data.view_config import ViewAugmentConfig
from harness.data.views import TwoViewDataset

N_TILES = 64
TILE = 512
BATCH = 16
ROUNDS = 40
TARGET_SPEEDUP = 4.0


# --- H&E-like tiles --------------------------------------------------------------------------

def he_tiles(n: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Pink stroma with textured eosin, purple elliptical nuclei with a class map, Beer-Lambert
    colour and sensor noise: PNGs compress about as badly as real H&E tiles do."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    h_od = np.array([0.95, 1.15, 0.45], np.float32)
    e_od = np.array([0.08, 0.85, 0.42], np.float32)
    images = np.empty((n, size, size, 3), np.uint8)
    masks = np.zeros((n, size, size), np.uint8)
    for i in range(n):
        eos = np.full((size, size), 0.6, np.float32)
        for _ in range(6):
            fx, fy = rng.uniform(-0.08, 0.08, 2)
            eos += rng.uniform(0.03, 0.12) * np.cos(fx * xx + fy * yy + rng.uniform(0, 6.3))
        hema = np.full((size, size), 0.06, np.float32)
        for _ in range(int(rng.integers(60, 120))):
            cy, cx = rng.uniform(0, size, 2)
            a, b = rng.uniform(4, 10), rng.uniform(3, 7)
            th = rng.uniform(0, np.pi)
            y0, y1 = int(max(cy - 11, 0)), int(min(cy + 12, size))
            x0, x1 = int(max(cx - 11, 0)), int(min(cx + 12, size))
            dy, dx = yy[y0:y1, x0:x1] - cy, xx[y0:y1, x0:x1] - cx
            u = (dx * np.cos(th) + dy * np.sin(th)) / a
            v = (-dx * np.sin(th) + dy * np.cos(th)) / b
            inside = u * u + v * v <= 1.0
            hema[y0:y1, x0:x1][inside] = rng.uniform(0.8, 1.4)
            masks[i, y0:y1, x0:x1][inside] = int(rng.integers(1, 6))
        od = hema[..., None] * h_od + eos[..., None] * e_od
        rgb = 255.0 * np.exp(-od) + rng.normal(0.0, 3.0, (size, size, 3))
        images[i] = np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
    return images, masks


@pytest.fixture(scope="module")
def tiles(tmp_path_factory):
    root = tmp_path_factory.mktemp("view_tiles")
    images, masks = he_tiles(N_TILES, TILE)
    png_dir = root / "png"
    png_dir.mkdir()
    for i in range(N_TILES):
        Image.fromarray(images[i]).save(png_dir / f"{i:04d}.png")
        Image.fromarray(masks[i]).save(png_dir / f"{i:04d}_mask.png")
    for name, arr in (("images", images), ("masks", masks)):
        mm = np.lib.format.open_memmap(root / f"{name}.npy", mode="w+", dtype=arr.dtype,
                                       shape=arr.shape)
        mm[:] = arr
        mm.flush()
        del mm
    png_bytes = sum((png_dir / f"{i:04d}.png").stat().st_size for i in range(N_TILES)) / N_TILES
    return {"root": root, "png_dir": png_dir, "png_kb": png_bytes / 1024,
            "images": np.load(root / "images.npy", mmap_mode="r"),
            "masks": np.load(root / "masks.npy", mmap_mode="r")}


# --- the reference-like baseline ---------------------------------------------------------------

class ReferenceTwoView(torch.utils.data.Dataset):
    """``pricon:src/data.py``-style: decode a PNG per sample, PIL transforms, two views."""

    def __init__(self, png_dir: Path, n: int, with_masks: bool = False):
        self.png_dir, self.n, self.with_masks = png_dir, n, with_masks
        self.crop = T.RandomResizedCrop(224, scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3),
                                        interpolation=T.InterpolationMode.BICUBIC)
        self.colour = T.Compose([
            T.RandomApply([T.ColorJitter(0.8, 0.8, 0.8, 0.2)], p=0.8),
            T.RandomGrayscale(p=0.2),
            T.RandomApply([T.GaussianBlur(23)], p=0.0),
            T.ToTensor(),
            T.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
        ])

    def __len__(self) -> int:
        return self.n

    def _view(self, img, mask):
        top, left, h, w = self.crop.get_params(img, self.crop.scale, self.crop.ratio)
        img = TF.resized_crop(img, top, left, h, w, [224, 224], T.InterpolationMode.BICUBIC)
        if mask is not None:
            mask = TF.resized_crop(mask, top, left, h, w, [224, 224], T.InterpolationMode.NEAREST)
        if random.random() > 0.5:
            img = TF.hflip(img)
            mask = TF.hflip(mask) if mask is not None else None
        if random.random() > 0.5:
            angle = random.choice([90, 180, 270])
            img = TF.rotate(img, angle)
            mask = TF.rotate(mask, angle) if mask is not None else None
        out = {"view": self.colour(img)}
        if mask is not None:
            out["mask"] = torch.from_numpy(np.array(mask, dtype=np.int64))
        return out

    def __getitem__(self, i: int):
        img = Image.open(self.png_dir / f"{i:04d}.png").convert("RGB")
        mask = Image.open(self.png_dir / f"{i:04d}_mask.png") if self.with_masks else None
        a, b = self._view(img, mask), self._view(img, mask)
        out = {"view1": a["view"], "view2": b["view"]}
        if mask is not None:
            out.update(mask1=a["mask"], mask2=b["mask"])
        return out


# --- timing ------------------------------------------------------------------------------------

def _batches(dataset):
    """Endless batches of BATCH samples through a single-process DataLoader (collation included)."""
    while True:
        loader = torch.utils.data.DataLoader(dataset, batch_size=BATCH, shuffle=False,
                                             num_workers=0, drop_last=True)
        yield from loader


def _time_batch(batches) -> float:
    t0 = time.perf_counter()
    batch = next(batches)
    rate = batch["view1"].shape[0] / (time.perf_counter() - t0)
    assert batch["view1"].shape[1:] == (3, 224, 224) and batch["view2"].shape[1:] == (3, 224, 224)
    return rate


def _epoch(dataset) -> float:
    loader = torch.utils.data.DataLoader(dataset, batch_size=BATCH, shuffle=False, num_workers=0)
    t0 = time.perf_counter()
    n = sum(batch["view1"].shape[0] for batch in loader)
    return n / (time.perf_counter() - t0)


def _compare(benchmark, baseline, ours, label: str, png_kb: float) -> None:
    threads = torch.get_num_threads()
    load_before = os.getloadavg()[0]
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        random.seed(0)
        base_it, ours_it = _batches(baseline), _batches(ours)
        for _ in range(N_TILES // BATCH):  # warm-up: page cache, allocator, kernels
            _time_batch(base_it), _time_batch(ours_it)
        base, fast = [], []
        for _ in range(ROUNDS):  # short interleaved windows: other load hits both alike
            base.append(_time_batch(base_it))
            fast.append(_time_batch(ours_it))
        benchmark.pedantic(_epoch, args=(ours,), rounds=3, iterations=1)
    finally:
        torch.set_num_threads(threads)
    ratio = max(fast) / max(base)
    median_ratio = float(np.median(fast) / np.median(base))
    benchmark.extra_info.update({
        "pipeline": label,
        "baseline_samples_per_s": round(max(base), 2),
        "ours_samples_per_s": round(max(fast), 2),
        "ratio": round(ratio, 2),
        "baseline_median_samples_per_s": round(float(np.median(base)), 2),
        "ours_median_samples_per_s": round(float(np.median(fast)), 2),
        "median_ratio": round(median_ratio, 2),
        "png_kb_per_tile": round(png_kb, 1),
        "tile": TILE, "tiles": N_TILES, "batch": BATCH, "rounds": ROUNDS, "threads": 1,
        # ours (AVX2 kernels, many small ops) loses more than PIL's PNG decode when other
        # processes compete for the cores: compare ratios at a similar load
        "loadavg_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "cpus": os.cpu_count(),
    })
    print(f"\n[{label}] best window: baseline {max(base):.1f} samples/s, ours {max(fast):.1f} "
          f"samples/s, ratio {ratio:.2f}x; medians {np.median(base):.1f} vs {np.median(fast):.1f}, "
          f"ratio {median_ratio:.2f}x (two views per sample, 1 thread, PNG {png_kb:.0f} kB, "
          f"load average {load_before:.1f} on {os.cpu_count()} CPUs)")
    assert ratio >= TARGET_SPEEDUP, (
        f"{label}: only {ratio:.2f}x faster than the reference-like pipeline (load average "
        f"{load_before:.1f} on {os.cpu_count()} CPUs; the ratio drops on an oversubscribed "
        f"machine, rerun on an idle one)")


@pytest.mark.benchmark
def test_two_view_speed(benchmark, tiles):
    ours = TwoViewDataset(tiles["images"], config=ViewAugmentConfig())
    baseline = ReferenceTwoView(tiles["png_dir"], N_TILES)
    _compare(benchmark, baseline, ours, "images", tiles["png_kb"])


@pytest.mark.benchmark
def test_two_view_with_masks_speed(benchmark, tiles):
    ours = TwoViewDataset(tiles["images"], tiles["masks"], config=ViewAugmentConfig())
    baseline = ReferenceTwoView(tiles["png_dir"], N_TILES, with_masks=True)
    _compare(benchmark, baseline, ours, "images+masks", tiles["png_kb"])
