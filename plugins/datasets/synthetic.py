"""``synthetic``: an embedded, procedurally generated H&E-like nuclei dataset.

It has PanNuke's layout (RGB patches with instance and class maps of five nucleus classes,
tissue types, three folds) and is generated on first use, so the whole harness can be demoed
and tested on a CPU without any download. The five classes differ in size, shape, colour and
texture, so the class of a nucleus is learnable from the image:

* neoplastic   large, irregular, dark purple with coarse chromatin speckle
* inflammatory small, round, very dark blue-black, homogeneous
* connective   thin elongated spindles in a random orientation
* dead         small bright pink (eosinophilic) bodies holding tiny dark pyknotic fragments
* epithelial   medium ovals, lighter purple, vesicular, with a dark nucleolus

Each tissue biases the class mix and the background (eosin strength, fibres, pale spaces), so
per-tissue aggregation is meaningful. An unlabeled set of larger tiles from the same generator
serves pretraining; its hidden class maps are kept (``unlabeled_classes``) for tests only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field, field_validator, model_validator

from harness.data.base import (Dataset, DatasetConfig, LabeledArrays, atomic_directory, mark_ready,
                               prepare_command_for)
from harness.hookspecs import hookimpl

from ._synthetic_draw import CLASS_NAMES, DEFAULT_DENSITY, density_range, draw_set

_UNLABELED_STREAM = 1_000_000  # random stream of the unlabeled tiles (folds use 0..K-1)


class SyntheticConfig(DatasetConfig):
    seed: int = Field(0, description="Random seed; the same config always yields identical arrays.")
    image_size: int = Field(64, ge=32, le=2048, description="Side of each labeled patch in pixels.")
    images_per_fold: int = Field(40, ge=3, le=100_000, description="Labeled patches in each fold.")
    folds: int = Field(3, ge=2, le=100, description="Number of folds (groups fold1..foldK).")
    tissues: tuple[str, ...] = Field(
        ("Breast", "Colon", "Lung"),
        description="Tissue types; each biases the class mix and background. Every fold holds "
                    "every tissue (images_per_fold must be at least the number of tissues).")
    nuclei_per_image: tuple[int, int] | None = Field(
        None,
        description=f"Range (min, max) of nuclei drawn per labeled patch; None scales the "
                    f"default density of {DEFAULT_DENSITY[0]}-{DEFAULT_DENSITY[1]} nuclei per "
                    f"64x64 pixels with the patch area. Unlabeled tiles scale it by area.")
    crowding: float = Field(
        0.0, ge=0.0, le=0.9,
        description="0: nuclei barely touch (the original generator). Above 0: nuclei come in "
                    "same-class clusters and touch (0.7: about 52% of nuclei touch another, 32% "
                    "lie in a same-class group that connected components merge; 0: 16% and 4%); "
                    "for instance heads. Not in stage keys or the cache folder when 0.")
    nucleus_scale: float = Field(
        1.0, ge=0.5, le=4.0,
        description="Multiplies every nucleus's axes (1: the original sizes, about half of "
                    "PanNuke's at 40x; HoVer-Net's post-processing, made for PanNuke's sizes, "
                    "needs about 2). The default density is divided by its square. Not in stage "
                    "keys or the cache folder when 1.")
    unlabeled_images: int = Field(48, ge=0, le=10**6, description="Number of unlabeled pretraining tiles.")
    unlabeled_size: int = Field(128, ge=32, le=2048, description="Side of each unlabeled tile in pixels.")

    @field_validator("tissues")
    @classmethod
    def _tissues_valid(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("at least one tissue is needed")
        if len(set(value)) != len(value) or any(not t for t in value):
            raise ValueError("tissue names must be unique and non-empty")
        return value

    @field_validator("nuclei_per_image")
    @classmethod
    def _range_valid(cls, value: tuple[int, int] | None) -> tuple[int, int] | None:
        if value is not None and not (0 <= value[0] <= value[1]):
            raise ValueError("nuclei_per_image must be (min, max) with 0 <= min <= max")
        return value

    @model_validator(mode="after")
    def _every_tissue_in_every_fold(self) -> "SyntheticConfig":
        if self.images_per_fold < len(self.tissues):
            raise ValueError(f"images_per_fold ({self.images_per_fold}) must be at least the "
                             f"number of tissues ({len(self.tissues)})")
        return self


def _balanced_tissues(tissues: tuple[str, ...], count: int, rng: np.random.Generator) -> list[str]:
    """``count`` tissue names, as even as possible, in a shuffled (interleaved) order."""
    names = [tissues[i % len(tissues)] for i in range(count)]
    return [names[i] for i in rng.permutation(count)]


#: Options added after stage keys and caches existed, with the default that leaves them out.
_ADDED_DEFAULTS = {"crowding": 0.0, "nucleus_scale": 1.0}


def _config_dump(cfg: SyntheticConfig) -> dict[str, Any]:
    """The config as data, without the added options at their defaults (leaving them out keeps
    the keys and caches made before they existed)."""
    dump = cfg.model_dump(mode="json")
    for name, default in _ADDED_DEFAULTS.items():
        if dump.get(name) == default:
            del dump[name]
    return dump


class SyntheticDataset(Dataset):
    name = "synthetic"
    version = "1"
    labeled = True
    class_names = CLASS_NAMES
    metric_family = "pq"
    split_scheme = "kfold"
    magnification = "40x"
    auto_prepare = True
    has_unlabeled = True
    description = ("Procedurally generated H&E-like nuclei in PanNuke's layout (5 classes, "
                   "tissue types, k folds, unlabeled tiles); generated locally, no download.")
    source_hint = ("Nothing to download: the synthetic dataset is generated from its config "
                   "on first use (or by `harness data prepare synthetic`).")
    Config = SyntheticConfig

    config: SyntheticConfig

    def fingerprint(self) -> dict[str, Any]:
        return {**super().fingerprint(), "config": _config_dump(self.config)}

    @classmethod
    def cache_identity(cls, config: SyntheticConfig) -> dict[str, Any]:
        return {**super().cache_identity(config), "config": _config_dump(config)}

    # --- preparation ---------------------------------------------------------------------------

    @classmethod
    def conformance_fixture(cls, folder: Path) -> dict[str, Any]:  # noqa: ARG003
        """Tiny settings for `harness plugin check` (generated: no source)."""
        return {"config": {"images_per_fold": 3, "unlabeled_images": 4, "unlabeled_size": 64}}

    def prepare_command(self) -> str:
        return f"harness data prepare {self.name}"

    def _group_names(self) -> list[str]:
        return self.folds(self.config)

    def _counts(self, size: int) -> tuple[int, int]:
        """Nuclei per image of ``size``: the configured or default density; the default one
        divided by ``nucleus_scale`` squared (same area covered)."""
        cfg = self.config
        lo, hi = density_range(cfg.nuclei_per_image, cfg.image_size, size)
        if cfg.nuclei_per_image is None and cfg.nucleus_scale != 1.0:
            lo, hi = (max(1, round(v / cfg.nucleus_scale ** 2)) for v in (lo, hi))
        return lo, hi

    def prepare(self, source=None) -> None:  # noqa: ARG002 - generated, no source
        cfg = self.config
        counts = self._counts(cfg.image_size)
        order_rng = np.random.default_rng([cfg.seed, 7])
        images, instances, classes = [], [], []
        ids: list[str] = []
        tissues: list[str] = []
        groups: list[str] = []
        for k, group in enumerate(self._group_names()):
            fold_tissues = _balanced_tissues(cfg.tissues, cfg.images_per_fold, order_rng)
            im, ins, cl = draw_set(cfg.seed, k, cfg.image_size, fold_tissues, counts,
                                   cfg.crowding, cfg.nucleus_scale)
            images.append(im)
            instances.append(ins)
            classes.append(cl)
            ids += [f"{group}/{i:04d}" for i in range(cfg.images_per_fold)]
            tissues += fold_tissues
            groups += [group] * cfg.images_per_fold
        un_tissues = _balanced_tissues(cfg.tissues, cfg.unlabeled_images, order_rng)
        un_counts = self._counts(cfg.unlabeled_size)
        un_images, _, un_classes = draw_set(cfg.seed, _UNLABELED_STREAM, cfg.unlabeled_size,
                                            un_tissues, un_counts, cfg.crowding,
                                            cfg.nucleus_scale)
        meta = {"ids": ids, "tissues": tissues, "groups": groups,
                "class_names": list(self.class_names), "unlabeled_tissues": un_tissues,
                "config": _config_dump(cfg), "version": self.version}

        with atomic_directory(self.root) as tmp:
            np.save(tmp / "images.npy", np.concatenate(images))
            np.save(tmp / "instances.npy", np.concatenate(instances))
            np.save(tmp / "classes.npy", np.concatenate(classes))
            np.save(tmp / "unlabeled.npy", un_images)
            np.save(tmp / "unlabeled_classes.npy", un_classes)
            (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
            mark_ready(tmp, {"dataset": self.name, "version": self.version,
                             "samples": len(ids), "unlabeled": cfg.unlabeled_images,
                             "config": meta["config"]})

    def _require_prepared(self) -> None:
        if not self.is_prepared():
            raise FileNotFoundError(f"synthetic dataset is not generated at {self.root}; "
                                    f"run `{prepare_command_for(self)}` or call prepare()")

    def _meta(self) -> dict[str, Any]:
        return json.loads((self.root / "meta.json").read_text())

    # --- checks --------------------------------------------------------------------------------
    def verify(self) -> list[str]:
        cfg = self.config
        if not self.is_prepared():
            return [f"not prepared: no READY marker in {self.root}"]
        n, s = cfg.folds * cfg.images_per_fold, cfg.image_size
        u, us = cfg.unlabeled_images, cfg.unlabeled_size
        arrays, problems = _read_arrays(self.root, {
            "images.npy": ((n, s, s, 3), np.uint8), "instances.npy": ((n, s, s), np.int32),
            "classes.npy": ((n, s, s), np.uint8), "unlabeled.npy": ((u, us, us, 3), np.uint8),
            "unlabeled_classes.npy": ((u, us, us), np.uint8),
        })
        problems += _map_problems(arrays, len(self.class_names))
        try:
            meta = self._meta()
        except Exception as exc:  # noqa: BLE001
            return problems + [f"meta.json cannot be read: {type(exc).__name__}: {exc}"]
        for key in ("ids", "tissues", "groups"):
            if len(meta.get(key, [])) != n:
                problems.append(f"meta.json has {len(meta.get(key, []))} {key}, expected {n}")
        if set(meta.get("groups", [])) - set(self._group_names()):
            problems.append("meta.json names groups outside fold1..foldK")
        if set(meta.get("tissues", [])) - set(cfg.tissues):
            problems.append("meta.json names tissues that the config does not have")
        if meta.get("config") != _config_dump(cfg):
            problems.append("the cache was generated from a different config; prepare it again")
        return problems

    # --- loading -------------------------------------------------------------------------------
    def load(self) -> LabeledArrays:
        self._require_prepared()
        meta = self._meta()
        return LabeledArrays(
            images=np.load(self.root / "images.npy", mmap_mode="r"),
            instances=np.load(self.root / "instances.npy", mmap_mode="r"),
            classes=np.load(self.root / "classes.npy", mmap_mode="r"),
            ids=list(meta["ids"]), tissues=list(meta["tissues"]), groups=list(meta["groups"]))

    def unlabeled_images(self) -> np.ndarray:
        self._require_prepared()
        return np.load(self.root / "unlabeled.npy", mmap_mode="r")

    def unlabeled_classes(self) -> np.ndarray:
        """Hidden class maps of the unlabeled tiles (for tests of pretraining methods only)."""
        self._require_prepared()
        return np.load(self.root / "unlabeled_classes.npy", mmap_mode="r")

    def unlabeled_tissues(self) -> list[str]:
        self._require_prepared()
        return list(self._meta()["unlabeled_tissues"])

    @classmethod
    def folds(cls, config: SyntheticConfig) -> list[str]:
        return [f"fold{k + 1}" for k in range(config.folds)]

    @classmethod
    def expected_group_sizes(cls, config: SyntheticConfig) -> dict[str, int]:
        return {group: config.images_per_fold for group in cls.folds(config)}


def _read_arrays(root: Path, expected: dict[str, tuple[tuple[int, ...], Any]]
                 ) -> tuple[dict[str, np.ndarray], list[str]]:
    """The cache's arrays that exist with their expected shape and dtype (memory-mapped), and a
    problem line for each that does not."""
    arrays: dict[str, np.ndarray] = {}
    problems: list[str] = []
    for fname, (shape, dtype) in expected.items():
        path = root / fname
        if not path.exists():
            problems.append(f"{fname} is missing")
            continue
        try:
            arr = np.load(path, mmap_mode="r")
        except Exception as exc:  # noqa: BLE001 - any unreadable file is a problem
            problems.append(f"{fname} cannot be read: {type(exc).__name__}: {exc}")
            continue
        if arr.shape != shape:
            problems.append(f"{fname} has shape {arr.shape}, expected {shape}")
        elif arr.dtype != dtype:
            problems.append(f"{fname} has dtype {arr.dtype}, expected {np.dtype(dtype)}")
        else:
            arrays[fname] = arr
    return arrays, problems


def _map_problems(arrays: dict[str, np.ndarray], k: int) -> list[str]:
    """What is wrong with the class and instance maps (``k`` classes): ids out of range, maps
    that disagree on foreground, nuclei with more than one class."""
    problems = []
    for fname in ("classes.npy", "unlabeled_classes.npy"):
        if fname in arrays and int(arrays[fname].max(initial=0)) > k:
            problems.append(f"{fname} holds class ids above {k}")
    if "instances.npy" in arrays and int(arrays["instances.npy"].min(initial=0)) < 0:
        problems.append("instances.npy holds negative ids")
    if "instances.npy" in arrays and "classes.npy" in arrays:
        inst = np.asarray(arrays["instances.npy"])
        cls = np.asarray(arrays["classes.npy"])
        bad = int(((inst > 0) != (cls > 0)).sum())
        if bad:
            problems.append(f"instance and class maps disagree on {bad} pixels "
                            f"(foreground in one, background in the other)")
        fg = inst > 0
        img_idx = np.broadcast_to(np.arange(len(inst))[:, None, None], inst.shape)[fg]
        key = img_idx.astype(np.int64) * (int(inst.max(initial=0)) + 1) + inst[fg]
        if len(np.unique(key * 8 + cls[fg])) != len(np.unique(key)):
            problems.append("some nuclei carry more than one class")
    return problems


@hookimpl
def harness_register_datasets():
    return [SyntheticDataset]
