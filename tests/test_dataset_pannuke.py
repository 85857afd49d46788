"""The ``pannuke`` dataset plugin: the official layout (folder and zips) -> cache, class and
instance maps of both void policies, anomalies, corrupt inputs, atomic preparation, PQ on the
prepared ground truth and a short end-to-end run through the CLI."""

from __future__ import annotations

import json
import math
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from harness.errors import DataError
from harness.metrics import evaluate_segmentation
from harness_builtin.datasets import _pannuke_io
from harness_builtin.datasets.pannuke import PanNukeDataset

from dataset_fixtures import assert_interrupted_prepare_leaves_nothing, dataset_fixtures
from finished_runs import cli_prepare, cli_run

CLASS_NAMES = ("neoplastic", "inflammatory", "connective", "dead", "epithelial")
LUT = np.array([1, 2, 3, 4, 5, 0], dtype=np.uint8)  # argmax channel -> class (reference L54)

# --- the fixture --------------------------------------------------------------------------------
# Discs (channel, id, cy, cx, r) on a 64-pixel grid, scaled to the patch size. Ids are
# non-contiguous, repeat across channels, and the anomalies of the released arrays are present:
# fold1/00003 fully void, fold2/00000 two overlapping discs of different classes, fold2/00002 a
# void block inside the background, fold3/00002 one id (3512) in two separate discs, fold3/00004
# no nuclei at all. Tissues are in non-sorted, interleaved order.
FIXTURE: dict[str, list[tuple[str, list[tuple[int, int, int, int, int]]]]] = {
    "fold1": [
        ("Breast", [(0, 17, 12, 12, 5), (1, 230, 40, 44, 4), (4, 3512, 50, 14, 6)]),
        ("Colon", [(2, 8, 20, 30, 5), (3, 41, 46, 50, 3)]),
        ("Breast", [(0, 5, 10, 50, 4), (0, 900, 44, 20, 5), (2, 17, 30, 40, 4)]),
        ("Breast", "void"),
        ("Adrenal_gland", [(4, 77, 32, 32, 8)]),
    ],
    "fold2": [
        ("Skin", [(0, 17, 30, 24, 8), (2, 230, 30, 36, 6), (1, 3, 52, 52, 4)]),
        ("Breast", [(3, 1234, 16, 16, 5), (4, 12, 44, 40, 5)]),
        ("Breast", [(1, 66, 14, 44, 5)]),
        ("Liver", [(2, 2, 48, 16, 6), (0, 3515, 20, 44, 4)]),
    ],
    "fold3": [
        ("Breast", [(0, 1, 20, 20, 6), (1, 2, 40, 44, 5)]),
        ("Uterus", [(4, 9, 32, 16, 5), (2, 300, 20, 48, 4)]),
        ("Colon", [(4, 3512, 14, 14, 5), (4, 3512, 48, 48, 5), (0, 17, 14, 48, 5),
                   (2, 17, 48, 14, 5)]),
        ("Breast", [(1, 44, 32, 32, 7)]),
        ("Breast", []),
    ],
}
VOID_BLOCK = ("fold2", 2, (slice(50, 60), slice(4, 14)))  # in 64-grid units
ROUNDING = ("fold1", 0, (0, 0, 0), 254.6)  # image value that rounds up (truncation would not)


def fixture_arrays(size: int = 256, layout: dict | None = None):
    """{fold: (images, masks, types)} in the official dtypes."""
    layout = FIXTURE if layout is None else layout
    s = size // 64
    yy, xx = np.mgrid[:size, :size]
    out = {}
    for k, (fold, patches) in enumerate(layout.items()):
        rng = np.random.default_rng(k)
        n = len(patches)
        images = rng.integers(0, 256, (n, size, size, 3)).astype(np.float64)
        masks = np.zeros((n, size, size, 6), dtype=np.float64)
        for i, (_, discs) in enumerate(patches):
            if discs == "void":
                continue
            for c, ident, cy, cx, r in discs:
                cy, cx = cy * s + s // 2, cx * s + s // 2
                inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= (r * s) ** 2
                masks[i, :, :, c][inside] = ident
            masks[i, :, :, 5] = (masks[i, :, :, :5] == 0).all(-1)
        if fold == VOID_BLOCK[0]:
            ys, xs = VOID_BLOCK[2]
            masks[VOID_BLOCK[1], ys.start * s:ys.stop * s, xs.start * s:xs.stop * s, :] = 0
        if fold == ROUNDING[0]:
            images[(ROUNDING[1], *ROUNDING[2])] = ROUNDING[3]
        types = np.array([t for t, _ in patches])
        out[fold] = (images, masks, types)
    return out


