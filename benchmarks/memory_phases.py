"""One phase of the unlabeled-tile data path, run in its own process so that
``benchmarks/test_memory_flat.py`` can follow its resident memory.

    python benchmarks/memory_phases.py tiles SOURCE N SIZE      # N generated PNG tiles
    python benchmarks/memory_phases.py prepare SOURCE ROOT SIZE # `tcga` tiles mode -> ROOT
    python benchmarks/memory_phases.py pseudolabel ROOT WORK    # random U-Net labeler, 6 classes
    python benchmarks/memory_phases.py stream ROOT MASKS CROP   # one epoch of two-view batches

Each phase is what the corresponding stage runs (the dataset plugin's ``prepare``, the engine's
``pseudolabel``, the pretraining stage's ``TwoViewDataset`` + ``epoch_loader``), on the CPU.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

NUM_CLASSES = 6


def tiles(source: Path, n: int, size: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (size * 2, size * 2, 3), dtype=np.uint8)
    for i in range(n):
        folder = source / f"slide{i // 500:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        y, x = rng.integers(0, size, 2)
        Image.fromarray(base[y:y + size, x:x + size]).save(folder / f"tile{i:06d}.png",
                                                           compress_level=1)


def _dataset(root: Path, size: int = 0):
    from harness_builtin.datasets.tcga import TCGADataset

    config = TCGADataset.Config(tile_size=size) if size else TCGADataset.Config()
    return TCGADataset(config, root)


def prepare(source: Path, root: Path, size: int) -> None:
    _dataset(root, size).prepare(source)


def pseudolabel(root: Path, work: Path) -> None:
    import torch

    from harness.engine.context import StageContext
    from harness.engine.model import build_unet
    from harness.engine.pseudolabel import pseudolabel as run

    torch.manual_seed(0)
    labeler = work / "labeler"
    labeler.mkdir(parents=True, exist_ok=True)
    torch.save(build_unet("resnet18", NUM_CLASSES).state_dict(), labeler / "model.pt")
    (labeler / "meta.json").write_text(json.dumps({"result": {"normalization": {
        "mode": "encoder", "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}}}))
    images = np.load(root / "tiles.npy", mmap_mode="r")
    ctx = StageContext(out=work / "out", work=work / "work", inputs={"labeler": labeler},
                       device=torch.device("cpu"), quiet=True)
    ctx.out.mkdir(parents=True, exist_ok=True)
    run(ctx, images=images, encoder_name="resnet18", num_classes=NUM_CLASSES, batch_size=32,
        amp=False)


def stream(root: Path, masks_path: Path, crop: int) -> None:
    import torch

    from harness.data.view_config import ViewAugmentConfig
    from harness.data.views import TwoViewDataset
    from harness.engine.loader import epoch_loader
    from harness.engine.runtime import worker_init_fn

    images = np.load(root / "tiles.npy", mmap_mode="r")
    masks = np.load(masks_path, mmap_mode="r")
    data = TwoViewDataset(images, masks, ViewAugmentConfig(crop_size=crop))
    loader = epoch_loader(data, batch_size=64, drop_last=True, num_workers=0,
                          device=torch.device("cpu"), worker_init_fn=worker_init_fn)
    seen = 0
    for batch in loader:
        seen += len(batch["view1"])
    assert seen == len(data) // 64 * 64


if __name__ == "__main__":
    phase, args = sys.argv[1], sys.argv[2:]
    if phase == "tiles":
        tiles(Path(args[0]), int(args[1]), int(args[2]))
    elif phase == "prepare":
        prepare(Path(args[0]), Path(args[1]), int(args[2]))
    elif phase == "pseudolabel":
        pseudolabel(Path(args[0]), Path(args[1]))
    elif phase == "stream":
        stream(Path(args[0]), Path(args[1]), int(args[2]))
    else:
        raise SystemExit(f"unknown phase {phase!r}")
