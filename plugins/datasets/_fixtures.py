"""Tiny sources in the official layouts of the downloaded datasets, for `harness plugin check`
(each dataset's ``conformance_fixture``): a few 64-pixel patches with disc-shaped nuclei, so the
real ``prepare`` converts them as it converts the download. The datasets' own tests use richer
fixtures with the release's anomalies (tests/test_dataset_*.py)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

SIZE = 64


def _discs(rng: np.random.Generator, n: int, size: int = SIZE) -> list[list[tuple[int, int, int, int]]]:
    """Per image: non-overlapping discs (class index from 0, cy, cx, r) on a 4x4 grid."""
    out = []
    for _ in range(n):
        cells = rng.choice(16, size=int(rng.integers(2, 6)), replace=False)
        step = size // 4
        out.append([(int(rng.integers(0, 5)), int(c // 4) * step + step // 2,
                     int(c % 4) * step + step // 2, int(rng.integers(3, step // 2 - 1)))
                    for c in cells])
    return out


def _disc(size: int, cy: int, cx: int, r: int) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def pannuke(folder: Path, tissues: tuple[str, ...] = ("Breast", "Colon", "Breast", "Breast")) -> Path:
    """``Fold k/images/foldk/{images,types}.npy`` and ``Fold k/masks/foldk/masks.npy`` (float64
    images, six mask channels: five classes holding instance ids, then background)."""
    for k in (1, 2, 3):
        rng = np.random.default_rng(k)
        n = len(tissues)
        images = rng.integers(0, 256, (n, SIZE, SIZE, 3)).astype(np.float64)
        masks = np.zeros((n, SIZE, SIZE, 6), np.float64)
        for i, discs in enumerate(_discs(rng, n)):
            for j, (c, cy, cx, r) in enumerate(discs):
                masks[i, :, :, c][_disc(SIZE, cy, cx, r)] = 10 * k + j + 1
            masks[i, :, :, 5] = (masks[i, :, :, :5] == 0).all(-1)
        img_dir, mask_dir = (folder / f"Fold {k}" / part / f"fold{k}" for part in ("images", "masks"))
        img_dir.mkdir(parents=True)
        mask_dir.mkdir(parents=True)
        np.save(img_dir / "images.npy", images)
        np.save(img_dir / "types.npy", np.array(tissues))
        np.save(mask_dir / "masks.npy", masks)
    return folder


def lizard(folder: Path) -> Path:
    """The CoNIC patch release: images.npy, labels.npy (instance, class), patch_info.csv and the
    Lizard info.csv with each image's split."""
    rng = np.random.default_rng(0)
    images_ = [("consep_1", "consep", 1, 2), ("glas_2", "glas", 2, 2), ("crag_3", "crag", 3, 2)]
    names = [f"{img}-{k:04d}" for img, _, _, p in images_ for k in range(p)]
    labels = np.zeros((len(names), SIZE, SIZE, 2), np.uint16)
    for i, discs in enumerate(_discs(rng, len(names))):
        for j, (c, cy, cx, r) in enumerate(discs):
            labels[i][_disc(SIZE, cy, cx, r)] = (j + 1, c + 1)
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "images.npy", rng.integers(0, 256, (len(names), SIZE, SIZE, 3), dtype=np.uint8))
    np.save(folder / "labels.npy", labels)
    with open(folder / "patch_info.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([["patch_info"], *([name] for name in names)])
    (folder / "info.csv").write_text("Filename,Source,Split\n" + "".join(
        f"{img},{src},{split}\n" for img, src, split, _ in images_))
    return folder


def tnbc(folder: Path) -> Path:
    """``TNBC_NucleiSegmentation/Slide_XX/<p>_<k>.png`` with masks in ``GT_XX/``."""
    from PIL import Image

    rng = np.random.default_rng(0)
    root = folder / "TNBC_NucleiSegmentation"
    for p, k in (("01", 1), ("01", 2), ("02", 1), ("02", 2), ("03", 1), ("04", 1)):
        mask = np.zeros((SIZE, SIZE), np.uint8)
        for _, cy, cx, r in _discs(rng, 1)[0]:
            mask[_disc(SIZE, cy, cx, r)] = 255
        for part, arr in (("Slide", rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)),
                          ("GT", mask)):
            (root / f"{part}_{p}").mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).save(root / f"{part}_{p}" / f"{p}_{k}.png")
    return root


def tiles(folder: Path, n: int = 6) -> Path:
    """A folder of pre-cut RGB tiles of ``SIZE`` pixels (PNG)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)).save(folder / f"t{i}.png")
    return folder