def write_fixture(root: Path, size: int = 256, layout: dict | None = None) -> Path:
    """The unpacked official layout: ``Fold k/images/foldk/{images,types}.npy`` and
    ``Fold k/masks/foldk/masks.npy``."""
    for fold, (images, masks, types) in fixture_arrays(size, layout).items():
        k = fold[-1]
        img_dir = root / f"Fold {k}" / "images" / fold
        mask_dir = root / f"Fold {k}" / "masks" / fold
        img_dir.mkdir(parents=True)
        mask_dir.mkdir(parents=True)
        np.save(img_dir / "images.npy", images)
        np.save(img_dir / "types.npy", types)
        np.save(mask_dir / "masks.npy", masks)
        (root / f"Fold {k}" / "masks" / "README.md").write_text("masks\n")
    return root


def zip_fixture(folder: Path, dest: Path) -> Path:
    """The three official archives (``fold_k.zip`` holding ``Fold k/...``)."""
    dest.mkdir(parents=True, exist_ok=True)
    for k in (1, 2, 3):
        with zipfile.ZipFile(dest / f"fold_{k}.zip", "w", zipfile.ZIP_DEFLATED) as zf:
            for path in sorted((folder / f"Fold {k}").rglob("*")):
                if path.is_file():
                    zf.write(path, path.relative_to(folder).as_posix())
    return dest


make, source, prepared = dataset_fixtures(PanNukeDataset, write_fixture)


# --- identity -------------------------------------------------------------------------------------

def test_config():  # identity and load-time options: tests/test_dataset_identity.py
    ds = make(Path("/nonexistent"))
    assert ds.config.void_policy is None and ds.void_policy == "thesis"  # unset: follows the spec
    assert make(Path("/x"), void_policy="background").config.void_policy == "background"
    for bad in ({"void_policy": "ignore"}, {"unknown": 1}):
        with pytest.raises(ValidationError):
            PanNukeDataset.Config(**bad)
    assert len(_pannuke_io.TISSUES) == 19 and len(set(_pannuke_io.TISSUES)) == 19


# --- prepare / verify / load ----------------------------------------------------------------------

def _expected_counts(arrays) -> dict[str, dict[str, int]]:
    """Anomaly counts computed independently from the raw fixture arrays."""
    out = {}
    for fold, (_, masks, _) in arrays.items():
        nuc = (masks[..., :5] > 0).sum(-1)
        void = (masks == 0).all(-1)
        per_void = void.reshape(len(masks), -1).sum(1)
        out[fold] = {"overlap_pixels": int((nuc > 1).sum()),
                     "overlap_patches": int((nuc > 1).reshape(len(masks), -1).any(1).sum()),
                     "void_pixels": int(void.sum()), "void_patches": int((per_void > 0).sum()),
                     "fully_void_patches": int((per_void == void[0].size).sum()),
                     "nucleus_and_background_pixels": 0, "nucleus_and_background_patches": 0}
    out["fold3"]["split_ids"] = 1
    out["fold1"]["split_ids"] = out["fold2"]["split_ids"] = 0
    return out


