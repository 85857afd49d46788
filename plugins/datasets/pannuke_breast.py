"""``pannuke_breast``: the thesis's PanNuke-Breast subset (thesis §4.1.1): every Breast patch of
the three PanNuke folds (2,351 in the release), split once into 1,692 train / 188 val / 471 test.

No split file was published; the counts are those of a two-stage
``sklearn.model_selection.train_test_split(random_state=0)`` (test 20%, then val 10% of the
rest), which :func:`breast_split` reproduces without sklearn:

1. canonical list: Breast patches ordered by fold (1, 2, 3), then original array index;
2. ``p = RandomState(0).permutation(n)``; test = items ``p[:n_test]`` with
   ``n_test = ceil(0.2 n)``; rest = items ``p[n_test:]`` in that order;
3. ``q = RandomState(0).permutation(len(rest))``; val = ``rest[q[:n_val]]`` with
   ``n_val = ceil(0.1 len(rest))``; train = ``rest[q[n_val:]]``.

The split is persisted as ``split.json`` (lists of [fold, index] per split); the groups of the
samples are ``train``/``val``/``test``, the only evaluation fold is ``test``, and every sample's
tissue is ``Breast``, so the PanNuke tissue aggregation reduces to the plain mean over test images
that ``eval_pannuke_breast.py`` computes. The three "independent runs" of Table 4.2 are three
training seeds on this one split.

It is prepared from the same source folder as ``pannuke`` (its own cache, holding only the
Breast patches). ``void_policy`` is the same load-time option as for ``pannuke``. ``verify``
holds the split to 1,692 / 188 / 471 when the source looked like the full release, else to the
counts recorded at prepare time, and recomputes the split rule from the cached ids.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from harness.data.base import DatasetConfig, LabeledArrays
from harness.hookspecs import hookimpl

from ._pannuke_io import FOLDS, inspect_folds, locate_folds, parse_sample_id, write_cache
from .pannuke import PanNukeBase

TISSUE = "Breast"
SPLIT_SEED = 0
TEST_SIZE = 0.2
VAL_SIZE = 0.1
OFFICIAL_SPLIT_SIZES = {"train": 1692, "val": 188, "test": 471}


def split_counts(n: int) -> tuple[int, int, int]:
    """(train, val, test) sizes of the rule for ``n`` items: sklearn's ``ceil`` of the test share
    at each stage."""
    n_test = math.ceil(TEST_SIZE * n)
    n_val = math.ceil(VAL_SIZE * (n - n_test))
    return n - n_test - n_val, n_val, n_test


def breast_split(items: list, seed: int = SPLIT_SEED) -> dict[str, list]:
    """Split ``items`` (already in canonical order) into train/val/test by the rule above."""
    n = len(items)
    _, n_val, n_test = split_counts(n)
    p = np.random.RandomState(seed).permutation(n)
    test = [items[i] for i in p[:n_test]]
    rest = [items[i] for i in p[n_test:]]
    q = np.random.RandomState(seed).permutation(len(rest))
    val = [rest[i] for i in q[:n_val]]
    train = [rest[i] for i in q[n_val:]]
    return {"train": train, "val": val, "test": test}


def canonical_breast(types_by_fold: dict[str, list[str]]) -> list[tuple[str, int]]:
    """(fold, index) of every Breast patch: fold 1, 2, 3, then original index."""
    return [(fold, i) for fold in FOLDS for i, t in enumerate(types_by_fold[fold]) if t == TISSUE]


class PanNukeBreastDataset(PanNukeBase):
    name = "pannuke_breast"
    split_scheme = "fixed"
    description = ("PanNuke-Breast (thesis subset): the 2,351 Breast patches of PanNuke, one fixed "
                   "1,692/188/471 train/val/test split (seeded, sklearn-equivalent).")

    def prepare(self, source: Path | None = None) -> None:
        folds = locate_folds(source)
        size = inspect_folds(folds)
        items = canonical_breast({fs.fold: fs.types_list for fs in folds})
        split = breast_split(items)
        order = [pair for name in ("train", "val", "test") for pair in sorted(split[name])]
        group_of = {pair: name for name, pairs in split.items() for pair in pairs}
        groups = [group_of[pair] for pair in order]
        selection: dict[str, list[int]] = {fold: [] for fold in FOLDS}
        for fold, i in items:
            selection[fold].append(i)
        split_json = {
            "rule": "canonical (fold, index) order; test = RandomState(0).permutation(n)"
                    "[:ceil(0.2n)]; val = first ceil(0.1 m) of RandomState(0).permutation(m) of "
                    "the rest (m = n - n_test); train = the remainder",
            "seed": SPLIT_SEED,
            **{name: [[fold, int(i)] for fold, i in split[name]]
               for name in ("train", "val", "test")},
        }
        write_cache(self.root, self.name, self.version, Path(source), selection, order, groups,
                    extra_json={"split.json": split_json},
                    extra_info={"breast_per_fold": {fold: len(selection[fold]) for fold in FOLDS}},
                    folds=folds, size=size)

    @classmethod
    def folds(cls, config: DatasetConfig) -> list[str]:
        return ["test"]

    @classmethod
    def expected_group_sizes(cls, config: DatasetConfig) -> dict[str, int]:
        return dict(OFFICIAL_SPLIT_SIZES)

    def split_pairs(self) -> dict[str, list[tuple[str, int]]]:
        """The persisted split as (fold, index) pairs, in split order."""
        data = json.loads((self.root / "split.json").read_text())
        return {name: [(f, int(i)) for f, i in data[name]] for name in ("train", "val", "test")}

    def _verify_extra(self, arrays: LabeledArrays, info: dict) -> list[str]:
        problems = []
        if set(arrays.tissues) - {TISSUE}:
            problems.append(f"{self.root / 'samples.json'}: non-Breast tissues "
                            f"{sorted(set(arrays.tissues) - {TISSUE})}")
        try:
            pairs = [parse_sample_id(sid) for sid in arrays.ids]
            split = self.split_pairs()
        except (OSError, ValueError, KeyError) as exc:
            return problems + [f"{self.root / 'split.json'}: unreadable ({exc})"]
        group_of = dict(zip(pairs, arrays.groups))
        for name, members in split.items():
            wrong = [p for p in members if group_of.get(p) != name]
            if wrong:
                problems.append(f"{self.root / 'split.json'}: {len(wrong)} '{name}' entries "
                                f"disagree with samples.json (e.g. {wrong[0]})")
        if sorted(pairs) != sorted(p for m in split.values() for p in m):
            problems.append(f"{self.root / 'split.json'}: does not list exactly the cached samples")
        elif breast_split(sorted(pairs)) != split:
            problems.append(f"{self.root / 'split.json'}: differs from the split rule "
                            f"recomputed on the cached Breast patches")
        return problems


@hookimpl
def harness_register_datasets():
    return [PanNukeBreastDataset]
