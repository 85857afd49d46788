"""Smoke tests of dataset plugins: prepare from a fixture, verify, notice damage, load samples
of the documented dtypes and shapes (see :mod:`harness.conformance`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from harness.conformance.checker import Checker, Failure, Report, Stop, fixture_of

if TYPE_CHECKING:
    from harness.plugins import Registry

FIX = "define `conformance_fixture(cls, folder)` (a classmethod) that writes a tiny source in " \
      "the official layout into folder and returns {'source': PATH, 'config': {...}}"


def smoke_dataset(info: Any, folder: Path, report: Report, who: str, registry: Registry) -> None:
    check = Checker(info, report, who)
    cls = info.cls
    try:
        fixture = check.call("conformance_fixture", fixture_of, cls, folder / "fixture")
        if not cls.auto_prepare and fixture.get("source") is None:
            raise check.fail("conformance_fixture", f"a dataset prepared from a download needs a "
                             f"fixture to be checked; {FIX}")
        config = check.call("Config", registry.config, "dataset", info.name, fixture.get("config", {}))
        folds = _class_facts(cls, config, check) if cls.labeled else []
        dataset = check.call("__init__", registry.create, "dataset", info.name, config,
                             root=folder / "cache" / cls.name)
        check.call("prepare", dataset.prepare, fixture.get("source"))
        if not dataset.is_prepared():
            raise check.fail("prepare", f"left no READY marker in {dataset.root}; build the cache "
                             "with atomic_directory(self.root) and call mark_ready last")
        problems = check.call("verify", dataset.verify)
        if not isinstance(problems, list) or problems:
            raise check.fail("verify", f"reports {problems!r} on a cache just prepared from the "
                             "fixture; verify() returns a list of problems, empty when fine")
        check.passed("prepare")
        if cls.labeled:
            _labeled(dataset, folds, check)
        if not cls.labeled or cls.has_unlabeled:
            _unlabeled(dataset, check)
        _damage(dataset, check)
        _metric_family(dataset, check, registry)
    except Stop:
        pass
    except Exception as exc:  # noqa: BLE001 - a fault in the kit's own harness calls
        report.failures.append(Failure(who, "smoke test", f"{type(exc).__name__}: {exc}"))


#: load() fields: name -> (dimensions after N, dtype)
FIELDS = {"images": ("(N, H, W, 3)", np.uint8), "instances": ("(N, H, W)", np.int32),
          "classes": ("(N, H, W)", np.uint8)}


def _labeled(dataset: Any, folds: list[str], check: Checker) -> None:
    arrays = check.call("load", dataset.load)
    if len(arrays) == 0:
        raise check.fail("load", "returned no samples from the fixture")
    images = getattr(arrays, "images", None)
    shape = getattr(images, "shape", ())
    for name, (layout, dtype) in FIELDS.items():
        arr = getattr(arrays, name, None)
        got = f"{getattr(arr, 'dtype', type(arr).__name__)}{tuple(getattr(arr, 'shape', ()))}"
        want_shape = (len(arrays), *shape[1:4]) if name == "images" else (len(arrays), *shape[1:3])
        ok = isinstance(arr, np.ndarray) and arr.dtype == dtype and tuple(arr.shape) == want_shape \
            and (name != "images" or (len(shape) == 4 and shape[3] == 3))
        if not ok:
            raise check.fail("load", f"{name} is {got}, expected {np.dtype(dtype)} {layout}; "
                             f"convert with .astype(np.{np.dtype(dtype)}) (docs/writing-plugins.md, "
                             f"array conventions)")
    top = int(np.asarray(arrays.classes).max())
    if top > len(dataset.class_names):
        raise check.fail("load", f"classes holds id {top}, above the {len(dataset.class_names)} "
                         f"class_names; class ids are 1..K, 0 is background")
    expected = set(folds) if dataset.split_scheme == "kfold" else {"train", "val", "test"}
    stray = sorted(set(arrays.groups) - expected)
    if stray:
        raise check.fail("load", f"groups {stray} are not among {sorted(expected)} (folds() or "
                         f"the fixed train/val/test); give every sample its fold or split")
    ids = set(arrays.ids)
    for fold in folds:
        split = check.call("split", dataset.split, fold, arrays)
        if not set(split.test) <= ids or not set(split.train_ids) <= ids or \
                set(split.test) & set(split.train_ids):
            raise check.fail("split", f"fold {fold!r}: test and train ids must be sample ids of "
                             f"load() and must not overlap")
    check.passed("load")


def _unlabeled(dataset: Any, check: Checker) -> None:
    images = check.call("unlabeled_images", dataset.unlabeled_images)
    shape = tuple(getattr(images, "shape", ()))
    if not (isinstance(images, np.ndarray) and images.dtype == np.uint8 and len(shape) == 4
            and shape[3] == 3 and shape[0] > 0):
        raise check.fail("unlabeled_images", f"returned {getattr(images, 'dtype', type(images))}"
                         f"{shape}; return (N, H, W, 3) uint8 RGB images (N > 0)")
    check.passed("unlabeled_images")


def _damage(dataset: Any, check: Checker) -> None:
    """verify() must notice that the biggest file of the prepared cache is gone."""
    files = [p for p in Path(dataset.root).rglob("*") if p.is_file() and p.name != "READY"]
    if not files:
        return
    victim = max(files, key=lambda p: p.stat().st_size)
    victim.unlink()
    try:
        problems = dataset.verify()
    except Exception:  # noqa: BLE001 - raising (a DataError) also reports the damage
        problems = ["raised"]
    if not problems:
        raise check.fail("verify", f"finds nothing wrong after {victim.relative_to(dataset.root)}"
                         f" was deleted from the prepared cache; check that every file exists "
                         f"and has the expected shape, dtype (and checksum)")
    check.passed("verify")


def _class_facts(cls: Any, config: Any, check: Checker) -> list[str]:
    """What a labeled dataset tells without its data, asked of the class: folds, expected
    group sizes (a mapping or None), the number of model outputs."""
    folds = check.call("folds", cls.folds, config)
    if not (isinstance(folds, list) and all(isinstance(f, str) for f in folds)):
        raise check.fail("folds", f"returned {folds!r}; return the fold names as a list of str "
                         f"(a classmethod `folds(cls, config)`)")
    sizes = check.call("expected_group_sizes", cls.expected_group_sizes, config)
    if sizes is not None and not (isinstance(sizes, dict) and all(
            isinstance(g, str) and isinstance(n, int) for g, n in sizes.items())):
        raise check.fail("expected_group_sizes", f"returned {sizes!r}; return None or a mapping "
                         f"group -> sample count (a classmethod `expected_group_sizes(cls, config)`)")
    if cls.num_classes != len(cls.class_names) + 1:
        raise check.fail("num_classes", f"is {cls.num_classes!r} with {len(cls.class_names)} "
                         f"class_names; it counts background + the foreground classes")
    return folds


def _metric_family(dataset: Any, check: Checker, registry: Registry) -> None:
    if dataset.labeled and dataset.metric_family not in registry.metric_families:
        raise check.fail("metric_family", f"{dataset.metric_family!r} is no installed metric "
                         f"family; use 'pq', 'dice' or register your own")