def test_prepare_verify_load(prepared):
    ds = prepared
    assert ds.is_prepared() and ds.verify() == []
    arr = ds.load()
    n = sum(len(p) for p in FIXTURE.values())
    assert arr.images.shape == (n, 256, 256, 3) and arr.images.dtype == np.uint8
    assert arr.classes.shape == (n, 256, 256) and arr.classes.dtype == np.uint8
    assert arr.instances.shape == (n, 256, 256) and arr.instances.dtype == np.int32
    assert arr.ids == [f"{f}/{i:05d}" for f, p in FIXTURE.items() for i in range(len(p))]
    assert arr.ids[:2] == ["fold1/00000", "fold1/00001"]
    assert arr.groups == [f for f, p in FIXTURE.items() for _ in p]
    assert arr.tissues == [t for p in FIXTURE.values() for t, _ in p]
    info = json.loads((ds.root / "READY").read_text())
    assert info["complete_release"] is False
    assert info["group_sizes"] == {"fold1": 5, "fold2": 4, "fold3": 5}
    assert info["source_fold_sizes"] == info["group_sizes"]
    assert info["anomalies"] == _expected_counts(fixture_arrays())
    assert info["anomalies"]["fold1"]["fully_void_patches"] == 1
    assert info["anomalies"]["fold2"]["overlap_pixels"] > 0
    assert info["source_dtypes"]["fold1"] == {"images": "float64", "masks": "float64"}
    # the default split: train on the two other folds
    split = ds.split("fold3", arr)
    assert list(split.train) == ["fold1", "fold2"] and split.test == arr.ids[9:]


def test_class_maps_follow_the_reference_argmax(prepared):
    raw = fixture_arrays()
    thesis = prepared.load()
    bg = make(prepared.root, void_policy="background").load()
    start = 0
    for fold, (_, masks, _) in raw.items():
        sl = slice(start, start + len(masks))
        start += len(masks)
        ref = LUT[np.argmax(masks, -1)]
        void = (masks == 0).all(-1)
        np.testing.assert_array_equal(thesis.classes[sl], ref)
        np.testing.assert_array_equal(bg.classes[sl], np.where(void, 0, ref))
        np.testing.assert_array_equal(bg.images[sl], thesis.images[sl])
    void_patch = thesis.ids.index("fold1/00003")
    assert (thesis.classes[void_patch] == 1).all() and (bg.classes[void_patch] == 0).all()
    assert (bg.instances[void_patch] == 0).all() and (thesis.instances[void_patch] == 1).all()
    # the overlap of the neoplastic disc (id 17) and the connective disc (id 230) -> connective
    i = thesis.ids.index("fold2/00000")
    _, masks, _ = raw["fold2"]
    both = (masks[0, :, :, 0] > 0) & (masks[0, :, :, 2] > 0)
    assert both.sum() > 0 and (thesis.classes[i][both] == 3).all()
    # the void block of fold2/00002: neoplastic under 'thesis', background under 'background'
    j = thesis.ids.index("fold2/00002")
    ys, xs = VOID_BLOCK[2]
    block = (slice(ys.start * 4, ys.stop * 4), slice(xs.start * 4, xs.stop * 4))
    assert (thesis.classes[j][block] == 1).all() and (bg.classes[j][block] == 0).all()
    assert len(np.unique(thesis.instances[j][block])) == 1 and thesis.instances[j][block][0, 0] > 0


def test_instance_maps(prepared):
    raw = fixture_arrays()
    for policy in ("thesis", "background"):
        arr = make(prepared.root, void_policy=policy).load()
        start = 0
        for fold, (_, masks, _) in raw.items():
            for i in range(len(masks)):
                inst, cls = np.asarray(arr.instances[start]), np.asarray(arr.classes[start])
                assert ((inst > 0) == (cls > 0)).all()
                arg = np.argmax(masks[i], -1)
                void = (masks[i] == 0).all(-1)
                nuc = (arg < 5) & ~void
                ident = np.take_along_axis(masks[i], arg[..., None], -1)[..., 0]
                pairs = {(int(a), int(b)) for a, b in zip(arg[nuc], ident[nuc])}
                ids_nuc = inst[nuc]
                # one instance per (channel, id), contiguous 1..n, each inside one class
                assert sorted(np.unique(ids_nuc).tolist()) == list(range(1, len(pairs) + 1))
                for c, v in pairs:
                    sel = nuc & (arg == c) & (ident == v)
                    assert len(np.unique(inst[sel])) == 1
                    assert (cls[inst == inst[sel][0]] == c + 1).all()
                if policy == "thesis" and void.any():
                    assert inst[void].min() > len(pairs)
                start += 1
    arr = prepared.load()
    k = arr.ids.index("fold3/00002")  # 3512 in two discs = one instance; 17 in two channels = two
    assert len(np.unique(arr.instances[k])) == 1 + 3


