"""The pretraining two-view pipeline (harness/data/views.py): Table A.1 defaults, shapes and
normalisation, image/mask geometric alignment, colour ops that never touch masks, independent
and reproducible views, lazy read-only memmap access, crop distribution, and the fast colour
kernels against torchvision's."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from harness.data.view_color import (ColorAugment, FastColorJitter, adjust_hue_fast,
                                     color_jitter_float)
from harness.data.view_config import ViewAugmentConfig
from harness.data.views import (RandomResizedCropFast, RandomRot90NonZero, TwoViewDataset,
                                build_view_transform)

NO_COLOUR = dict(jitter_p=0.0, grayscale_p=0.0, blur_p=0.0)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def random_arrays(n=4, size=256, classes=6, seed=0):
    """Random RGB tiles and class maps (``classes`` <= 256 values)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    masks = rng.integers(0, classes, (n, size, size), dtype=np.uint8)
    return images, masks


def position_arrays(size=256):
    """Colour encodes the position (R = column, G = row); the mask is a function of the block
    that position lies in, so alignment can be checked after any crop/flip/rotation."""
    yy, xx = np.mgrid[0:size, 0:size]
    image = np.stack([xx, yy, np.full_like(xx, 128)], axis=-1).astype(np.uint8)[None]
    mask = ((xx // 32) + 8 * (yy // 32)).astype(np.uint8)[None]
    return image, mask


# --- config ----------------------------------------------------------------------------------

def test_config_defaults_are_table_a1():
    cfg = ViewAugmentConfig()
    assert cfg.crop_size == 224 and cfg.scale == (0.2, 1.0)
    assert cfg.ratio == pytest.approx((3 / 4, 4 / 3))
    assert cfg.hflip_p == 0.5 and cfg.rot90_p == 0.5
    assert cfg.jitter == (0.8, 0.8, 0.8, 0.2) and cfg.jitter_p == 0.8
    assert cfg.grayscale_p == 0.2 and cfg.blur_p == 0.0 and cfg.blur_kernel == 23
    assert cfg.mean == (0.5, 0.5, 0.5) and cfg.std == (0.5, 0.5, 0.5)
    assert cfg.interpolation == "bicubic" and cfg.mask_interpolation == "nearest-exact"
    assert ViewAugmentConfig(jitter=(0.4, 0.4, 0.4, 0.1)).jitter == (0.4, 0.4, 0.4, 0.1)
    crop = build_view_transform(ViewAugmentConfig(mask_interpolation="nearest")).transforms[0]
    assert crop.mask_interpolation == v2.InterpolationMode.NEAREST
    assert crop.interpolation == v2.InterpolationMode.BICUBIC and crop.antialias


@pytest.mark.parametrize("bad", [
    {"unknown": 1}, {"scale": (0.0, 1.0)}, {"scale": (0.8, 0.2)}, {"ratio": (2.0, 1.0)},
    {"hflip_p": 1.5}, {"jitter": (0.8, 0.8, 0.8, 0.6)}, {"blur_kernel": 22}, {"std": (0.5, 0, 1)},
])
def test_config_rejects_invalid(bad):
    with pytest.raises(ValidationError):
        ViewAugmentConfig(**bad)


# --- outputs ---------------------------------------------------------------------------------

def test_shapes_dtypes_and_normalisation_range():
    images, masks = random_arrays()
    ds = TwoViewDataset(images, masks)
    assert len(ds) == 4
    torch.manual_seed(0)
    for i in range(len(ds)):
        out = ds[i]
        assert set(out) == {"view1", "view2", "mask1", "mask2"}
        for k in ("view1", "view2"):
            v = out[k]
            assert v.shape == (3, 224, 224) and v.dtype == torch.float32 and v.is_contiguous()
            assert type(v) is torch.Tensor
            assert v.min() >= -1.0 - 1e-5 and v.max() <= 1.0 + 1e-5
        for k in ("mask1", "mask2"):
            m = out[k]
            assert m.shape == (224, 224) and m.dtype == torch.int64 and type(m) is torch.Tensor
            assert set(m.unique().tolist()) <= set(np.unique(masks[i]).tolist())
    no_masks = TwoViewDataset(images)[0]
    assert set(no_masks) == {"view1", "view2"}


def test_normalisation_without_colour_ops_is_exact():
    images = np.full((1, 64, 64, 3), (0, 255, 51), np.uint8)
    cfg = ViewAugmentConfig(crop_size=32, **NO_COLOUR)
    v = TwoViewDataset(images, config=cfg)[0]["view1"]
    expected = torch.tensor([-1.0, 1.0, 51 / 127.5 - 1]).view(3, 1, 1).expand(3, 32, 32)
    torch.testing.assert_close(v, expected, atol=1e-5, rtol=0)


def test_dataloader_collates_batches():
    images, masks = random_arrays(n=4, size=64)
    ds = TwoViewDataset(images, masks, ViewAugmentConfig(crop_size=32))
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert batch["view1"].shape == (4, 3, 32, 32) and batch["mask2"].shape == (4, 32, 32)


# --- geometry --------------------------------------------------------------------------------

def test_mask_follows_the_geometry_of_its_view():
    image, mask = position_arrays()
    ds = TwoViewDataset(image, mask, ViewAugmentConfig(**NO_COLOUR))
    orientations = set()
    for seed in range(12):
        torch.manual_seed(seed)
        out = ds[0]
        for v, m in ((out["view1"], out["mask1"]), (out["view2"], out["mask2"])):
            pix = (v * 0.5 + 0.5) * 255.0  # back to the 0..255 encoding
            # (x, y): where in the source this output pixel's (bicubic) sample lies; the mask
            # must hold the class of the source pixel containing that point
            x, y = pix[0], pix[1]
            expected = ((x + 0.5).floor() // 32) + 8 * ((y + 0.5).floor() // 32)
            # the outermost output pixels are left out: there the antialiasing filter is cut
            # at the crop border, which biases the recovered position of the image sample
            agree = (expected.long() == m)[2:-2, 2:-2].float().mean().item()
            # uint8 rounding of the image hides whether a sample at exactly half a pixel lies
            # left or right of a block edge (a whole row at some scales, ~0.5%); torch's legacy
            # "nearest", half a pixel off, agrees on only ~97.5%
            assert agree > 0.99, (seed, agree)
            assert torch.allclose(pix[2], torch.full_like(pix[2], 128.0), atol=0.01)
            # which way the column encoding increases: right/left/down/up = flip/rot90 state
            dx = (x[:, -1] - x[:, 0]).mean().item()
            dy = (x[-1, :] - x[0, :]).mean().item()
            orientations.add((round(np.sign(dx)), round(np.sign(dy))) if abs(dx) > abs(dy)
                             else (0, round(np.sign(dy))))
    assert len(orientations) >= 3  # flips and rotations were exercised


def test_fast_crop_equals_torchvision_resized_crop():
    images, masks = random_arrays(n=1, size=128, classes=255)
    img = tv_tensors.Image(torch.from_numpy(images[0]).permute(2, 0, 1))
    msk = tv_tensors.Mask(torch.from_numpy(masks[0]))
    for interp, mask_interp in (("bicubic", "nearest-exact"), ("bilinear", "nearest")):
        mode, mask_mode = v2.InterpolationMode(interp), v2.InterpolationMode(mask_interp)
        for out_size in (48, 200):  # down- and upsampling
            crop = RandomResizedCropFast(out_size, scale=(0.1, 1.0), interpolation=mode,
                                         mask_interpolation=mask_mode)
            for seed in range(10):
                torch.manual_seed(seed)
                p = crop.make_params([img])
                out_img, out_msk = crop.transform(img, p), crop.transform(msk, p)
                ref_img = F.resized_crop(img, **p, size=[out_size] * 2, interpolation=mode,
                                         antialias=True)
                ref_msk = F.resize(F.crop(msk, p["top"], p["left"], p["height"], p["width"]),
                                   [out_size] * 2, interpolation=mask_mode)
                assert torch.equal(out_img, ref_img) and torch.equal(out_msk, ref_msk)
                assert isinstance(out_img, tv_tensors.Image)
                assert isinstance(out_msk, tv_tensors.Mask) and out_msk.dtype == torch.uint8
    with pytest.raises(ValueError):
        RandomResizedCropFast(48, mask_interpolation=v2.InterpolationMode.BILINEAR)


def test_crop_params_respect_scale_and_ratio():
    img = tv_tensors.Image(torch.zeros(3, 512, 512, dtype=torch.uint8))
    ours = RandomResizedCropFast(224, scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3))
    ref = v2.RandomResizedCrop(224, scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3))
    torch.manual_seed(0)
    draws = [ours.make_params([img]) for _ in range(3000)]
    ref_draws = [ref.make_params([img]) for _ in range(3000)]
    area = np.array([p["height"] * p["width"] / 512 ** 2 for p in draws])
    ratio = np.array([p["width"] / p["height"] for p in draws])
    # rounding of h and w to integers allows a little slack at the bounds
    assert area.min() >= 0.2 - 0.01 and area.max() <= 1.0
    assert ratio.min() >= 3 / 4 - 0.01 and ratio.max() <= 4 / 3 + 0.01
    for p in draws:
        assert 0 <= p["top"] <= 512 - p["height"] and 0 <= p["left"] <= 512 - p["width"]
    # same distribution as torchvision's: compare means/spreads and positions
    ref_area = np.array([p["height"] * p["width"] / 512 ** 2 for p in ref_draws])
    ref_ratio = np.array([p["width"] / p["height"] for p in ref_draws])
    assert abs(area.mean() - ref_area.mean()) < 0.02 and abs(area.std() - ref_area.std()) < 0.02
    assert abs(np.log(ratio).mean() - np.log(ref_ratio).mean()) < 0.02
    assert abs(area.mean() - 0.547) < 0.03  # E[area] under the 10-attempt rejection scheme
    free = np.array([p["top"] / max(512 - p["height"], 1) for p in draws if p["height"] < 400])
    assert abs(free.mean() - 0.5) < 0.03  # uniform position


def test_crop_fallback_matches_torchvision():
    img = tv_tensors.Image(torch.zeros(3, 10, 1000, dtype=torch.uint8))  # no attempt can fit
    ours = RandomResizedCropFast(8, scale=(0.2, 1.0)).make_params([img])
    ref = v2.RandomResizedCrop(8, scale=(0.2, 1.0)).make_params([img])
    assert ours == ref == {"top": 0, "left": (1000 - 13) // 2, "height": 10, "width": 13}


def test_rot90_is_90_180_or_270_with_probability_p():
    rot = RandomRot90NonZero(p=0.5)
    torch.manual_seed(0)
    ks = np.array([rot.make_params([])["k"] for _ in range(4000)])
    assert abs((ks == 0).mean() - 0.5) < 0.03
    counts = np.bincount(ks[ks > 0], minlength=4)[1:]
    assert counts.min() > 0.28 * (ks > 0).sum()
    x = torch.arange(6).view(1, 2, 3)
    assert torch.equal(rot.transform(x, {"k": 1}), torch.rot90(x, 1, dims=(-2, -1)))


# --- colour ------------------------------------------------------------------------------------

def test_colour_ops_never_touch_masks():
    images, masks = random_arrays(n=1, size=64)
    img = tv_tensors.Image(torch.from_numpy(images[0]).permute(2, 0, 1))
    msk = tv_tensors.Mask(torch.from_numpy(masks[0]))
    colour = ColorAugment(jitter_p=1.0, grayscale_p=1.0, blur_p=1.0, blur_kernel=5)
    for seed in range(5):
        torch.manual_seed(seed)
        out_img, out_msk = colour(img, msk)
        assert out_msk is msk
        assert not torch.equal(out_img, img.float())
    jitter = FastColorJitter(0.8, 0.8, 0.8, 0.2)
    _, out_msk = jitter(F.to_dtype(img, torch.float32, scale=True), msk)
    assert torch.equal(out_msk, msk)
    # in the pipeline: the colour transform is last, so with the same seed the masks of the
    # full pipeline equal those of its geometric part alone
    cfg = ViewAugmentConfig(crop_size=32, jitter_p=1.0, grayscale_p=0.5, blur_p=0.5, blur_kernel=5)
    full = build_view_transform(cfg)
    geometric = v2.Compose(full.transforms[:-1])
    assert isinstance(full.transforms[-1], ColorAugment)
    for seed in range(5):
        torch.manual_seed(seed)
        _, m_full = full(img, msk)
        torch.manual_seed(seed)
        _, m_geo = geometric(img, msk)
        assert torch.equal(m_full, m_geo)


def test_two_views_differ_and_are_reproducible():
    images, masks = random_arrays(n=2, size=128)
    ds = TwoViewDataset(images, masks, ViewAugmentConfig(crop_size=64))
    torch.manual_seed(123)
    a = ds[1]
    torch.manual_seed(123)
    b = ds[1]
    for k in a:
        assert torch.equal(a[k], b[k])
    assert not torch.equal(a["view1"], a["view2"])
    torch.manual_seed(124)
    c = ds[1]
    assert not torch.equal(a["view1"], c["view1"])


def test_hue_fast_matches_torchvision():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 40, 40)
    x[:, :, :4] = x[:, :1, :4]  # grey pixels
    x[:, 0, 4:8] = x[:, 1, 4:8]  # ties r == g
    x[:, 1, 8:12] = x[:, 2, 8:12]  # ties g == b
    x[:, 0, 12:16] = x[:, 2, 12:16]  # ties r == b
    x[:, :, 16:18] = 0.0
    x[:, :, 18:20] = 1.0
    x[:, 2, 20:24] = 0.0  # saturated colours
    x[:, 0, 20:24] = 1.0
    x8 = (x * 255).round() / 255  # the values a uint8 image takes
    for img in (x, x8):
        for hue in (-0.5, -0.37, -0.2, -0.05, 0.0, 0.01, 0.1, 0.2, 1 / 6, 1 / 3, 0.5):
            ref = F.adjust_hue(img, hue)
            torch.testing.assert_close(adjust_hue_fast(img, hue), ref, atol=1e-5, rtol=0)
            torch.testing.assert_close(adjust_hue_fast(img[0], hue), ref[0], atol=1e-5, rtol=0)
            # scale invariant: the pipeline works on 0..255 floats
            torch.testing.assert_close(adjust_hue_fast(img * 255, hue) / 255, ref, atol=1e-5,
                                       rtol=0)
    with pytest.raises(ValueError):
        adjust_hue_fast(x, 0.6)


def test_fast_colour_jitter_matches_torchvision():
    torch.manual_seed(1)
    x = torch.rand(3, 48, 48)
    ref_t, fast_t = v2.ColorJitter(0.8, 0.8, 0.8, 0.2), FastColorJitter(0.8, 0.8, 0.8, 0.2)
    for seed in range(12):
        torch.manual_seed(seed)
        ref = ref_t(x)
        torch.manual_seed(seed)
        torch.testing.assert_close(fast_t(x), ref, atol=2e-5, rtol=0)
    # every order, at the 0..255 scale as well
    for order in ([0, 1, 2, 3], [3, 2, 1, 0], [2, 0, 3, 1]):
        ref = x
        for fn in order:
            ref = [lambda t: F.adjust_brightness(t, 1.7), lambda t: F.adjust_contrast(t, 0.4),
                   lambda t: F.adjust_saturation(t, 1.6), lambda t: F.adjust_hue(t, -0.15)][fn](ref)
        out = color_jitter_float(x * 255, order, 1.7, 0.4, 1.6, -0.15, bound=255.0) / 255
        torch.testing.assert_close(out, ref, atol=2e-5, rtol=0)
    assert torch.equal(color_jitter_float(x, [0, 1, 2, 3], None, None, None, None), x)


@pytest.mark.parametrize("cfg", [
    ViewAugmentConfig(crop_size=48),
    ViewAugmentConfig(crop_size=48, jitter=(0.4, 0.4, 0.4, 0.1)),  # SimSiam
    ViewAugmentConfig(crop_size=48, jitter_p=1.0, grayscale_p=0.5, blur_p=0.5, blur_kernel=7),
    ViewAugmentConfig(crop_size=48, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
])
def test_fused_pipeline_equals_plain_torchvision_composition(cfg):
    """``ColorAugment`` draws the same random numbers as ToDtype + RandomApply(ColorJitter) +
    RandomGrayscale + RandomApply(GaussianBlur) + Normalize, so the views agree per seed."""
    images, masks = random_arrays(n=1, size=96)
    img = tv_tensors.Image(torch.from_numpy(images[0]).permute(2, 0, 1))
    msk = tv_tensors.Mask(torch.from_numpy(masks[0]))
    fast, plain = build_view_transform(cfg, fast_color=True), build_view_transform(cfg, False)
    for seed in range(8):
        torch.manual_seed(seed)
        a, am = fast(img, msk)
        torch.manual_seed(seed)
        b, bm = plain(img, msk)
        torch.testing.assert_close(a.as_subclass(torch.Tensor), b.as_subclass(torch.Tensor),
                                   atol=1e-4, rtol=0)
        assert torch.equal(am, bm)


# --- data access -----------------------------------------------------------------------------

class Recorder:
    """An array stand-in that records which samples are read and refuses whole-array reads."""

    def __init__(self, arr):
        self.arr, self.reads = arr, []
        self.shape, self.dtype = arr.shape, arr.dtype

    def __len__(self):
        return len(self.arr)

    def __getitem__(self, key):
        self.reads.append(key)
        return self.arr[key]

    def __array__(self, *args, **kwargs):
        raise AssertionError("the whole array was converted")


def test_reads_only_the_requested_sample():
    images, masks = random_arrays(n=6, size=64)
    rec_i, rec_m = Recorder(images), Recorder(masks)
    ds = TwoViewDataset(rec_i, rec_m, ViewAugmentConfig(crop_size=32), indices=[4, 1])
    assert rec_i.reads == [] and rec_m.reads == []
    ds[0]
    assert rec_i.reads == [4] and rec_m.reads == [4]
    ds[1]
    assert rec_i.reads == [4, 1] and rec_m.reads == [4, 1]
    with pytest.raises(IndexError):
        TwoViewDataset(images, indices=[6])


def test_read_only_memmap_input(tmp_path):
    images, masks = random_arrays(n=3, size=64)
    np.save(tmp_path / "images.npy", images)
    np.save(tmp_path / "masks.npy", masks)
    mm_i = np.load(tmp_path / "images.npy", mmap_mode="r")
    mm_m = np.load(tmp_path / "masks.npy", mmap_mode="r")
    ds = TwoViewDataset(mm_i, mm_m, ViewAugmentConfig(crop_size=32, jitter_p=1.0))
    assert ds.images is mm_i  # kept as the map, not loaded
    for i in range(3):
        out = ds[i]
        assert out["view1"].shape == (3, 32, 32)
    assert not mm_i.flags.writeable and isinstance(mm_i, np.memmap)
    np.testing.assert_array_equal(mm_i, images)  # untouched
    np.testing.assert_array_equal(mm_m, masks)
    # a crop as large as the output is still a copy, never a view into the map
    same = TwoViewDataset(mm_i, mm_m, ViewAugmentConfig(crop_size=64, scale=(1.0, 1.0),
                                                         ratio=(1.0, 1.0), **NO_COLOUR))
    out = same[0]
    base = mm_i.ctypes.data
    for t in out.values():
        ptr = t.untyped_storage().data_ptr()
        assert not base <= ptr < base + mm_i.nbytes


def test_rejects_bad_inputs():
    images, masks = random_arrays(n=2, size=32)
    with pytest.raises(ValueError):
        TwoViewDataset(images[..., 0])
    with pytest.raises(ValueError):
        TwoViewDataset(images.astype(np.float32))
    with pytest.raises(ValueError):
        TwoViewDataset(images, masks[:, :16])
    with pytest.raises(ValueError):
        TwoViewDataset(images, masks.astype(np.float32))


def test_pickles_a_memmap_as_a_file_reference(tmp_path):
    import pickle

    images, masks = random_arrays(n=3, size=64)
    np.save(tmp_path / "images.npy", images)
    np.save(tmp_path / "masks.npy", masks)
    ds = TwoViewDataset(np.load(tmp_path / "images.npy", mmap_mode="r"),
                        np.load(tmp_path / "masks.npy", mmap_mode="r"),
                        ViewAugmentConfig(crop_size=32), indices=[2, 0])
    blob = pickle.dumps(ds)
    assert len(blob) < images.nbytes // 4  # the data did not travel
    clone = pickle.loads(blob)
    assert isinstance(clone.images, np.memmap) and not clone.images.flags.writeable
    np.testing.assert_array_equal(clone.images, images)
    np.testing.assert_array_equal(clone.masks, masks)
    torch.manual_seed(0)
    a = ds[1]
    torch.manual_seed(0)
    b = clone[1]
    assert all(torch.equal(a[k], b[k]) for k in a)
    # an in-memory array is pickled as it is
    plain = TwoViewDataset(images, config=ViewAugmentConfig(crop_size=32))
    plain = pickle.loads(pickle.dumps(plain))
    np.testing.assert_array_equal(plain.images, images)
