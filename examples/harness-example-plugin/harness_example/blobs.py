"""``example_blobs``: a tiny generated dataset of coloured ellipses on a pink background.

Two foreground classes, ``round`` (class 1) and ``elongated`` (class 2), two folds. It is
generated from its config on first use (``auto_prepare``), so nothing is downloaded.
"""

from __future__ import annotations

import json

import numpy as np
from pydantic import Field

from harness.data.base import Dataset, DatasetConfig, LabeledArrays, atomic_directory, mark_ready
from harness.hookspecs import hookimpl

FOLDS = ("fold1", "fold2")
FILES = ("images.npy", "instances.npy", "classes.npy")


class BlobsConfig(DatasetConfig):
    seed: int = Field(0, description="random seed; the same config always gives the same arrays")
    images_per_fold: int = Field(8, ge=2, le=1000, description="images in each of the two folds")
    image_size: int = Field(64, ge=32, le=512, description="side of each image in pixels")


def draw_image(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One RGB image with its instance and class maps."""
    image = np.empty((size, size, 3), np.float32)
    image[:] = (235, 200, 215) + rng.normal(0, 6, (size, size, 3))
    instances = np.zeros((size, size), np.int32)
    classes = np.zeros((size, size), np.uint8)
    yy, xx = np.mgrid[0:size, 0:size]
    for inst in range(1, int(rng.integers(3, 8)) + 1):
        cls = int(rng.integers(1, 3))
        if cls == 1:  # round: a disc, dark purple
            a = b = rng.uniform(4, 7)
            colour = (95, 45, 135)
        else:  # elongated: a thin ellipse in any orientation, blue
            a, b = rng.uniform(9, 13), rng.uniform(2.5, 4)
            colour = (55, 70, 165)
        cy, cx = rng.uniform(a, size - a, 2)
        t = rng.uniform(0, np.pi)
        u = (xx - cx) * np.cos(t) + (yy - cy) * np.sin(t)
        v = -(xx - cx) * np.sin(t) + (yy - cy) * np.cos(t)
        mask = (u / a) ** 2 + (v / b) ** 2 <= 1
        image[mask] = np.asarray(colour) + rng.normal(0, 12, 3)  # later blobs cover earlier ones
        instances[mask] = inst
        classes[mask] = cls
    return np.clip(image, 0, 255).astype(np.uint8), instances, classes


class ExampleBlobs(Dataset):
    name = "example_blobs"
    version = "1"  # bump when a change alters the prepared data: it is in the stage keys
    labeled = True
    class_names = ("round", "elongated")
    metric_family = "pq"
    split_scheme = "kfold"
    auto_prepare = True
    description = "coloured round and elongated ellipses, 2 folds, generated (example plugin)"
    source_hint = "nothing to download: generated from its config on first use"
    Config = BlobsConfig

    config: BlobsConfig

    def prepare_command(self) -> str:
        return f"harness data prepare {self.name}"

    def prepare(self, source=None) -> None:  # noqa: ARG002 - generated, no source
        cfg = self.config
        rng = np.random.default_rng(cfg.seed)
        n = cfg.images_per_fold * len(FOLDS)
        drawn = [draw_image(rng, cfg.image_size) for _ in range(n)]
        groups = [f for f in FOLDS for _ in range(cfg.images_per_fold)]
        ids = [f"{g}/{i % cfg.images_per_fold:04d}" for i, g in enumerate(groups)]
        meta = {"ids": ids, "groups": groups, "config": cfg.model_dump(mode="json")}
        with atomic_directory(self.root) as tmp:  # renamed into place only when complete
            for k, fname in enumerate(FILES):
                np.save(tmp / fname, np.stack([d[k] for d in drawn]))
            (tmp / "meta.json").write_text(json.dumps(meta))
            mark_ready(tmp, {"dataset": self.name, "version": self.version, "samples": n})

    def verify(self) -> list[str]:
        if not self.is_prepared():
            return [f"not prepared: no READY marker in {self.root}"]
        n, s = self.config.images_per_fold * len(FOLDS), self.config.image_size
        expected = {"images.npy": ((n, s, s, 3), np.uint8), "instances.npy": ((n, s, s), np.int32),
                    "classes.npy": ((n, s, s), np.uint8)}
        problems, arrays = [], {}
        for fname, (shape, dtype) in expected.items():
            try:
                arrays[fname] = arr = np.load(self.root / fname, mmap_mode="r")
            except Exception as exc:  # noqa: BLE001 - a missing or unreadable file is a problem
                problems.append(f"{fname} cannot be read: {type(exc).__name__}: {exc}")
                continue
            if arr.shape != shape or arr.dtype != dtype:
                problems.append(f"{fname} is {arr.dtype}{arr.shape}, expected "
                                f"{np.dtype(dtype)}{shape}")
        if problems:
            return problems
        if int(arrays["classes.npy"].max()) > len(self.class_names):
            problems.append(f"classes.npy holds class ids above {len(self.class_names)}")
        if np.any((arrays["instances.npy"] > 0) != (arrays["classes.npy"] > 0)):
            problems.append("instance and class maps disagree on foreground")
        meta = json.loads((self.root / "meta.json").read_text())
        if len(meta["ids"]) != n or meta["config"] != self.config.model_dump(mode="json"):
            problems.append("meta.json does not match the config; prepare again")
        return problems

    def load(self) -> LabeledArrays:
        if not self.is_prepared():
            raise FileNotFoundError(f"{self.name} is not generated at {self.root}; "
                                    f"run `{self.prepare_command()}`")
        meta = json.loads((self.root / "meta.json").read_text())
        images, instances, classes = (np.load(self.root / f, mmap_mode="r") for f in FILES)
        return LabeledArrays(images=images, instances=instances, classes=classes,
                             ids=meta["ids"], tissues=["blobs"] * len(meta["ids"]),
                             groups=meta["groups"])

    @classmethod
    def folds(cls, config: BlobsConfig) -> list[str]:
        return list(FOLDS)

    @classmethod
    def expected_group_sizes(cls, config: BlobsConfig) -> dict[str, int]:
        return {fold: config.images_per_fold for fold in FOLDS}


@hookimpl
def harness_register_datasets():
    return [ExampleBlobs]