def test_images_rounded_not_truncated(prepared):
    raw = fixture_arrays()
    arr = prepared.load()
    np.testing.assert_array_equal(arr.images[:5], np.rint(raw["fold1"][0]).astype(np.uint8))
    assert arr.images[(ROUNDING[1], *ROUNDING[2])] == 255


def test_zip_source_matches_folder(prepared, source, tmp_path):
    zips = zip_fixture(source, tmp_path / "zips")
    ds = make(tmp_path / "data")
    ds.prepare(zips)
    assert ds.verify() == []
    info = json.loads((ds.root / "READY").read_text())
    assert info["source_kind"] == ["zip"]
    for name in ("images", "classes", "instances", "classes_background", "instances_background",
                 "samples"):
        suffix = ".json" if name == "samples" else ".npy"
        assert (ds.root / f"{name}{suffix}").read_bytes() == \
               (prepared.root / f"{name}{suffix}").read_bytes(), name


# --- corrupt input ----------------------------------------------------------------------------

def _npy(root: Path, fold: str, name: str) -> Path:
    k = fold[-1]
    sub = "masks" if name == "masks" else "images"
    return root / f"Fold {k}" / sub / fold / f"{name}.npy"


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 1000])


def _rewrite(path: Path, fn) -> None:
    np.save(path, fn(np.load(path)))


def _set_image(fold, i, value):
    def fn(a):
        a[i, 3, 3, 0] = value
        return a
    return fn


CORRUPT = {
    "truncated images": (lambda r: _truncate(_npy(r, "fold2", "images")), "fold2/images.npy",
                         "not a readable .npy"),
    "truncated masks": (lambda r: _truncate(_npy(r, "fold3", "masks")), "fold3/masks.npy",
                        "not a readable .npy"),
    "missing masks": (lambda r: _npy(r, "fold2", "masks").unlink(), "fold2/masks.npy", "missing"),
    "missing fold": (lambda r: shutil.rmtree(r / "Fold 3"), "fold_3.zip", "Fold 3"),
    "mask channels": (lambda r: _rewrite(_npy(r, "fold1", "masks"), lambda a: a[..., :5]),
                      "fold1/masks.npy", "(N, H, W, 6)"),
    "types length": (lambda r: _rewrite(_npy(r, "fold1", "types"), lambda a: a[:-1]),
                     "fold1/types.npy", "expected (5,)"),
    "unknown tissue": (lambda r: _rewrite(_npy(r, "fold3", "types"),
                                          lambda a: np.array([*a[:2], "Brain", *a[3:]])),
                       "fold3/types.npy", "index 2: unknown tissue 'Brain'"),
    "image above 255": (lambda r: _rewrite(_npy(r, "fold2", "images"),
                                           _set_image("fold2", 1, 300.0)),
                        "fold2/images.npy", "index 1"),
    "image NaN": (lambda r: _rewrite(_npy(r, "fold1", "images"), _set_image("fold1", 4, np.nan)),
                  "fold1/images.npy", "index 4: NaN"),
    "mask NaN": (lambda r: _rewrite(_npy(r, "fold3", "masks"),
                                    lambda a: (a.__setitem__((1, 5, 5, 2), np.nan), a)[1]),
                 "fold3/masks.npy", "index 1: NaN"),
    "mask negative": (lambda r: _rewrite(_npy(r, "fold1", "masks"),
                                         lambda a: (a.__setitem__((2, 5, 5, 0), -3), a)[1]),
                      "fold1/masks.npy", "index 2: negative"),
    "fewer masks than images": (lambda r: _rewrite(_npy(r, "fold2", "masks"), lambda a: a[:3]),
                                "fold2/masks.npy", "does not match images.npy"),
    "not an npy": (lambda r: _npy(r, "fold1", "images").write_bytes(b"PK\x03\x04 not numpy"),
                   "fold1/images.npy", "not a readable .npy"),
    "object types": (lambda r: np.save(_npy(r, "fold2", "types"), np.array(["Skin", 1, None, 2],
                                                                           dtype=object),
                                       allow_pickle=True),
                     "fold2/types.npy", "not a readable .npy"),
    "images in 0..1": (lambda r: _rewrite(_npy(r, "fold1", "images"), lambda a: a / 255.0),
                       "fold1/images.npy", "0..1"),
}


