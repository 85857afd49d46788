"""The ``tnbc`` dataset plugin (Naylor et al. 2019, Zenodo record 1175282; torch-em's ``tnbc.py``): the Zenodo layout as a folder and as the zip,
the 43/7 split rule and its patient-grouped variant, mask policies, corrupt input, Dice on the
fixture and a short CLI run."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from support import REPO
from dataset_fixtures import (assert_interrupted_prepare_leaves_nothing,
                              assert_prepare_fails_in_one_line, dataset_fixtures)
from finished_runs import cli_prepare, cli_run, one_scratch_cell
from harness.errors import DataError
from harness.metrics import evaluate_dice
from harness_builtin.datasets import tnbc
from harness_builtin.datasets.tnbc import TNBCDataset, image_split, n_test_images, patient_split

SIZE = 64
# (patient, k): 8 images, 4 patients of 3, 2, 2 and 1 images; k = 10 checks numeric sorting.
SAMPLES = [("01", 1), ("01", 2), ("01", 10), ("02", 1), ("02", 2), ("03", 1), ("03", 2), ("04", 1)]
ORDER = [f"{p}_{k}" for p, k in SAMPLES]
RGBA = {"01_2", "03_1"}          # stored with an alpha channel (as some release images are)
NONBINARY = "02_2"               # mask values 0/128/255: any value > 0 is nucleus


def _mask(rng: np.random.Generator, stem: str) -> np.ndarray:
    m = np.zeros((SIZE, SIZE), np.uint8)
    if stem == "01_1":  # hand-checked: a 10x10 block, a 4x4 block, two diagonal-touching pixels
        m[5:15, 5:15] = 255
        m[30:34, 30:34] = 255
        m[50, 50] = m[51, 51] = 255
        return m
    for _ in range(rng.integers(2, 6)):
        r, c = rng.integers(0, SIZE - 8, 2)
        m[r:r + rng.integers(3, 8), c:c + rng.integers(3, 8)] = 255
    if stem == NONBINARY:
        m[m > 0] = np.where(rng.random(int((m > 0).sum())) < 0.5, 128, 255)
    return m


def fixture_arrays(seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = {}
    for stem in ORDER:
        img = rng.integers(0, 256, (SIZE, SIZE, 4 if stem in RGBA else 3), dtype=np.uint8)
        out[stem] = (img, _mask(rng, stem))
    return out


def _png(arr: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def write_fixture(root: Path, as_zip: bool = False, seed: int = 0) -> Path:
    """``TNBC_NucleiSegmentation/Slide_XX/<p>_<k>.png`` + ``GT_XX/<p>_<k>.png`` and the
    ``__MACOSX/`` junk of the Zenodo zip; as the extracted folder or as the zip."""
    files = {}
    for stem, (img, mask) in fixture_arrays(seed).items():
        p = stem.split("_")[0]
        files[f"TNBC_NucleiSegmentation/Slide_{p}/{stem}.png"] = _png(img)
        files[f"TNBC_NucleiSegmentation/GT_{p}/{stem}.png"] = _png(mask)
    files["__MACOSX/TNBC_NucleiSegmentation/Slide_01/._01_1.png"] = b"\x00\x05\x16\x07junk"
    files["__MACOSX/TNBC_NucleiSegmentation/GT_05/._05_1.png"] = b"\x00\x05\x16\x07junk"
    root.mkdir(parents=True, exist_ok=True)
    if as_zip:
        path = root / "TNBC_NucleiSegmentation.zip"
        with zipfile.ZipFile(path, "w") as zf:
            for name, data in files.items():
                zf.writestr(name, data)
        return path
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root / "TNBC_NucleiSegmentation"


make, fixture_dir, prepared = dataset_fixtures(TNBCDataset, write_fixture, "fixture_dir")


# --- identity and split rule ----------------------------------------------------------------------

def test_config():  # identity and load-time options: tests/test_dataset_identity.py
    assert TNBCDataset.Config().split == "image"
    with pytest.raises(Exception):
        TNBCDataset.Config(split="slide")


def test_split_rule():
    # the thesis's 43/7: exact ceil(0.14 n), where sklearn's float 0.14*50 would give 8
    assert n_test_images(50) == 7 and 50 - n_test_images(50) == 43
    assert [n_test_images(n) for n in (2, 7, 8, 51, 100)] == [1, 1, 2, 8, 14]
    assert image_split(50) == [2, 10, 11, 27, 28, 38, 41]  # RandomState(0).permutation(50)[:7]
    assert image_split(50) == sorted(np.random.RandomState(0).permutation(50)[:7].tolist())
    # patient variant: later patients first, an exact total wins over greedy
    pats = [p for p, _ in SAMPLES]  # sizes 01:3, 02:2, 03:2, 04:1; target 2
    assert patient_split(pats) == ["03"]  # 04 (1 image) cannot be completed to 2
    assert patient_split(["01"] * 40 + ["02"] * 3 + ["03"] * 4 + ["04"] * 3) == ["03", "04"]
    assert patient_split(["01"] * 3 + ["02"] * 3 + ["03"] * 3) is None  # 9 -> 2: no exact set


# --- prepare -> verify -> load ---------------------------------------------------------------------

def test_prepare_verify_load(prepared):
    assert prepared.verify() == []
    a = prepared.load()
    assert a.ids == ORDER  # sorted by (patient, k), k numerically
    assert a.images.shape == (8, SIZE, SIZE, 3) and a.images.dtype == np.uint8
    assert a.instances.shape == (8, SIZE, SIZE) and a.instances.dtype == np.int32
    assert a.classes.shape == (8, SIZE, SIZE) and a.classes.dtype == np.uint8
    assert a.tissues == ["Breast"] * 8
    test = [ORDER[i] for i in image_split(8)]
    assert a.groups == ["test" if s in test else "train" for s in ORDER]
    split = prepared.split("test", a)
    assert split.test == test and len(split.train["train"]) == 6 and split.val == []
    truth = fixture_arrays()
    for i, stem in enumerate(ORDER):
        img, mask = truth[stem]
        np.testing.assert_array_equal(a.images[i], img[..., :3])  # alpha dropped
        np.testing.assert_array_equal(a.classes[i], (mask > 0).astype(np.uint8))
    # instances: 4-connected components; the two diagonal pixels are two nuclei
    inst = np.asarray(a.instances[0])
    assert inst.max() == 4 and len(np.unique(inst[50:52, 50:52])) == 3
    np.testing.assert_array_equal(inst, ndimage.label(truth["01_1"][1] > 0)[0])
    info = json.loads((prepared.root / "READY").read_text())
    assert info["complete_release"] is False and info["connectivity"] == 4
    assert set(info["non_rgb_images"]) == RGBA and info["nonbinary_masks"] == [NONBINARY]
    assert info["patients"] == ["01", "02", "03", "04"]
    persisted = json.loads((prepared.root / "split.json").read_text())
    assert persisted["image"]["test"] == test and persisted["patient"]["test"] == ["03_1", "03_2"]


def test_patient_split_option(prepared):
    a = make(prepared.root, split="patient").load()
    assert [s for s, g in zip(a.ids, a.groups) if g == "test"] == ["03_1", "03_2"]


def test_zip_and_parent_folder_sources(tmp_path, prepared, fixture_dir):
    zpath = write_fixture(tmp_path / "z", as_zip=True)
    for i, source in enumerate((zpath, zpath.parent, fixture_dir.parent)):
        ds = make(tmp_path / f"cache{i}")
        ds.prepare(source)
        assert ds.verify() == []
        for name in ("images.npy", "instances.npy", "classes.npy", "samples.json", "split.json"):
            assert (ds.root / name).read_bytes() == (prepared.root / name).read_bytes(), name


def test_verify_counts(tmp_path, fixture_dir):
    ds = make(tmp_path / "c")
    ds.prepare(fixture_dir)
    ready = json.loads((ds.root / "READY").read_text())
    ready["complete_release"] = True  # as if this were the 50-image release: 43/7 expected
    (ds.root / "READY").write_text(json.dumps(ready))
    problems = ds.verify()
    assert len(problems) == 2 and "expected 43" in problems[0] and "expected 7" in problems[1]


# --- anomalies and corrupt input ------------------------------------------------------------------

def test_grey_mask_saved_as_rgb_is_accepted(tmp_path):
    src = write_fixture(tmp_path / "src")
    mask = fixture_arrays()["02_1"][1]
    (src / "GT_02" / "02_1.png").write_bytes(_png(np.stack([mask] * 3, -1)))
    ds = make(tmp_path / "cache")
    ds.prepare(src)
    np.testing.assert_array_equal(ds.load().classes[3], (mask > 0).astype(np.uint8))


def _corrupt(kind: str, src: Path) -> str:
    if kind == "mask_without_image":
        (src / "Slide_02" / "02_2.png").unlink()
        return "GT_02/02_2.png"
    if kind == "image_without_mask":
        (src / "GT_03" / "03_1.png").unlink()
        return "Slide_03/03_1.png"
    if kind == "unreadable_png":
        (src / "Slide_01" / "01_2.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
        return "Slide_01/01_2.png"
    if kind == "truncated_mask":
        data = (src / "GT_04" / "04_1.png").read_bytes()
        (src / "GT_04" / "04_1.png").write_bytes(data[: len(data) // 2])
        return "GT_04/04_1.png"
    if kind == "colour_mask":
        m = np.zeros((SIZE, SIZE, 3), np.uint8)
        m[3:9, 3:9, 0] = 255
        (src / "GT_01" / "01_10.png").write_bytes(_png(m))
        return "GT_01/01_10.png"
    if kind == "mask_size":
        (src / "GT_02" / "02_1.png").write_bytes(_png(np.zeros((32, SIZE), np.uint8)))
        return "GT_02/02_1.png"
    if kind == "image_size":
        (src / "Slide_03" / "03_2.png").write_bytes(_png(np.zeros((SIZE, 32, 3), np.uint8)))
        return "Slide_03/03_2.png"
    if kind == "greyscale_image":
        (src / "Slide_01" / "01_1.png").write_bytes(_png(np.zeros((SIZE, SIZE), np.uint8)))
        return "Slide_01/01_1.png"
    if kind == "duplicate_stem":
        (src / "Slide_04" / "01_1.png").write_bytes((src / "Slide_01" / "01_1.png").read_bytes())
        (src / "GT_04" / "01_1.png").write_bytes((src / "GT_01" / "01_1.png").read_bytes())
        return "01_1.png"
    if kind == "no_images":
        for p in src.glob("*_0*"):
            for f in p.iterdir():
                f.unlink()
        return str(src)
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["mask_without_image", "image_without_mask", "unreadable_png",
                                  "truncated_mask", "colour_mask", "mask_size", "image_size",
                                  "greyscale_image", "duplicate_stem", "no_images"])
def test_corrupt_input_is_a_one_line_data_error(tmp_path, kind):
    src = write_fixture(tmp_path / "src")
    where = _corrupt(kind, src)
    assert_prepare_fails_in_one_line(make(tmp_path / "cache" / "tnbc"), src, where)


def test_corrupt_zip_member_names_the_member(tmp_path):
    zpath = write_fixture(tmp_path / "z", as_zip=True)
    with zipfile.ZipFile(zpath, "a") as zf:
        zf.writestr("TNBC_NucleiSegmentation/GT_09/09_1.png", _png(np.zeros((SIZE, SIZE), np.uint8)))
    with pytest.raises(DataError, match=r"TNBC_NucleiSegmentation\.zip!.*GT_09/09_1\.png: mask "
                                        r"without its image"):
        make(tmp_path / "cache").prepare(zpath)
    (tmp_path / "bad.zip").write_bytes(b"PK not a zip")
    with pytest.raises(DataError, match="bad.zip"):
        make(tmp_path / "cache").prepare(tmp_path / "bad.zip")


def test_interrupted_prepare_leaves_nothing(tmp_path, fixture_dir, monkeypatch):
    assert_interrupted_prepare_leaves_nothing(make(tmp_path / "cache" / "tnbc"), fixture_dir,
                                              monkeypatch, tnbc, "mask_array", 3)


# --- metric ---------------------------------------------------------------------------------------

def test_dice_of_ground_truth_and_a_known_perturbation(prepared):
    a = prepared.load()
    cls = np.asarray(a.classes)
    assert evaluate_dice(cls, cls)["dice"] == 1.0
    pred = cls.copy()
    pred[0, 5:15, 5:15] = 0  # image 01_1 loses its 10x10 nucleus: |G| = 100 + 16 + 2 = 118
    res = evaluate_dice(pred, cls)
    assert res["per_image"][0] == pytest.approx(2 * 18 / (18 + 118), abs=1e-12)
    assert res["dice"] == pytest.approx((7 + 2 * 18 / 136) / 8, abs=1e-12)


# --- end to end -------------------------------------------------------------------------------------

def test_cli_prepare_and_run(tmp_path, fixture_dir):
    store = cli_prepare(tmp_path, "tnbc", fixture_dir)
    out = cli_run(tmp_path, REPO / "specs" / "tnbc.yaml", *one_scratch_cell(2), "--set", "seeds=[0]")
    rows = json.loads((out / "report.json").read_text())["rows"]
    assert [(r["method"], r["protocol"]) for r in rows] == [("scratch", "full")]
    m = json.loads(next(store.rglob("metrics.json")).read_text())
    assert len(m["dice"]["per_image"]) == 2 and 0.0 <= m["dice"]["dice"] <= 1.0
