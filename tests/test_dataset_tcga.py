"""The ``tcga`` unlabeled-tiles dataset: a folder of pre-cut tiles (sizes, colour modes, corrupt
files, ids, subsets) and whole-slide images tiled with the automatic tissue mask (pyramidal TIFFs
written with tifffile as generic-tiff pyramids in the main IFD chain; needs OpenSlide, skipped
without it), the numpy tissue-mask helpers, verification, atomicity and the command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from harness.errors import DataError, SpecError
from harness_builtin.datasets import _tcga_tiles, _wsi, tcga
from harness_builtin.datasets.tcga import TCGADataset

T = 64  # tile side in the tiles fixtures


def need_openslide():
    """Skip unless OpenSlide (the `wsi` extra) imports: missing, or present without its
    library (any ImportError or OSError)."""
    try:
        import openslide
    except (ImportError, OSError) as exc:
        pytest.skip(f"OpenSlide not available ({exc}); pip install 'pathbench-harness[wsi]'")
    return openslide


def make(root, **kw) -> TCGADataset:
    return TCGADataset(TCGADataset.Config(**kw), Path(root))


def one_line_error(fn, *args) -> str:
    with pytest.raises(DataError) as info:
        fn(*args)
    msg = str(info.value)
    assert "\n" not in msg, msg
    assert info.value.exit_code == 3
    return msg


def smooth(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    f = rng.uniform(5, 20, 3)
    return np.stack([(127 + 100 * np.sin(xx / f[c] + yy / (f[c] + 3))) for c in range(3)],
                    -1).astype(np.uint8)


# --- identity / config -------------------------------------------------------------------------

def test_class_attributes_and_config():
    ds = make("/nonexistent")
    assert ds.name == "tcga" and not ds.labeled and ds.has_unlabeled
    assert ds.class_names == () and ds.metric_family == "none"
    assert ds.folds(ds.config) == [] and ds.expected_group_sizes(ds.config) is None
    assert "portal.gdc.cancer.gov" in ds.source_hint and "[wsi]" in ds.source_hint
    cfg = TCGADataset.Config()
    assert (cfg.mode, cfg.tile_size, cfg.resize_policy, cfg.corrupt_policy) == ("auto", 512, "skip", "error")
    assert (cfg.target_mpp, cfg.mpp_tolerance, cfg.min_tissue) == (0.25, 0.05, 0.5)
    assert (cfg.mask_downsample, cfg.saturation_threshold, cfg.max_tiles, cfg.seed) == (64.0, None, None, 0)
    for bad in (dict(mode="wsi"), dict(resize_policy="resize"), dict(min_tissue=1.5),
                dict(max_tiles=0), dict(tile_size=8), dict(unknown=1), dict(target_mpp=0)):
        with pytest.raises(ValidationError):
            TCGADataset.Config(**bad)
    assert tcga.harness_register_datasets() == [TCGADataset]
    with pytest.raises(DataError, match="unlabeled"):
        ds.load()
    with pytest.raises(DataError, match="not prepared"):
        ds.unlabeled_images()


# --- numpy helpers -----------------------------------------------------------------------------

def test_saturation_otsu_and_mask():
    import colorsys

    rgb = np.array([[[255, 255, 255], [230, 150, 190], [0, 0, 0], [40, 10, 200]]], np.uint8)
    expected = [round(255 * colorsys.rgb_to_hsv(*(v / 255 for v in px))[1]) for px in rgb[0]]
    assert _wsi.hsv_saturation(rgb)[0].tolist() == expected
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(10, 3, 5000), rng.normal(90, 5, 3000)]).clip(0, 255).astype(np.uint8)
    t = _wsi.otsu_threshold(values)
    assert (values[:5000] <= t).all() and (values[5000:] > t).all()  # separates the modes
    assert t == values[:5000].max()  # the first maximiser, as OpenCV
    assert _wsi.otsu_threshold(np.full(10, 7, np.uint8)) == 0
    img = np.full((60, 80, 3), 245, np.uint8)
    img[10:40, 20:60] = (220, 140, 180)
    img[5, 5] = (255, 0, 0)  # an isolated saturated pixel: removed by the 7x7 median blur
    mask, thr = _wsi.tissue_mask(img)
    inside = np.zeros(mask.shape, bool)
    inside[10:40, 20:60] = True
    assert mask[13:37, 23:57].all() and not mask[~inside].any()  # the blur rounds the corners
    assert 30 * 40 - 30 < mask.sum() <= 30 * 40 and not mask[5, 5]
    fixed, thr2 = _wsi.tissue_mask(img, threshold=200)
    assert thr2 == 200 and not fixed.any()


def test_tile_grid_and_fractions():
    xs, ys = _wsi.tile_grid(1000, 530, 256)
    assert xs.tolist() == [0, 256, 512] and ys.tolist() == [0, 256]  # partial tiles dropped
    assert _wsi.tile_grid(100, 530, 256)[0].size == 0
    mask = np.zeros((8, 16), bool)  # level-0 pixels per mask pixel: 64
    mask[0:4, 0:2] = True
    frac = _wsi.tissue_fractions(mask, 64.0, 64.0, np.array([0, 64, 128]), np.array([0, 256]), 256)
    # tile (0, 0) covers mask [0:4, 0:4]: 8 of 16 pixels; tile (64, 0) covers [0:4, 1:5]: 4/16
    assert np.allclose(frac, [[0.5, 0.25, 0.0], [0.0, 0.0, 0.0]])
    # non-integer scale: area-weighted partial pixels
    frac = _wsi.tissue_fractions(np.array([[True, False]]), 1.5, 1.0, np.array([0]), np.array([0]), 1)
    assert np.isclose(frac[0, 0], 1.0)
    frac = _wsi.tissue_fractions(np.array([[True, False]]), 2.0, 1.0, np.array([1]), np.array([0]), 2)
    assert np.isclose(frac[0, 0], 0.5)
    rgba = np.zeros((1, 2, 4), np.uint8)
    rgba[0, 0] = (10, 20, 30, 255)
    assert _wsi.composite_on_white(rgba).tolist() == [[[10, 20, 30], [255, 255, 255]]]


# --- tiles folder ------------------------------------------------------------------------------

def write_tiles(folder: Path, corrupt: bool = True, wrong: bool = True) -> dict[str, np.ndarray]:
    """A few tiles in nested folders; returns the RGB each tile should decode to."""
    (folder / "a").mkdir(parents=True)
    (folder / "b" / "c").mkdir(parents=True)
    (folder / ".cache").mkdir()
    expected = {}
    t0 = smooth(T, T, 0)
    Image.fromarray(t0).save(folder / "a" / "t0.png")
    expected["a/t0"] = t0
    Image.fromarray(smooth(T, T, 1)).save(folder / "a" / "t1.JPG", quality=90)
    expected["a/t1"] = np.asarray(Image.open(folder / "a" / "t1.JPG").convert("RGB"))
    rgba = np.dstack([smooth(T, T, 2), np.full((T, T), 255, np.uint8)])
    rgba[:, : T // 2, 3] = 0  # left half transparent -> white
    Image.fromarray(rgba, "RGBA").save(folder / "b" / "rgba.png")
    exp = rgba[..., :3].copy()
    exp[:, : T // 2] = 255
    expected["b/rgba"] = exp
    gray = smooth(T, T, 3)[..., 0]
    Image.fromarray(gray, "L").save(folder / "b" / "c" / "gray.png")
    expected["b/c/gray"] = np.repeat(gray[..., None], 3, -1)
    big = smooth(T + 32, T + 32, 4)
    Image.fromarray(big).save(folder / "big.png")  # 96x96: center-croppable
    expected["big"] = big[16:16 + T, 16:16 + T]
    if wrong:
        Image.fromarray(smooth(48, 80, 5)).save(folder / "wrong.png")  # 80x48: too small to crop
    if corrupt:
        (folder / "b" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    (folder / "notes.txt").write_text("not an image")
    (folder / ".cache" / "x.png").write_bytes(b"hidden, ignored")
    (folder / "._t0.png").write_bytes(b"macOS resource fork, ignored")
    return expected


def test_tiles_prepare_verify_load(tmp_path):
    src = tmp_path / "tiles"
    expected = write_tiles(src, corrupt=False)
    ds = make(tmp_path / "data", tile_size=T)
    ds.prepare(src)
    assert ds.verify() == []
    tiles = ds.unlabeled_images()
    assert isinstance(tiles, np.memmap) and not tiles.flags.writeable
    assert tiles.shape == (4, T, T, 3) and tiles.dtype == np.uint8
    ids = ds.tile_ids()
    assert ids == ["a/t0", "a/t1", "b/c/gray", "b/rgba"]  # sorted by relative path; skip policy
    for i, sid in enumerate(ids):
        np.testing.assert_array_equal(tiles[i], expected[sid], err_msg=sid)
    assert [e["file"] for e in ds.tile_index()] == ["a/t0.png", "a/t1.JPG", "b/c/gray.png", "b/rgba.png"]
    report = ds.prepare_report()
    assert report["mode"] == "tiles" and report["tiles"] == 4 and report["ignored_files"] == 1
    assert report["complete_release"] is False
    assert {s["file"]: s["reason"] for s in report["skipped"]} == {
        "big.png": f"size 96x96 != {T}x{T}", "wrong.png": f"size 80x48 != {T}x{T}"}

    # center_crop keeps the larger tile (cropped), still skips the smaller one
    crop = make(tmp_path / "crop", tile_size=T, resize_policy="center_crop")
    crop.prepare(src)
    assert crop.tile_ids() == ["a/t0", "a/t1", "b/c/gray", "b/rgba", "big"]
    np.testing.assert_array_equal(crop.unlabeled_images()[4], expected["big"])
    assert crop.tile_index()[4] == {"id": "big", "file": "big.png", "crop": [16, 16]}
    assert [s["file"] for s in crop.prepare_report()["skipped"]] == ["wrong.png"]

    # a seeded subset: deterministic, in source order
    subsets = []
    for k in range(2):
        sub = make(tmp_path / f"sub{k}", tile_size=T, max_tiles=2, seed=3)
        sub.prepare(src)
        subsets.append(sub.tile_ids())
        assert sub.verify() == []
    assert subsets[0] == subsets[1] and len(subsets[0]) == 2
    assert subsets[0] == sorted(subsets[0]) and set(subsets[0]) <= set(ids)


def test_tiles_policies_and_corrupt_input(tmp_path):
    src = tmp_path / "tiles"
    expected = write_tiles(src)
    corrupt = src / "b" / "corrupt.png"
    msg = one_line_error(make(tmp_path / "d1", tile_size=T).prepare, src)
    assert str(corrupt) in msg and "unreadable image" in msg
    assert not (tmp_path / "d1").exists()

    msg = one_line_error(make(tmp_path / "d2", tile_size=T, resize_policy="error",
                              corrupt_policy="skip").prepare, src)
    assert str(src / "big.png") in msg and "96x96" in msg and "resize_policy" in msg

    ds = make(tmp_path / "d3", tile_size=T, corrupt_policy="skip")
    ds.prepare(src)
    assert ds.tile_ids() == ["a/t0", "a/t1", "b/c/gray", "b/rgba"]
    skipped = {s["file"]: s["reason"] for s in ds.prepare_report()["skipped"]}
    assert set(skipped) == {"b/corrupt.png", "big.png", "wrong.png"}
    assert skipped["b/corrupt.png"].startswith("unreadable image")

    # a PNG whose header reads but whose pixel data is truncated: found while decoding
    data = (src / "a" / "t0.png").read_bytes()
    (src / "a" / "t0.png").write_bytes(data[: len(data) // 2])
    corrupt.unlink()
    msg = one_line_error(make(tmp_path / "d4", tile_size=T).prepare, src)
    assert str(src / "a" / "t0.png") in msg
    ds = make(tmp_path / "d5", tile_size=T, corrupt_policy="skip")
    ds.prepare(src)  # the tile count shrinks after decoding: the array is compacted
    assert ds.verify() == []
    assert ds.tile_ids() == ["a/t1", "b/c/gray", "b/rgba"]
    np.testing.assert_array_equal(ds.unlabeled_images()[1], expected["b/c/gray"])
    assert not list((tmp_path / "d5").glob("*.staging*"))

    # two files with the same id
    Image.fromarray(expected["a/t1"]).save(src / "a" / "t1.png")
    msg = one_line_error(make(tmp_path / "d6", tile_size=T).prepare, src)
    assert "same tile id 'a/t1'" in msg
    # nothing usable / no source
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no tiles found" in one_line_error(make(tmp_path / "d7").prepare, empty)
    assert "not found" in one_line_error(make(tmp_path / "d7").prepare, tmp_path / "missing")
    assert "no usable" in one_line_error(make(tmp_path / "d7", tile_size=32).prepare, src / "b")


def test_interrupted_prepare_and_verify_damage(tmp_path, monkeypatch):
    src = tmp_path / "tiles"
    write_tiles(src, corrupt=False, wrong=False)
    calls = {"n": 0}
    real = _tcga_tiles.to_rgb

    def flaky(im):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(im)

    monkeypatch.setattr(_tcga_tiles, "to_rgb", flaky)
    root = tmp_path / "data"
    with pytest.raises(KeyboardInterrupt):
        make(root, tile_size=T).prepare(src)
    assert not root.exists() and os.listdir(tmp_path) == ["tiles"]  # no temp folder left
    monkeypatch.setattr(_tcga_tiles, "to_rgb", real)

    ds = make(root, tile_size=T)
    ds.prepare(src)
    assert ds.verify() == []
    assert any("different config" in p for p in make(root, tile_size=T, seed=1).verify())
    meta = json.loads((root / "tiles.json").read_text())
    ready = json.loads((root / "READY").read_text())
    (root / "READY").write_text(json.dumps({**ready, "tiles": 7}))
    problems = ds.verify()
    assert any("7 recorded" in p for p in problems), problems
    (root / "READY").write_text(json.dumps(ready))
    arr = np.load(root / "tiles.npy", mmap_mode="r+")
    arr[0, 0, 0, 0] ^= 1
    arr.flush()
    del arr
    assert any("checksum" in p for p in ds.verify())
    assert meta["ids"] == ds.tile_ids()


# --- whole-slide images ------------------------------------------------------------------------

SLIDE_W, SLIDE_H, SLIDE_T = 2048, 1536, 256


def tissue_geometry() -> np.ndarray:
    """The drawn tissue at level 0: a rectangle whose edge tiles hold 3/4 or 1/4 (or 3/16) of
    tissue, and a disc whose tiles hold <= 0.2 or >= 0.8 of tissue (no tile near 1/2)."""
    yy, xx = np.mgrid[0:SLIDE_H, 0:SLIDE_W]
    tissue = (xx >= 64) & (xx < 1216) & (yy >= 192) & (yy < 1088)
    tissue |= (xx - 1560) ** 2 + (yy - 1028) ** 2 < 280 ** 2
    return tissue


def slide_image(tissue: np.ndarray) -> np.ndarray:
    """Pink, textured tissue with a few dark nuclei-like spots on a white background."""
    yy, xx = np.mgrid[0:SLIDE_H, 0:SLIDE_W]
    tex = (np.sin(xx / 23.0) * np.cos(yy / 17.0) * 20).astype(np.int16)
    pink = np.stack([225 + tex // 2, 140 + tex, 185 + tex // 2], -1)
    spots = (np.sin(xx / 9.0) * np.sin(yy / 11.0)) > 0.95
    pink[spots] = (110, 60, 150)
    img = np.full((SLIDE_H, SLIDE_W, 3), 243, np.uint8)
    img[tissue] = pink.clip(0, 255).astype(np.uint8)[tissue]
    return img


def write_slide(path: Path, img: np.ndarray, mpp: float | None, aperio: bool = False) -> None:
    """A tiled pyramidal TIFF (§5.4): 2x mean-downsampled levels until the short side <= 256,
    each in the main IFD chain, zlib, 256x256 tiles; generic (resolution tags) or Aperio-like."""
    import tifffile

    levels = [img]
    while min(levels[-1].shape[:2]) > 256:
        a = levels[-1]
        h, w = a.shape[0] // 2 * 2, a.shape[1] // 2 * 2
        levels.append(a[:h, :w].reshape(h // 2, 2, w // 2, 2, 3).mean((1, 3)).round().astype(np.uint8))
    with tifffile.TiffWriter(path) as tw:
        for i, level in enumerate(levels):
            kw: dict = dict(tile=(256, 256), photometric="rgb", compression="zlib",
                            subfiletype=0 if i == 0 else 1)
            if mpp is not None:
                m = mpp * 2 ** i
                kw.update(resolution=(1e4 / m, 1e4 / m), resolutionunit="CENTIMETER")
            if aperio:
                kw["metadata"] = None
                if i == 0:
                    h, w = level.shape[:2]
                    kw["description"] = (f"Aperio Image Library v12.0.0\r\n{w}x{h} [0,0 {w}x{h}] "
                                         f"(256x256) JPEG/RGB Q=70|AppMag = {round(10 / mpp)}|"
                                         f"MPP = {mpp:.4f}")
            tw.write(level, **kw)


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    need_openslide()
    pytest.importorskip("tifffile")
    folder = tmp_path_factory.mktemp("slides")
    tissue = tissue_geometry()
    img = slide_image(tissue)
    (folder / "site").mkdir()
    write_slide(folder / "site" / "slide40x.tif", img, 0.25)
    write_slide(folder / "slide20x.svs", img, 0.5, aperio=True)
    write_slide(folder / "nompp.tif", img[:512, :512], None)
    return folder, tissue


@pytest.fixture(scope="module")
def prepared_slides(slides, tmp_path_factory):
    folder, _ = slides
    ds = make(tmp_path_factory.mktemp("wsi") / "data", tile_size=SLIDE_T, mask_downsample=8)
    ds.prepare(folder)
    return ds


def test_slides_kept_tiles_follow_tissue_fraction(slides, prepared_slides):
    _, tissue = slides
    ds = prepared_slides
    assert ds.verify() == []
    drawn = tissue.reshape(SLIDE_H // SLIDE_T, SLIDE_T, SLIDE_W // SLIDE_T, SLIDE_T).mean((1, 3))
    assert not ((drawn > 0.3) & (drawn < 0.7)).any()  # the geometry keeps clear of the threshold
    expected = {(c * SLIDE_T, r * SLIDE_T) for r, c in zip(*np.nonzero(drawn >= 0.5))}
    index = ds.tile_index()
    assert {(e["x"], e["y"]) for e in index} == expected and len(index) == len(expected) == 19
    assert all(e["file"] == "site/slide40x.tif" and e["level"] == 0 and e["size"] == SLIDE_T
               for e in index)
    assert index[0]["id"] == "site/slide40x/0_256"  # row-major from the top-left
    report = ds.prepare_report()
    assert report["mode"] == "slides" and report["tiles"] == 19 and report["candidates"] == 19
    (info,) = report["slides"]
    assert info["file"] == "site/slide40x.tif" and info["grid"] == [8, 6] and info["kept"] == 19
    assert info["vendor"] == "generic-tiff" and info["mpp"] == [0.25, 0.25]
    assert abs(info["tissue_fraction"] - tissue.mean()) < 0.02
    skipped = {s["file"]: s for s in report["skipped"]}
    assert set(skipped) == {"slide20x.svs", "nompp.tif"}
    assert skipped["slide20x.svs"]["vendor"] == "aperio"
    assert skipped["slide20x.svs"]["objective_power"] == "20"
    assert "mpp 0.5 at level 0 (~20x)" in skipped["slide20x.svs"]["reason"]
    assert "no mpp" in skipped["nompp.tif"]["reason"]


def test_slides_tiles_equal_read_region(slides, prepared_slides):
    import openslide

    folder, _ = slides
    tiles = prepared_slides.unlabeled_images()
    assert tiles.shape == (19, SLIDE_T, SLIDE_T, 3) and tiles.dtype == np.uint8
    with openslide.OpenSlide(str(folder / "site" / "slide40x.tif")) as slide:
        for i, e in enumerate(prepared_slides.tile_index()):
            region = np.asarray(slide.read_region((e["x"], e["y"]), 0, (SLIDE_T, SLIDE_T)).convert("RGB"))
            np.testing.assert_array_equal(tiles[i], region)
        # the mask itself covers about the drawn fraction
        plan = _wsi.plan_slide(slide, 0, SLIDE_T, mask_downsample=8)
    assert abs(plan.mask.mean() - tissue_geometry().mean()) < 0.02
    assert plan.mask.shape == (SLIDE_H // 8, SLIDE_W // 8)


def test_slides_single_file_subset_and_report(slides, tmp_path, capsys):
    folder, _ = slides
    ds = make(tmp_path / "one", tile_size=SLIDE_T, max_tiles=5, seed=1)
    ds.prepare(folder / "site" / "slide40x.tif")  # a single slide, default mask level (thumbnail)
    assert ds.verify() == [] and len(ds.tile_ids()) == 5
    again = make(tmp_path / "two", tile_size=SLIDE_T, max_tiles=5, seed=1)
    again.prepare(folder / "site" / "slide40x.tif")
    assert again.tile_ids() == ds.tile_ids()
    assert ds.prepare_report()["candidates"] == 19

    msg = one_line_error(make(tmp_path / "none", tile_size=SLIDE_T).prepare, folder / "slide20x.svs")
    assert "no tile" in msg and "slide20x.svs" in msg and "~20x" in msg
    err = capsys.readouterr().err
    assert "skipped slide20x.svs: mpp 0.5" in err
    # a generous tolerance accepts the 20x slide
    ds20 = make(tmp_path / "tol", tile_size=SLIDE_T, mpp_tolerance=0.3, mode="slides")
    ds20.prepare(folder / "slide20x.svs")
    assert ds20.prepare_report()["slides"][0]["vendor"] == "aperio"


def test_auto_mode_single_level_tiff_tiles_are_tiles(tmp_path):
    need_openslide()
    tifffile = pytest.importorskip("tifffile")
    src = tmp_path / "tiles"
    src.mkdir()
    tile = smooth(T, T, 9)
    tifffile.imwrite(src / "x.tif", tile, tile=(16, 16), photometric="rgb")  # tiled, one level
    tifffile.imwrite(src / "y.tiff", tile, photometric="rgb")  # striped
    ds = make(tmp_path / "data", tile_size=T)
    ds.prepare(src)
    assert ds.prepare_report()["mode"] == "tiles" and ds.tile_ids() == ["x", "y"]
    np.testing.assert_array_equal(ds.unlabeled_images()[0], tile)


def test_slides_without_openslide_name_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "openslide", None)  # import openslide -> ImportError
    src = tmp_path / "wsi"
    src.mkdir()
    (src / "a.svs").write_bytes(b"II*\x00 not really a slide")
    hint = "pip install 'pathbench-harness[wsi]'"
    assert hint in one_line_error(make(tmp_path / "d").prepare, src)
    assert hint in one_line_error(make(tmp_path / "d", mode="slides").prepare, tmp_path)
    # a TIFF far larger than a tile, with no OpenSlide, is not silently read as a tile
    (src / "a.svs").unlink()
    Image.fromarray(np.zeros((64, 600, 3), np.uint8)).save(src / "big.tif")
    msg = one_line_error(make(tmp_path / "d", tile_size=64).prepare, src)
    assert "big.tif" in msg and hint in msg


# --- specs and command line --------------------------------------------------------------------

def test_spec_rejects_tcga_as_finetuning_dataset(tmp_path):
    from harness.plugins import build_registry
    from harness.spec import load_spec

    # tcga is added explicitly: a stale *.egg-info in the working directory can hide the
    # installed entry points from importlib.metadata (the CLI test checks the entry point)
    registry = build_registry(extra_plugins=[tcga])

    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\ndataset: tcga\nmethods: [scratch]\n")
    with pytest.raises(SpecError) as info:
        load_spec(bad, registry=registry)
    (problem,) = info.value.problems
    assert problem.startswith(f"{bad}:2: dataset:") and "unlabeled" in problem
    good = tmp_path / "good.yaml"
    good.write_text("name: good\ndataset: synthetic\nunlabeled: {name: tcga, tile_size: 256}\n"
                    "methods: [scratch]\n")
    rspec = load_spec(good, registry=registry)
    assert rspec.unlabeled_config.tile_size == 256


def test_cli_prepare_verify_and_validate(tmp_path):
    src = tmp_path / "tiles"
    src.mkdir()
    for i in range(3):
        Image.fromarray(np.full((512, 512, 3), 60 * i, np.uint8)).save(src / f"t{i}.png")
    Image.fromarray(np.zeros((256, 256, 3), np.uint8)).save(src / "small.png")
    store = tmp_path / "store"
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\ndataset: tcga\nmethods: [scratch]\n")
    env = {**os.environ, "HARNESS_STORE": str(store), "COLUMNS": "250", "PYTHONWARNINGS": "ignore"}
    code = ("import sys; from harness.cli.app import main\n"
            "for args in ([\"data\", \"prepare\", \"tcga\", \"--source\", sys.argv[1]],"
            " [\"data\", \"verify\", \"tcga\"], [\"validate\", sys.argv[2]]):\n"
            "    sys.argv = [\"harness\", *args]\n"
            "    try:\n        main()\n    except SystemExit as e:\n"
            "        print(f'EXIT {args[0]} {e.code}', flush=True)\n")
    proc = subprocess.run([sys.executable, "-c", code, str(src), str(bad)], capture_output=True,
                          text=True, env=env, timeout=300, cwd=tmp_path)
    out = proc.stdout
    assert "tcga: prepared in" in out and "EXIT data 0" in out, proc.stderr
    assert "tcga: ok" in out and out.count("EXIT data 0") == 2, proc.stderr
    assert "EXIT validate 2" in out, out + proc.stderr
    assert "skipped small.png: size 256x256 != 512x512" in proc.stderr
    assert "'tcga' is unlabeled" in proc.stderr and "Traceback" not in proc.stderr


def test_prepared_tiles_feed_a_pretraining_run(tmp_path):
    """prepare -> verify -> a short `harness run` that pretrains on the prepared tiles."""
    from harness.plugins import build_registry
    from harness.runner import Runner
    from harness.spec import load_spec
    from harness.store import ArtifactStore
    from harness.data.base import dataset_root

    write_tiles(tmp_path / "tiles", corrupt=False, wrong=False)
    store = ArtifactStore(tmp_path / "store")
    config = TCGADataset.Config(tile_size=T, resize_policy="center_crop")
    ds = TCGADataset(config, root=dataset_root(TCGADataset, config, store))
    ds.prepare(tmp_path / "tiles")
    assert ds.verify() == []
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"""
name: tcga_pretrain
dataset: {{name: synthetic, image_size: 32, images_per_fold: 4, unlabeled_images: 0}}
unlabeled: {{name: tcga, tile_size: {T}, resize_policy: center_crop}}
methods:
  simclr: {{epochs: 1, batch_size: 4, augment: {{crop_size: 32}}}}
protocols: [frozen]
folds: [fold1]
finetune: {{epochs: 1, batch_size: 4}}
""")
    registry = build_registry()
    runner = Runner(load_spec(spec, registry=registry), registry, store, tmp_path / "out", quiet=True)
    plan, _, _ = runner.plan()
    result = runner.run(plan)
    pre = result.records[0]["upstream"]["pretrain"]
    assert pre["images"] == len(ds.unlabeled_images()) == 5 and pre["steps"] == 1