@pytest.mark.parametrize("case", sorted(CORRUPT))
def test_corrupt_input_is_one_line_data_error(case, tmp_path):
    src = write_fixture(tmp_path / "src", size=64)
    damage, where, what = CORRUPT[case]
    damage(src)
    ds = make(tmp_path / "data")
    with pytest.raises(DataError) as err:
        ds.prepare(src)
    msg = str(err.value)
    assert "\n" not in msg
    assert where in msg, msg
    assert what in msg, msg
    assert not ds.is_prepared() and not ds.root.exists()
    assert not [p for p in ds.root.parent.iterdir() if p.name.startswith(".data")]


def test_corrupt_zip_member_is_data_error(tmp_path):
    src = write_fixture(tmp_path / "src", size=64)
    zips = zip_fixture(src, tmp_path / "zips")
    # rewrite fold_2.zip with a truncated masks.npy member
    path = zips / "fold_2.zip"
    with zipfile.ZipFile(path) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    name = next(n for n in members if n.endswith("masks/fold2/masks.npy"))
    members[name] = members[name][:-5000]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for n, data in members.items():
            zf.writestr(n, data)
    with pytest.raises(DataError, match=r"fold_2\.zip:Fold 2/masks/fold2/masks\.npy: .*truncated"):
        make(tmp_path / "data").prepare(zips)
    (zips / "fold_2.zip").write_bytes(b"this is not a zip")
    with pytest.raises(DataError, match=r"fold_2\.zip: unreadable zip"):
        make(tmp_path / "data").prepare(zips)


def test_source_must_be_a_folder(tmp_path):
    with pytest.raises(DataError, match="no such folder"):
        make(tmp_path / "d").prepare(tmp_path / "missing")
    (tmp_path / "f.zip").write_bytes(b"x")
    with pytest.raises(DataError, match="got a file"):
        make(tmp_path / "d").prepare(tmp_path / "f.zip")


def test_interrupted_prepare_leaves_nothing_finished(tmp_path, monkeypatch):
    src = write_fixture(tmp_path / "src", size=64)
    ds, real = make(tmp_path / "store" / "data"), _pannuke_io.convert_masks
    assert_interrupted_prepare_leaves_nothing(ds, src, monkeypatch, _pannuke_io, "convert_masks", 2)
    monkeypatch.setattr(_pannuke_io, "convert_masks", real)
    ds.prepare(src)
    assert ds.verify() == []


def test_verify_reports_damage_and_count_mismatch(source, tmp_path):
    ds = make(tmp_path / "data")
    ds.prepare(write_fixture(tmp_path / "src", size=64))
    assert ds.verify() == []
    ready = json.loads((ds.root / "READY").read_text())
    ready["complete_release"] = True  # now the official counts apply
    (ds.root / "READY").write_text(json.dumps(ready))
    problems = ds.verify()
    assert len(problems) == 3 and all("official" in p for p in problems)
    ready["complete_release"] = False
    (ds.root / "READY").write_text(json.dumps(ready))
    cls = np.load(ds.root / "classes.npy", mmap_mode="r+")
    cls[0, 0, 0] = 9
    cls.flush()
    del cls
    assert any("checksum" in p for p in ds.verify())


# --- metric on the prepared ground truth ------------------------------------------------------

