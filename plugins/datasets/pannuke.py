"""``pannuke``: PanNuke (Gamper et al.), 7,901 H&E patches of 19 tissues, 5 nucleus classes,
the official 3-fold cross-validation (Gamper et al., 2019/2020; thesis §4.1.3).

Prepared from the official download (``fold_1.zip``..``fold_3.zip`` or the unpacked
``Fold 1``..``Fold 3`` folders; see :mod:`._pannuke_io` for the conversion). Samples are
``fold{k}/{index:05d}`` with the original array index; groups are ``fold1``..``fold3``, the
tissue of every sample is its ``types.npy`` entry (so label fractions stratify by tissue).

Class map: class ``c + 1`` for mask channel ``c`` (neoplastic, inflammatory, connective, dead,
epithelial). ``void_policy`` picks what void pixels (0 in all six channels) become, at load time
(both maps are in the one prepared copy, so the option is not part of the cache identity):

* ``thesis`` -- the reference code's ``argmax`` over all six channels: void pixels are
  neoplastic (the fully void patches become entirely neoplastic) and each void region is one
  "neoplastic" instance. This is what produced the thesis's numbers.
* ``background`` -- void pixels are background (class 0, instance 0), as the official PanNuke
  metric scores them.
* unset (default) -- follows the spec's ``metric.pq_variant`` (:meth:`PanNukeBase.resolve_config`):
  ``instance`` -> ``background`` (together: the official PanNuke metric), ``thesis`` ->
  ``thesis`` (together: the thesis's numbers). An explicit value that contradicts the variant is
  a validation error (the pair equals neither metric). Outside a spec (a dataset opened
  directly) unset loads ``thesis``, the converted arrays' plain argmax.

Overlap pixels go to the channel with the larger id value under both policies (the reference
argmax). Anomalies are counted per fold in ``READY`` (``anomalies``).

Counts checked by ``verify``: when the prepared source looked like the full release
(``complete_release`` in ``READY``: 256x256 patches, every fold at least 90% of its official
size) the folds must hold the official 2,656 / 2,523 / 2,722 patches; otherwise (a fixture or a
subset) they must match the counts recorded at prepare time.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from pydantic import Field

from harness.data.base import DatasetConfig, LabeledArrays
from harness.data.cache import CachedDataset, check_labeled_arrays, group_counts
from harness.hookspecs import hookimpl

from ._pannuke_io import (CLASS_NAMES, FOLDS, OFFICIAL_FOLD_SIZES, POLICY_ARRAYS, TISSUES,
                          VARIANT_VOID_POLICY, VOID_POLICY_HELP, VoidPolicy, inspect_folds,
                          locate_folds, parse_sample_id, write_cache)

SOURCE_HINT = ("download fold_1.zip, fold_2.zip and fold_3.zip (no registration) from "
               "https://warwick.ac.uk/fac/cross_fac/tia/data/pannuke and pass the folder "
               "holding them (or the unpacked 'Fold 1'..'Fold 3') as --source; "
               "licence CC BY-NC-SA 4.0")


class PanNukeConfig(DatasetConfig):
    void_policy: VoidPolicy | None = Field(None, description=VOID_POLICY_HELP)


class PanNukeBase(CachedDataset):
    """Shared loading and checks of the two PanNuke caches."""

    version = "1"
    labeled = True
    class_names = CLASS_NAMES
    metric_family = "pq"
    magnification = "40x"
    source_hint = SOURCE_HINT
    Config = PanNukeConfig
    #: void_policy only picks which of the prepared arrays load() returns.
    cache_fields = ()

    config: PanNukeConfig

    @classmethod
    def conformance_fixture(cls, folder: Path) -> dict:
        """A tiny source in the official layout, for `harness plugin check`."""
        from ._fixtures import pannuke

        return {"source": pannuke(folder / "src")}

    @classmethod
    def resolve_config(cls, config: PanNukeConfig, metric) -> tuple[PanNukeConfig, list[tuple[str, str]]]:
        """An unset ``void_policy`` follows ``metric.pq_variant``; an explicit one must agree
        with it (:data:`VARIANT_VOID_POLICY`)."""
        variant = getattr(metric, "pq_variant", None)
        follows = VARIANT_VOID_POLICY.get(variant)
        if config.void_policy is None:
            return config.model_copy(update={"void_policy": follows or "thesis"}), []
        if follows is None or config.void_policy == follows:
            return config, []
        other = next(v for v, p in VARIANT_VOID_POLICY.items() if p == config.void_policy)
        return config, [("void_policy", (
            f"'{config.void_policy}' contradicts metric.pq_variant '{variant}' (which "
            f"is scored with void_policy '{follows}'; "
            + ("'instance' with 'background' is the official PanNuke metric, 'thesis' with "
               "'thesis' the thesis's numbers")
            + f"); set void_policy: {follows}, or metric.pq_variant: {other}, or drop "
            f"void_policy to follow the variant"))]

    @property
    def void_policy(self) -> str:
        """The policy load() applies (unset outside a spec: ``thesis``, the plain argmax)."""
        return self.config.void_policy or "thesis"

    def _ready_info(self) -> dict:
        return json.loads((self.root / "READY").read_text())

    def load(self) -> LabeledArrays:
        if not self.is_prepared():
            raise FileNotFoundError(f"{self.root} is not a prepared '{self.name}' cache")
        return self._load_policy(self.void_policy)

    def _load_policy(self, policy: str) -> LabeledArrays:
        samples = json.loads((self.root / "samples.json").read_text())
        cls_name, inst_name = POLICY_ARRAYS[policy]
        return LabeledArrays(
            images=np.load(self.root / "images.npy", mmap_mode="r"),
            classes=np.load(self.root / f"{cls_name}.npy", mmap_mode="r"),
            instances=np.load(self.root / f"{inst_name}.npy", mmap_mode="r"),
            ids=samples["ids"], tissues=samples["tissues"], groups=samples["groups"])

    def expected_counts(self) -> dict[str, int]:
        """Group sizes ``verify`` holds the cache to (see the module docstring)."""
        info = self._ready_info()
        if info.get("complete_release"):
            return dict(self.expected_group_sizes(self.config) or {})
        return dict(info.get("group_sizes", {}))

    def verify(self) -> list[str]:
        problems = self.cache_problems()
        if problems:
            return problems
        try:
            arrays = {p: self._load_policy(p) for p in POLICY_ARRAYS}
            info = self._ready_info()
        except (OSError, ValueError, KeyError) as exc:
            return [f"{self.root}: cannot be loaded ({type(exc).__name__}: {exc})"]
        for policy, arr in arrays.items():
            problems += [f"void_policy {policy}: {p}"
                         for p in check_labeled_arrays(arr, len(self.class_names))]
        base = arrays["thesis"]
        known = set(TISSUES)
        bad_tissues = sorted({t for t in base.tissues if t not in known})
        if bad_tissues:
            problems.append(f"{self.root / 'samples.json'}: unknown tissues {bad_tissues}")
        for sid in base.ids:
            try:
                parse_sample_id(sid)
            except ValueError as exc:
                problems.append(f"{self.root / 'samples.json'}: {exc}")
                break
        counts = group_counts(base.groups)
        expected = self.expected_counts()
        where = "official" if info.get("complete_release") else "recorded at prepare time"
        for group in sorted(set(expected) | set(counts)):
            if counts.get(group, 0) != expected.get(group, 0):
                problems.append(f"{self.root}: group '{group}' has {counts.get(group, 0)} "
                                f"samples, expected {expected.get(group, 0)} ({where})")
        problems += self._verify_extra(base, info)
        return problems

    def _verify_extra(self, arrays: LabeledArrays, info: dict) -> list[str]:
        return []


class PanNukeDataset(PanNukeBase):
    name = "pannuke"
    split_scheme = "kfold"
    description = ("PanNuke: 7,901 256x256 H&E patches at 40x, 19 tissues, 5 nucleus classes; "
                   "official 3-fold cross-validation (train on two folds, test on the third).")

    def prepare(self, source: Path | None = None) -> None:
        folds = locate_folds(source)
        size = inspect_folds(folds)
        selection = {fs.fold: range(fs.n) for fs in folds}
        order = [(fs.fold, i) for fs in folds for i in range(fs.n)]
        groups = [fold for fold, _ in order]
        write_cache(self.root, self.name, self.version, Path(source), selection, order, groups,
                    folds=folds, size=size)

    @classmethod
    def folds(cls, config: PanNukeConfig) -> list[str]:
        return list(FOLDS)

    @classmethod
    def expected_group_sizes(cls, config: PanNukeConfig) -> dict[str, int]:
        return dict(OFFICIAL_FOLD_SIZES)

    def _verify_extra(self, arrays: LabeledArrays, info: dict) -> list[str]:
        for sid, group in zip(arrays.ids, arrays.groups):
            try:
                fold, _ = parse_sample_id(sid)
            except ValueError:
                return []  # already reported by verify()
            if fold != group:
                return [f"{self.root / 'samples.json'}: sample '{sid}' is in group '{group}'"]
        return []


@hookimpl
def harness_register_datasets():
    return [PanNukeDataset]
