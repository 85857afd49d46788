"""The ``lizard`` dataset plugin (CoNIC patch format + Lizard info.csv, CoNIC's ``extract_patches.py``): prepare
from the official layout, verify, load, fold rule, policies, corrupt input, PQ on the fixture and
a short CLI run."""

from __future__ import annotations

import csv
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from support import REPO
from dataset_fixtures import assert_prepare_fails_in_one_line, dataset_fixtures
from finished_runs import cli_prepare, cli_run, one_scratch_cell
from harness.metrics import evaluate_segmentation
from harness_builtin.datasets import lizard
from harness_builtin.datasets.lizard import CLASS_NAMES, LizardDataset

SIZE = 64
# (image name, Source, Split, patches); "dpath_9" has no patches (info.csv lists all 238 images).
IMAGES = [("consep_1", "consep", 1, 3), ("glas_2", "glas", 2, 2), ("crag_3", "crag", 3, 2),
          ("pannuke_4", "pannuke", 1, 1), ("dpath_5", "dpath", 2, 1), ("dpath_6", "dpath", 3, 2),
          ("dpath_9", "dpath", 1, 0)]
N = sum(p for *_, p in IMAGES)


def _square(lab: np.ndarray, cell: int, inst: int, cls: int) -> None:
    """A 6x6 nucleus in grid cell ``cell`` (6x6 cells of 10 px): nuclei never touch."""
    r, c = divmod(cell, 6)
    lab[2 + 10 * r:8 + 10 * r, 2 + 10 * c:8 + 10 * c] = (inst, cls)


def make_labels(n: int, rng: np.random.Generator) -> np.ndarray:
    labels = np.zeros((n, SIZE, SIZE, 2), np.uint16)  # uint16, as extract_patches.py writes it
    # Patch 0 is the hand-checked one: three epithelial (2) nuclei and one lymphocyte (3).
    for inst, (cell, cls) in enumerate([(0, 2), (7, 2), (14, 2), (21, 3)], start=1):
        _square(labels[0], cell, inst, cls)
    for i in range(1, n):
        cells = rng.choice(36, size=rng.integers(2, 8), replace=False)
        for inst, cell in enumerate(cells, start=1):
            _square(labels[i], int(cell), inst, int(rng.integers(1, 7)))
    return labels