def test_ground_truth_scores_pq_one(prepared):
    arr = prepared.load()
    cls, inst = np.asarray(arr.classes), np.asarray(arr.instances)
    res = evaluate_segmentation(cls, cls, inst, arr.tissues, CLASS_NAMES)
    one = 1 / (1 + 1e-6)  # get_fast_pq's SQ = sum IoU / (TP + 1e-6)
    thesis = res["thesis"]
    assert thesis["mpq"] == pytest.approx(one, abs=1e-12)
    assert thesis["bpq"] == pytest.approx(1, abs=1e-6)  # TP/(TP + 1e-6) with TP segments
    per_image = thesis["per_image"]["mpq"]
    void = arr.ids.index("fold1/00003")  # all-neoplastic patch: the class covers the image -> NaN
    empty = arr.ids.index("fold3/00004")  # no nuclei -> NaN
    assert math.isnan(per_image[void]) and math.isnan(per_image[empty])
    # instance variant: exactly the GT instances except where an id spans two components
    inst_pi = res["instance"]["per_image"]["mpq"]
    split = arr.ids.index("fold3/00002")
    for i, v in enumerate(inst_pi):
        if i in (void, empty):
            assert math.isnan(v)
        elif i != split:  # perfect: SQ = n / (n + 1e-6) for a class with n nuclei
            n_per_class = [len(np.unique(inst[i][cls[i] == c])) for c in np.unique(cls[i]) if c]
            perfect = np.mean([n / (n + 1e-6) for n in n_per_class])
            assert v == pytest.approx(perfect, abs=1e-12), arr.ids[i]
    # fold3/00002, class epithelial: GT id 3512 = two equal discs of area a each; prediction = two
    # components, each IoU a/(2a) = 0.5, not > 0.5 -> TP 0, FP 2, FN 1 -> PQ 0; the other two
    # classes (neoplastic 17, connective 17) are perfect. mPQ = (1 + 1 + 0) / 3.
    assert inst_pi[split] == pytest.approx(2 * one / 3, abs=1e-12)


def test_known_perturbation_gives_hand_computed_pq(prepared):
    arr = prepared.load()
    i = arr.ids.index("fold3/00000")  # one neoplastic disc and one inflammatory disc
    gt = np.asarray(arr.classes[i:i + 1]).copy()
    inst = np.asarray(arr.instances[i:i + 1])
    neo = gt[0] == 1
    area = int(neo.sum())
    rows = np.nonzero(neo.any(1))[0]
    one = 1 / (1 + 1e-6)

    def keep_top(frac):
        """Predict only the rows of the neoplastic disc above a cut (the rest background)."""
        kept = neo & (np.arange(gt.shape[1])[:, None] < rows[int(len(rows) * frac)])
        pred = gt.copy()
        pred[0][neo & ~kept] = 0
        return pred, int(kept.sum())

    pred, kept = keep_top(2 / 3)
    iou = kept / area  # the kept part lies inside the GT disc: IoU = |kept| / |disc|
    assert 0.5 < iou < 0.9
    res = evaluate_segmentation(pred, gt, inst, ["Breast"], CLASS_NAMES)
    expected = (iou / (1 + 1e-6) + one) / 2  # neoplastic IoU/(1+1e-6), inflammatory perfect
    assert res["thesis"]["mpq"] == pytest.approx(expected, abs=1e-12)
    assert res["instance"]["mpq"] == pytest.approx(expected, abs=1e-12)
    pred, kept = keep_top(1 / 4)  # IoU below 0.5: the class scores 0
    assert kept / area < 0.5
    res = evaluate_segmentation(pred, gt, inst, ["Breast"], CLASS_NAMES)
    assert res["thesis"]["mpq"] == pytest.approx(one / 2, abs=1e-12)
    assert res["instance"]["mpq"] == pytest.approx(one / 2, abs=1e-12)


# --- end to end -----------------------------------------------------------------------------------

SPEC = """
name: pannuke_tiny
reference: pannuke
dataset: pannuke
methods: [scratch]
protocols: [frozen]
folds: [fold3]
seeds: [0]
finetune:
  epochs: 1
  batch_size: 4
  eval_batch_size: 4
  image_size: 32
  device: cpu
  augment: false
  normalization: thesis_quirk
metric:
  name: mpq
  pq_variant: thesis
"""


def test_cli_prepare_then_run(tmp_path, torch_home):
    """`harness data prepare` then a one-cell `harness run` on CPU, both through the CLI."""
    from harness.data.base import dataset_root
    from harness.store import ArtifactStore

    # 64 px patches keep the CPU run short
    store = cli_prepare(tmp_path, "pannuke", write_fixture(tmp_path / "src", size=64))
    ds = make(dataset_root(PanNukeDataset, None, ArtifactStore(store)))
    assert ds.is_prepared() and ds.verify() == []
    out = cli_run(tmp_path, SPEC)
    assert len(list((out / "records").glob("*.json"))) == 1
    assert "| scratch |" in (out / "report.md").read_text()
