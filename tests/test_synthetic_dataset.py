"""The embedded ``synthetic`` dataset: determinism, layout, atomic preparation, verification,
splits and a check that its nucleus classes are visibly different."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pydantic import ValidationError
from scipy.ndimage import uniform_filter

from harness.data.base import Dataset
from harness_builtin.datasets import synthetic
from harness_builtin.datasets.synthetic import SyntheticDataset

SMALL = dict(images_per_fold=6, unlabeled_images=4, unlabeled_size=64)


def make(root, **kw) -> SyntheticDataset:
    return SyntheticDataset(SyntheticDataset.Config(**kw), root)


@pytest.fixture(scope="module")
def default(tmp_path_factory) -> SyntheticDataset:
    ds = make(tmp_path_factory.mktemp("synthetic") / "data")
    ds.prepare()
    return ds


# --- identity / config ----------------------------------------------------------------------------

def test_class_attributes():
    ds = make("/nonexistent")
    assert isinstance(ds, Dataset)
    assert ds.name == "synthetic" and ds.labeled and ds.auto_prepare
    assert ds.class_names == ("neoplastic", "inflammatory", "connective", "dead", "epithelial")
    assert ds.num_classes == 6
    assert ds.metric_family == "pq" and ds.split_scheme == "kfold"
    assert ds.folds(ds.config) == ["fold1", "fold2", "fold3"]
    five = make("/x", folds=5)
    assert five.folds(five.config) == [f"fold{i}" for i in range(1, 6)]
    assert "generated" in ds.description and "generated" in ds.source_hint


def test_config_validation():
    cfg = SyntheticDataset.Config()
    assert (cfg.seed, cfg.image_size, cfg.images_per_fold, cfg.folds) == (0, 64, 40, 3)
    assert cfg.tissues == ("Breast", "Colon", "Lung")
    assert (cfg.unlabeled_images, cfg.unlabeled_size) == (48, 128)
    for bad in (dict(image_size=16), dict(images_per_fold=2), dict(folds=1),
                dict(unknown=1), dict(nuclei_per_image=(5, 2)), dict(tissues=()),
                dict(tissues=("A", "A")), dict(images_per_fold=3, tissues=("A", "B", "C", "D"))):
        with pytest.raises(ValidationError):
            SyntheticDataset.Config(**bad)


def test_registers_through_hook():
    assert synthetic.harness_register_datasets() == [SyntheticDataset]
    import pluggy

    from harness import hookspecs

    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    pm.register(synthetic)
    assert pm.hook.harness_register_datasets() == [[SyntheticDataset]]


# --- generation ------------------------------------------------------------------------------------

def test_deterministic_by_seed(tmp_path):
    a, b, c = (make(tmp_path / n, seed=s, **SMALL) for n, s in (("a", 3), ("b", 3), ("c", 4)))
    for ds in (a, b, c):
        ds.prepare()
    for fname in ("images.npy", "instances.npy", "classes.npy", "unlabeled.npy",
                  "unlabeled_classes.npy", "meta.json"):
        assert (a.root / fname).read_bytes() == (b.root / fname).read_bytes(), fname
    assert not np.array_equal(a.load().images, c.load().images)
    assert not np.array_equal(a.unlabeled_images(), c.unlabeled_images())


def test_shapes_dtypes_and_metadata(default):
    arrays = default.load()
    assert len(arrays) == 120
    assert arrays.images.shape == (120, 64, 64, 3) and arrays.images.dtype == np.uint8
    assert arrays.instances.shape == (120, 64, 64) and arrays.instances.dtype == np.int32
    assert arrays.classes.shape == (120, 64, 64) and arrays.classes.dtype == np.uint8
    assert isinstance(arrays.images, np.memmap)
    assert arrays.ids[:2] == ["fold1/0000", "fold1/0001"] and arrays.ids[-1] == "fold3/0039"
    assert sorted(set(arrays.groups)) == ["fold1", "fold2", "fold3"]
    assert all(sid.split("/")[0] == g for sid, g in zip(arrays.ids, arrays.groups))
    unlabeled = default.unlabeled_images()
    assert unlabeled.shape == (48, 128, 128, 3) and unlabeled.dtype == np.uint8
    hidden = default.unlabeled_classes()
    assert hidden.shape == (48, 128, 128) and hidden.dtype == np.uint8
    assert set(np.unique(hidden)) == set(range(6))
    assert len(default.unlabeled_tissues()) == 48


def test_classes_tissues_and_folds(default):
    arrays = default.load()
    assert set(np.unique(arrays.classes)) == set(range(6))
    tissues = np.array(arrays.tissues)
    groups = np.array(arrays.groups)
    for fold in default.folds(default.config):
        in_fold = tissues[groups == fold]
        assert set(in_fold) == {"Breast", "Colon", "Lung"}
        assert list(in_fold) != sorted(in_fold)  # interleaved, not blocks of one tissue
    # every image has nuclei, and tissues bias the class mix (lung: more inflammatory cells)
    classes = np.asarray(arrays.classes)
    assert ((classes > 0).mean(axis=(1, 2)) > 0.01).all()
    frac = {t: np.bincount(classes[tissues == t].ravel(), minlength=6)[1:] for t in
            ("Breast", "Lung")}
    frac = {t: f / f.sum() for t, f in frac.items()}
    assert frac["Lung"][1] > frac["Breast"][1]


def test_instance_and_class_maps_agree(default):
    arrays = default.load()
    inst, cls = np.asarray(arrays.instances), np.asarray(arrays.classes)
    assert np.array_equal(inst > 0, cls > 0)
    assert inst.min() >= 0 and cls.max() <= 5
    for i in range(len(inst)):  # one class per nucleus; several nuclei per image
        fg = inst[i] > 0
        ids = np.unique(inst[i][fg])
        assert len(ids) >= 2
        pairs = np.unique(inst[i][fg].astype(np.int64) * 8 + cls[i][fg])
        assert len(pairs) == len(ids)


def test_split_trains_on_other_folds(default):
    arrays = default.load()
    split = default.split("fold1", arrays)
    assert sorted(split.train) == ["fold2", "fold3"]
    assert len(split.test) == 40 and all(s.startswith("fold1/") for s in split.test)
    assert not set(split.test) & set(split.train_ids)
    assert len(split.train_ids) == 80


# --- preparation and verification -------------------------------------------------------------------

def test_prepare_is_atomic(tmp_path, monkeypatch):
    ds = make(tmp_path / "data", **SMALL)
    real_save = np.save
    calls = []

    def failing_save(*args, **kwargs):
        calls.append(args[0])
        if len(calls) > 1:
            raise OSError("disk full")
        return real_save(*args, **kwargs)

    monkeypatch.setattr(np, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        ds.prepare()
    assert not ds.root.exists() and not ds.is_prepared()
    assert list(tmp_path.iterdir()) == []  # no temporary leftovers
    with pytest.raises(FileNotFoundError):
        ds.load()
    monkeypatch.undo()
    ds.prepare()
    assert ds.is_prepared() and ds.verify() == []
    ready = json.loads((ds.root / "READY").read_text())
    assert ready["dataset"] == "synthetic" and ready["samples"] == 18


def test_verify_good_and_corrupted(tmp_path):
    ds = make(tmp_path / "data", **SMALL)
    assert ds.verify() and "not prepared" in ds.verify()[0]
    ds.prepare()
    assert ds.verify() == []

    classes = np.load(ds.root / "classes.npy")
    np.save(ds.root / "classes.npy", np.full_like(classes, 9))
    problems = ds.verify()
    assert any("class ids above 5" in p for p in problems)
    assert any("disagree" in p for p in problems)

    np.save(ds.root / "classes.npy", classes[:-1])
    assert any("shape" in p for p in ds.verify())
    np.save(ds.root / "classes.npy", classes)
    assert ds.verify() == []
    (ds.root / "unlabeled.npy").unlink()
    assert any("unlabeled.npy is missing" in p for p in ds.verify())

    other = make(tmp_path / "data", seed=1, **SMALL)  # same folder, another config
    assert any("different config" in p for p in other.verify())


# --- learnability ---------------------------------------------------------------------------------

def _pixel_features(images: np.ndarray) -> np.ndarray:
    img = np.asarray(images, dtype=np.float32) / 255.0
    feats = [img] + [uniform_filter(img, size=(1, k, k, 1)) for k in (3, 7)]
    gray = img.mean(-1)
    mean = uniform_filter(gray, (1, 5, 5))
    std = np.sqrt(np.maximum(uniform_filter(gray * gray, (1, 5, 5)) - mean * mean, 0))
    return np.concatenate(feats + [std[..., None]], -1).reshape(-1, 10)


def _nearest_centroid(x_train, y_train, x_test, labels):
    centroids = np.stack([x_train[y_train == c].mean(0) for c in labels])
    dist = ((x_test[:, None, :] - centroids[None]) ** 2).sum(-1)
    return np.asarray(labels)[dist.argmin(1)]


def test_classes_are_visibly_different(default):
    arrays = default.load()
    x = _pixel_features(arrays.images)
    y = np.asarray(arrays.classes).reshape(-1)
    test = np.repeat(np.array(arrays.groups) == "fold3", 64 * 64)
    x = (x - x[~test].mean(0)) / (x[~test].std(0) + 1e-6)

    fg = (y > 0).astype(int)
    pred = _nearest_centroid(x[~test], fg[~test], x[test], [0, 1])
    assert (pred == fg[test]).mean() > 0.9

    train, held = ~test & (y > 0), test & (y > 0)
    pred = _nearest_centroid(x[train], y[train], x[held], [1, 2, 3, 4, 5])
    recall = [(pred[y[held] == c] == c).mean() for c in range(1, 6)]
    assert np.mean(recall) > 0.4, recall  # chance is 0.2
    assert min(recall) > 0.25, recall


def test_crowding_and_nucleus_scale_off_by_default_and_out_of_keys(tmp_path):
    """The options added for instance heads change nothing at their defaults (same arrays, same
    fingerprint and cache identity); set, they make touching, larger nuclei."""
    import numpy as np
    from scipy import ndimage

    from plugins.datasets._synthetic_draw import draw_set
    from plugins.datasets.synthetic import SyntheticDataset

    base = SyntheticDataset(SyntheticDataset.Config(), tmp_path)
    assert "crowding" not in base.fingerprint()["config"]
    assert "nucleus_scale" not in base.cache_identity(base.config)["config"]
    crowded = SyntheticDataset(SyntheticDataset.Config(crowding=0.7), tmp_path)
    assert crowded.fingerprint()["config"]["crowding"] == 0.7
    tissues = ["Breast", "Colon", "Lung"] * 10
    plain = draw_set(0, 0, 64, tissues, (6, 16))
    assert all(np.array_equal(a, b) for a, b in zip(plain, draw_set(0, 0, 64, tissues, (6, 16), 0.0, 1.0)))

    def merged_fraction(inst, cls):
        merged = total = 0
        for a, c in zip(inst, cls):
            ids = np.unique(a[a > 0])
            total += len(ids)
            for k in range(1, 6):
                lab = ndimage.label(c == k)[0]
                pairs = np.unique(np.stack([lab[a > 0], a[a > 0]]), axis=1)
                pairs = pairs[:, pairs[0] > 0]
                comps, n = np.unique(pairs[0], return_counts=True)
                merged += n[n > 1].sum()
        return merged / total

    _, inst, cls = plain
    _, c_inst, c_cls = draw_set(0, 0, 64, tissues, (6, 16), 0.7)
    assert merged_fraction(c_inst, c_cls) > 3 * merged_fraction(inst, cls)
    _, big, _ = draw_set(0, 0, 64, tissues, (2, 4), 0.0, 2.0)
    def areas(maps):
        counts = [np.bincount(a[a > 0]) for a in maps]
        return np.concatenate([c[c > 0] for c in counts])

    assert np.median(areas(big)) > 3 * np.median(areas(inst))  # axes x2: areas about x4