def write_fixture(root: Path, info_where: str = "top", counts: bool = True,
                  seed: int = 0) -> Path:
    """The official layout: images.npy, labels.npy, patch_info.csv, counts.csv and info.csv
    (at the top, under Lizard_Labels/ or in lizard_labels.zip)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    names = [f"{img}-{k:04d}" for img, _, _, p in IMAGES for k in range(p)]
    order = [names[0]] + [names[i] for i in 1 + rng.permutation(len(names) - 1)]  # interleaved
    np.save(root / "images.npy", rng.integers(0, 256, (N, SIZE, SIZE, 3), dtype=np.uint8))
    labels = make_labels(N, rng)
    np.save(root / "labels.npy", labels)
    with open(root / "patch_info.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["patch_info"])
        w.writerows([[name] for name in order])
    if counts:  # nuclei per class in the central crop (16 px margin)
        with open(root / "counts.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(CLASS_NAMES)
            for lab in labels:
                crop = lab[16:-16, 16:-16]
                w.writerow([len(np.unique(crop[..., 0][crop[..., 1] == c])) for c in range(1, 7)])
    info = "Filename,Source,Split\n" + "".join(f"{img},{src},{split}\n"
                                               for img, src, split, _ in IMAGES)
    if info_where == "top":
        (root / "info.csv").write_text(info)
    elif info_where == "folder":
        (root / "Lizard_Labels").mkdir()
        (root / "Lizard_Labels" / "info.csv").write_text(info)
    else:
        with zipfile.ZipFile(root / "lizard_labels.zip", "w") as zf:
            zf.writestr("Lizard_Labels/info.csv", info)
            zf.writestr("Lizard_Labels/Labels/consep_1.mat", b"not read")
    return root


make, fixture_dir, prepared = dataset_fixtures(LizardDataset, lambda d: write_fixture(d / "conic"),
                                               "fixture_dir")


# --- identity ---------------------------------------------------------------------------------------

def test_config():  # identity and load-time options: tests/test_dataset_identity.py
    cfg = LizardDataset.Config()
    assert cfg.thesis_bgr_swap is True and cfg.aggregate_by_source is False
    with pytest.raises(Exception):
        LizardDataset.Config(unknown=1)


def test_fold_rule():
    assert lizard.source_image("consep_1-0000") == "consep_1"
    assert lizard.source_image("glas_31-0008") == "glas_31"
    info = lizard.parse_info("info.csv", "Filename,Source,Split\nconsep_1,consep,3\n")
    assert info == {"consep_1": ("consep", 3)}
    # no Source column (documented only second hand): the name's prefix
    assert lizard.parse_info("info.csv", "Filename,Split\ncrag_7,2\n") == {"crag_7": ("crag", 2)}


# --- prepare -> verify -> load ---------------------------------------------------------------------

def test_prepare_verify_load(prepared, fixture_dir):
    assert prepared.is_prepared() and prepared.verify() == []
    arrays = prepared.load()
    assert arrays.images.shape == (N, SIZE, SIZE, 3) and arrays.images.dtype == np.uint8
    assert arrays.instances.shape == (N, SIZE, SIZE) and arrays.instances.dtype == np.int32
    assert arrays.classes.shape == (N, SIZE, SIZE) and arrays.classes.dtype == np.uint8
    names = [r[0] for r in csv.reader(open(fixture_dir / "patch_info.csv"))][1:]
    assert arrays.ids == names  # images.npy order, ids = patch_info
    split = {img: s for img, _, s, _ in IMAGES}
    assert arrays.groups == [f"fold{split[n.split('-')[0]]}" for n in names]
    assert arrays.tissues == ["colon"] * N  # thesis: one group
    labels = np.load(fixture_dir / "labels.npy")
    np.testing.assert_array_equal(arrays.instances, labels[..., 0].astype(np.int32))
    np.testing.assert_array_equal(arrays.classes, labels[..., 1].astype(np.uint8))
    src = np.load(fixture_dir / "images.npy")
    np.testing.assert_array_equal(arrays.images, src[..., ::-1])  # thesis_bgr_swap default
    # a view of the memory map, whose samples become tensors (no negative strides)
    base = arrays.images
    while base is not None and not isinstance(base, np.memmap):
        base = base.base
    assert isinstance(base, np.memmap)
    import torch

    sample = arrays.images[3]
    assert type(sample) is np.ndarray and sample.flags.c_contiguous
    np.testing.assert_array_equal(torch.from_numpy(sample).numpy(), src[3, ..., ::-1])
    np.testing.assert_array_equal(arrays.images[[1, 4]], src[[1, 4]][..., ::-1])
    info = json.loads((prepared.root / "READY").read_text())
    assert info["complete_release"] is False and info["samples"] == N
    assert info["group_counts"] == {"fold1": 4, "fold2": 3, "fold3": 4}
    assert info["images_in_info_without_patches"] == ["dpath_9"] and info["counts_csv"]
    assert np.load(prepared.root / "counts.npy").shape == (N, 6)
    split_obj = prepared.split("fold2", arrays)
    assert set(split_obj.train) == {"fold1", "fold3"} and len(split_obj.test) == 3


def test_load_time_options(prepared, fixture_dir):
    plain = make(prepared.root, thesis_bgr_swap=False, aggregate_by_source=True).load()
    np.testing.assert_array_equal(plain.images, np.load(fixture_dir / "images.npy"))
    source = {img: s for img, s, _, _ in IMAGES}
    assert plain.tissues == [source[i.split("-")[0]] for i in plain.ids]


@pytest.mark.parametrize("where", ["folder", "zip"])
def test_info_csv_locations(tmp_path, where, prepared):
    src = write_fixture(tmp_path / "src", info_where=where, counts=False)
    ds = make(tmp_path / "cache")
    ds.prepare(src)
    assert ds.verify() == []
    a, b = ds.load(), prepared.load()
    assert a.ids == b.ids and a.groups == b.groups
    assert not (ds.root / "counts.npy").exists()


def test_verify_notices_damage(tmp_path, fixture_dir):
    ds = make(tmp_path / "cache")
    ds.prepare(fixture_dir)
    samples = json.loads((ds.root / "samples.json").read_text())
    samples["groups"][0] = "fold2" if samples["groups"][0] != "fold2" else "fold1"
    (ds.root / "samples.json").write_text(json.dumps(samples))
    problems = ds.verify()
    assert len(problems) == 1 and "samples.json" in problems[0]
    # even with a manifest that matches, the per-fold counts recorded at prepare time disagree
    from harness.data.cache import file_sha256

    manifest = json.loads((ds.root / "manifest.json").read_text())
    path = ds.root / "samples.json"
    manifest["files"]["samples.json"] = {"sha256": file_sha256(path), "bytes": path.stat().st_size}
    (ds.root / "manifest.json").write_text(json.dumps(manifest))
    problems = ds.verify()
    assert len(problems) == 2 and all("recorded at prepare time" in p for p in problems)


# --- corrupt input --------------------------------------------------------------------------------

def _corrupt(kind: str, root: Path) -> str:
    """Damage the fixture; return the file name the error must name."""
    if kind == "image_not_in_info":
        text = (root / "info.csv").read_text().replace("glas_2,glas,2\n", "")
        (root / "info.csv").write_text(text)
        return "patch_info.csv"
    if kind == "labels_shape":
        np.save(root / "labels.npy", np.zeros((N, SIZE, SIZE), np.uint16))
        return "labels.npy"
    if kind == "class_7":
        labels = np.load(root / "labels.npy")
        labels[N - 1, 0, 0] = (99, 7)
        np.save(root / "labels.npy", labels)
        return "labels.npy"
    if kind == "split_4":
        (root / "info.csv").write_text((root / "info.csv").read_text().replace(
            "crag_3,crag,3", "crag_3,crag,4"))
        return "info.csv"
    if kind == "patch_info_length":
        lines = (root / "patch_info.csv").read_text().splitlines()
        (root / "patch_info.csv").write_text("\n".join(lines[:-1]) + "\n")
        return "patch_info.csv"
    if kind == "counts_length":
        lines = (root / "counts.csv").read_text().splitlines()
        (root / "counts.csv").write_text("\n".join(lines[:-2]) + "\n")
        return "counts.csv"
    if kind == "truncated_npy":
        data = (root / "images.npy").read_bytes()
        (root / "images.npy").write_bytes(data[: len(data) // 2])
        return "images.npy"
    if kind == "images_dtype":
        np.save(root / "images.npy", np.zeros((N, SIZE, SIZE, 3), np.float32))
        return "images.npy"
    if kind == "instance_class_disagree":
        labels = np.load(root / "labels.npy")
        labels[3, 63, 63] = (0, 4)
        np.save(root / "labels.npy", labels)
        return "labels.npy"
    if kind == "duplicate_patch":
        lines = (root / "patch_info.csv").read_text().splitlines()
        lines[2] = lines[1]
        (root / "patch_info.csv").write_text("\n".join(lines) + "\n")
        return "patch_info.csv"
    if kind == "missing_info":
        (root / "info.csv").unlink()
        return "info.csv"
    if kind == "missing_labels":
        (root / "labels.npy").unlink()
        return "labels.npy"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["image_not_in_info", "labels_shape", "class_7", "split_4",
                                  "patch_info_length", "counts_length", "truncated_npy",
                                  "images_dtype", "instance_class_disagree", "duplicate_patch",
                                  "missing_info", "missing_labels"])
def test_corrupt_input_is_a_one_line_data_error(tmp_path, kind):
    src = write_fixture(tmp_path / "src")
    fname = _corrupt(kind, src)
    assert_prepare_fails_in_one_line(make(tmp_path / "cache" / "lizard"), src, fname)


def test_interrupted_prepare_leaves_nothing(tmp_path, fixture_dir, monkeypatch):
    calls = []
    real = lizard._convert_chunk

    def interrupt(*args, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kw)

    monkeypatch.setattr(lizard, "_CHUNK", 3)
    monkeypatch.setattr(lizard, "_convert_chunk", interrupt)
    ds = make(tmp_path / "cache" / "lizard")
    with pytest.raises(KeyboardInterrupt):
        ds.prepare(fixture_dir)
    assert not ds.is_prepared() and list((tmp_path / "cache").iterdir()) == []
    monkeypatch.setattr(lizard, "_convert_chunk", real)
    ds.prepare(fixture_dir)  # a rerun finishes
    assert ds.verify() == []


# --- metrics on the prepared fixture ----------------------------------------------------------------

def test_ground_truth_scores_pq_one(prepared):
    a = prepared.load()
    cls, inst = np.asarray(a.classes), np.asarray(a.instances)
    for tissues in (a.tissues, prepared.sources()):
        res = evaluate_segmentation(cls, cls, inst, tissues, CLASS_NAMES)
        for variant in ("thesis", "instance"):
            assert res[variant]["mpq"] == pytest.approx(1.0, abs=1e-6)
            assert res[variant]["n_images"] == N
    assert list(res["thesis"]["per_tissue"]) == sorted(set(prepared.sources()))


def test_known_perturbation(prepared):
    """Patch 0 has three epithelial 6x6 nuclei and one lymphocyte; the prediction misses one
    epithelial nucleus."""
    a = prepared.load()
    cls, inst = np.asarray(a.classes), np.asarray(a.instances)
    assert a.ids[0] == "consep_1-0000"
    pred = cls.copy()
    pred[0][inst[0] == 2] = 0
    eps = 1e-6
    # thesis: epithelial region IoU = 72/108 > 0.5 -> IoU/(1+eps); lymphocyte 1/(1+eps)
    thesis0 = (2 / 3 / (1 + eps) + 1 / (1 + eps)) / 2
    # instance: epithelial TP 2, FN 1 -> DQ 2/2.5, SQ 2/(2+eps); lymphocyte 1/(1+eps)
    instance0 = (0.8 * 2 / (2 + eps) + 1 / (1 + eps)) / 2
    one = evaluate_segmentation(pred[:1], cls[:1], inst[:1], ["colon"], CLASS_NAMES)
    assert one["thesis"]["mpq"] == pytest.approx(thesis0, abs=1e-12)
    assert one["instance"]["mpq"] == pytest.approx(instance0, abs=1e-12)
    assert one["thesis"]["per_class"]["epithelial"] == pytest.approx(2 / 3 / (1 + eps), abs=1e-12)
    # whole set, single pseudo-tissue: nanmean over images (the others score 1 up to eps)
    res = evaluate_segmentation(pred, cls, inst, a.tissues, CLASS_NAMES)
    assert res["thesis"]["mpq"] == pytest.approx((N - 1 + thesis0) / N, abs=1e-5)
    assert res["instance"]["mpq"] == pytest.approx((N - 1 + instance0) / N, abs=1e-5)


# --- end to end -------------------------------------------------------------------------------------

def test_cli_prepare_verify_and_run(tmp_path, fixture_dir):
    store = cli_prepare(tmp_path, "lizard", fixture_dir)
    from harness.data.base import dataset_root
    from harness.store import ArtifactStore

    ds = LizardDataset(None, dataset_root(LizardDataset, None, ArtifactStore(store)))
    assert ds.is_prepared() and ds.verify() == []  # what `harness data verify lizard` runs
    out = cli_run(tmp_path, REPO / "specs" / "lizard.yaml", *one_scratch_cell(4), "--set", "folds=[fold1]")
    rows = json.loads((out / "report.json").read_text())["rows"]
    assert [(r["method"], r["protocol"]) for r in rows] == [("scratch", "full")]
    m = json.loads(next(store.rglob("metrics.json")).read_text())
    assert m["thesis"]["n_images"] == 4 and list(m["thesis"]["per_tissue"]) == ["colon"]
