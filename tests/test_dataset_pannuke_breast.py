"""The ``pannuke_breast`` dataset plugin: the §2 split rule (exact counts on n = 2351, a
hand-checked small n, sklearn equivalence when sklearn is installed), preparation from the
PanNuke layout, the persisted split, verification, PQ as a single tissue and a CLI run."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from harness.errors import DataError
from harness.metrics import evaluate_segmentation
from harness_builtin.datasets.pannuke_breast import (PanNukeBreastDataset, breast_split,
                                                     canonical_breast, split_counts)

from dataset_fixtures import dataset_fixtures
from finished_runs import cli_prepare, cli_run
from test_dataset_pannuke import CLASS_NAMES, FIXTURE, fixture_arrays, write_fixture, zip_fixture
from test_dataset_pannuke import SPEC as PANNUKE_SPEC

# Breast patches of the fixture in canonical order (fold 1, 2, 3, then index)
CANONICAL = [("fold1", 0), ("fold1", 2), ("fold1", 3), ("fold2", 1), ("fold2", 2),
             ("fold3", 0), ("fold3", 3), ("fold3", 4)]
# n = 8: n_test = ceil(1.6) = 2, n_val = ceil(0.1 * 6) = 1.
# RandomState(0).permutation(8) = [6 2 1 7 3 0 5 4] -> test = items 6, 2;
# rest = items [1 7 3 0 5 4]; RandomState(0).permutation(6) = [5 2 1 3 0 4]
# -> val = rest[5] = item 4;
# train = rest[2, 1, 3, 0, 4] = items 3, 7, 0, 1, 5.
HAND_SPLIT = {
    "test": [("fold3", 3), ("fold1", 3)],
    "val": [("fold2", 2)],
    "train": [("fold2", 1), ("fold3", 4), ("fold1", 0), ("fold1", 2), ("fold3", 0)],
}


make, source, prepared = dataset_fixtures(PanNukeBreastDataset, lambda d: write_fixture(d, size=64))


# --- the split rule ------------------------------------------------------------------------------

def test_split_counts_of_the_thesis():
    assert split_counts(2351) == (1692, 188, 471)
    parts = breast_split(list(range(2351)))
    assert {k: len(v) for k, v in parts.items()} == {"train": 1692, "val": 188, "test": 471}
    assert sorted(parts["train"] + parts["val"] + parts["test"]) == list(range(2351))
    assert parts == breast_split(list(range(2351)))  # deterministic
    p = np.random.RandomState(0).permutation(2351)
    assert parts["test"] == p[:471].tolist()
    rest = p[471:]
    assert parts["val"] == rest[np.random.RandomState(0).permutation(1880)[:188]].tolist()
    # general n: ceil at both stages (0.2 * 10 = 2 exactly, 0.1 * 8 = 0.8 -> 1)
    assert split_counts(10) == (7, 1, 2) and split_counts(8) == (5, 1, 2)
    assert split_counts(1) == (0, 0, 1)


def test_split_rule_hand_checked():
    assert breast_split(CANONICAL) == HAND_SPLIT
    assert breast_split(list(range(10))) == {"test": [2, 8], "val": [0],
                                             "train": [1, 9, 5, 6, 4, 3, 7]}


def test_split_equals_sklearn_two_stage_train_test_split():
    sk = pytest.importorskip("sklearn.model_selection")
    for n in (8, 10, 37, 2351):
        items = list(range(n))
        rest, test = sk.train_test_split(items, test_size=0.2, random_state=0)
        train, val = sk.train_test_split(rest, test_size=0.1, random_state=0)
        assert breast_split(items) == {"train": train, "val": val, "test": test}


def test_canonical_order_ignores_type_order():
    types = {"fold1": ["Colon", "Breast", "Breast"], "fold2": ["Breast"],
             "fold3": ["Lung", "Breast"]}
    assert canonical_breast(types) == [("fold1", 1), ("fold1", 2), ("fold2", 0), ("fold3", 1)]


# --- identity -------------------------------------------------------------------------------------

def test_config():  # identity: tests/test_dataset_identity.py
    ds = make("/nonexistent")
    assert ds.config.void_policy is None and ds.void_policy == "thesis" and ds.cache_fields == ()


# --- prepare / verify / load ----------------------------------------------------------------------

def test_prepare_verify_load(prepared):
    ds = prepared
    assert ds.verify() == []
    arr = ds.load()
    assert len(arr) == 8 and arr.images.shape == (8, 64, 64, 3)
    assert set(arr.tissues) == {"Breast"}
    assert sorted(arr.ids) == [f"{f}/{i:05d}" for f, i in CANONICAL]
    info = json.loads((ds.root / "READY").read_text())
    assert info["complete_release"] is False
    assert info["group_sizes"] == {"test": 2, "train": 5, "val": 1}
    assert info["breast_per_fold"] == {"fold1": 3, "fold2": 2, "fold3": 3}
    assert info["anomalies"]["fold1"]["fully_void_patches"] == 1  # fold1/00003 is Breast
    assert ds.split_pairs() == HAND_SPLIT
    raw = json.loads((ds.root / "split.json").read_text())
    assert raw["test"] == [["fold3", 3], ["fold1", 3]] and raw["seed"] == 0
    split = ds.split("test", arr)
    assert sorted(split.test) == ["fold1/00003", "fold3/00003"]
    assert split.val == ["fold2/00002"] and len(split.train["train"]) == 5
    # arrays aligned by id with the full dataset's conversion
    masks = fixture_arrays(64)
    for sid, cls in zip(arr.ids, arr.classes):
        fold, idx = sid.split("/")
        ref = np.array([1, 2, 3, 4, 5, 0], np.uint8)[np.argmax(masks[fold][1][int(idx)], -1)]
        np.testing.assert_array_equal(cls, ref)
    bg = make(ds.root, void_policy="background").load()
    void = arr.ids.index("fold1/00003")
    assert (arr.classes[void] == 1).all() and (bg.classes[void] == 0).all()


def test_zip_source(prepared, source, tmp_path):
    ds = make(tmp_path / "data")
    ds.prepare(zip_fixture(source, tmp_path / "zips"))
    assert ds.verify() == []
    for name in ("images.npy", "classes.npy", "instances_background.npy", "samples.json",
                 "split.json"):
        assert (ds.root / name).read_bytes() == (prepared.root / name).read_bytes(), name


def test_verify_detects_an_edited_split(source, tmp_path):
    ds = make(tmp_path / "data")
    ds.prepare(source)
    path = ds.root / "split.json"
    data = json.loads(path.read_text())
    data["test"][0], data["train"][0] = data["train"][0], data["test"][0]
    path.write_text(json.dumps(data))
    assert any("split.json" in p for p in ds.verify())  # manifest checksum and/or the rule


def test_corrupt_source_is_data_error(tmp_path):
    layout = {k: list(v) for k, v in FIXTURE.items()}
    layout["fold2"][3] = ("Mamma", layout["fold2"][3][1])
    src = write_fixture(tmp_path / "src", size=64, layout=layout)
    ds = make(tmp_path / "data")
    with pytest.raises(DataError, match=r"fold2/types\.npy: index 3: unknown tissue 'Mamma'"):
        ds.prepare(src)
    assert not ds.root.exists()


# --- the metric as a single tissue -----------------------------------------------------------

def test_pq_is_a_plain_mean_over_test_images(prepared):
    arr = prepared.load()
    idx = [i for i, g in enumerate(arr.groups) if g in ("train", "test")]
    gt = np.asarray(arr.classes)[idx]
    inst = np.asarray(arr.instances)[idx]
    tissues = [arr.tissues[i] for i in idx]
    pred = gt.copy()
    k = next(j for j, i in enumerate(idx) if arr.ids[i] == "fold1/00000")  # 3 classes present
    pred[k][gt[k] == 5] = 0  # the epithelial nucleus is missed: that class scores 0
    res = evaluate_segmentation(pred, gt, inst, tissues, CLASS_NAMES)
    per_image = np.array(res["thesis"]["per_image"]["mpq"])
    one = 1 / (1 + 1e-6)
    assert per_image[k] == pytest.approx(2 * one / 3, abs=1e-12)
    assert res["thesis"]["mpq"] == pytest.approx(np.nanmean(per_image), abs=1e-12)
    valid = [v for v in per_image if not math.isnan(v)]  # void and empty patches are NaN
    assert len(valid) == len(idx) - 2
    assert res["thesis"]["mpq"] == pytest.approx((len(valid) - 1 + 2 / 3) * one / len(valid),
                                                 abs=1e-12)
    assert list(res["thesis"]["per_tissue"]) == ["Breast"]


# --- end to end -----------------------------------------------------------------------------------

#: test_dataset_pannuke.py's one-cell spec on this dataset (its default folds, no normalisation quirk)
SPEC = (PANNUKE_SPEC.replace("name: pannuke_tiny\nreference: pannuke\ndataset: pannuke\n",
                             "name: breast_tiny\nreference: pannuke_breast\ndataset: pannuke_breast\n")
        .replace("folds: [fold3]\n", "").replace("  normalization: thesis_quirk\n", ""))


def test_cli_prepare_then_run(source, tmp_path, torch_home):
    cli_prepare(tmp_path, "pannuke_breast", source)
    out = cli_run(tmp_path, SPEC)
    records = [json.loads(p.read_text()) for p in (out / "records").glob("*.json")]
    assert len(records) == 1
