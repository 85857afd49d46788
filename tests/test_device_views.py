"""Views made in batches on the device (harness/data/device_views.py) against the per-sample
CPU pipeline (harness/data/views.py): the Table A.1 distributions (two-sample KS tests and
frequency tolerances), the mask as the image's exact nearest warp, colour ops that never touch
masks, per-sample parameters, reproducibility, the kernels against torchvision's, and a
pretraining stage on the device pipeline resuming mid-epoch to the same bits."""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import ks_2samp
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from resume_helpers import resumed_and_fresh
from harness.data.device_views import (DeviceViews, TileDataset, color_jitter_per_sample,
                                       crop_boxes, draw_view_params, gaussian_blur_per_sample,
                                       reference_blur_params, resolve_view_pipeline)
from harness.data.view_color import color_jitter_float
from harness.data.view_config import ViewAugmentConfig
from harness.data.views import RandomResizedCropFast, RandomRot90NonZero

N = 4000  # samples per distribution; KS p-values below 1e-3 fail
FREQ_TOL = 0.025  # a frequency of N = 4000 draws: 4.5 standard deviations at p = 0.5 (sd 0.008)


def cpu_draws(transform, n, size=256):
    image = tv_tensors.Image(torch.zeros(3, size, size, dtype=torch.uint8))
    return [transform.make_params([image]) for _ in range(n)]


def test_crop_box_distribution_matches_the_cpu_pipeline():
    torch.manual_seed(0)
    cpu = RandomResizedCropFast(224, scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3))
    ref = cpu_draws(cpu, N)
    ours = crop_boxes(N, 256, 256, (0.2, 1.0), (3 / 4, 4 / 3))
    area_ref = np.array([p["height"] * p["width"] for p in ref]) / 256 ** 2
    ratio_ref = np.array([p["width"] / p["height"] for p in ref])
    area = (ours[:, 2] * ours[:, 3]).numpy() / 256 ** 2
    ratio = (ours[:, 3] / ours[:, 2]).numpy()
    assert ks_2samp(area, area_ref).pvalue > 1e-3
    assert ks_2samp(ratio, ratio_ref).pvalue > 1e-3
    top_ref = np.array([p["top"] / (256 - p["height"] + 1) for p in ref])
    top = (ours[:, 0] / (256 - ours[:, 2] + 1)).numpy()
    assert ks_2samp(top, top_ref).pvalue > 1e-3
    assert area.min() >= 0.2 - 0.01 and area.max() <= 1.0
    assert (ours[:, 0] + ours[:, 2] <= 256).all() and (ours[:, 1] + ours[:, 3] <= 256).all()


def test_crop_fallback_is_the_central_crop():
    boxes = crop_boxes(8, 64, 200, (0.9, 1.0), (1.0, 1.0))  # no square of 90% area fits
    assert boxes.tolist() == [[0, 68, 64, 64]] * 8


def test_flip_rotation_jitter_grayscale_blur_frequencies_match():
    torch.manual_seed(1)
    cfg = ViewAugmentConfig(blur_p=0.3)
    p = draw_view_params(N, 256, 256, cfg)
    rot = RandomRot90NonZero(p=cfg.rot90_p)
    k_ref = np.array([d["k"] for d in cpu_draws(rot, N)])
    for k in range(4):
        assert abs((p.k == k).float().mean().item() - (k_ref == k).mean()) < FREQ_TOL
    assert abs(p.flip.float().mean().item() - cfg.hflip_p) < FREQ_TOL
    assert abs(p.jitter.float().mean().item() - cfg.jitter_p) < FREQ_TOL
    assert abs(p.gray.float().mean().item() - cfg.grayscale_p) < FREQ_TOL
    assert abs(p.blur.float().mean().item() - cfg.blur_p) < FREQ_TOL
    blur = v2.GaussianBlur(cfg.blur_kernel, sigma=cfg.blur_sigma)
    sigma_ref = [d["sigma"][0] for d in cpu_draws(blur, N)]
    assert ks_2samp(p.sigma.numpy(), sigma_ref).pvalue > 1e-3


def test_jitter_factors_and_order_match_torchvision():
    torch.manual_seed(2)
    cfg = ViewAugmentConfig()
    p = draw_view_params(N, 256, 256, cfg)
    jitter = v2.ColorJitter(*cfg.jitter)
    ref = cpu_draws(jitter, N)
    names = ["brightness_factor", "contrast_factor", "saturation_factor", "hue_factor"]
    for i, name in enumerate(names):
        assert ks_2samp(p.factors[:, i].numpy(), [d[name] for d in ref]).pvalue > 1e-3
    assert p.factors[:, :3].min() >= 0.2 and p.factors[:, :3].max() <= 1.8
    assert p.factors[:, 3].abs().max() <= 0.2
    first_ref = np.array([int(d["fn_idx"][0]) for d in ref])
    for op in range(4):  # every op first in a quarter of the samples, as torchvision's
        assert abs((p.order[:, 0] == op).float().mean().item() - (first_ref == op).mean()) < FREQ_TOL
    assert (p.order.sort(dim=1).values == torch.arange(4)).all()  # permutations


def test_reference_blur_distribution():
    k, sigma = reference_blur_params(N, torch.Generator().manual_seed(3))
    for ks, prob in ((3, 0.2), (5, 0.4), (7, 0.4)):
        assert abs((k == ks).float().mean().item() - prob) < FREQ_TOL
    assert torch.allclose(sigma[k == 3], torch.tensor(0.8)) and torch.allclose(sigma[k == 7], torch.tensor(1.4))


def test_per_sample_blur_equals_torchvision():
    torch.manual_seed(4)
    x = torch.rand(6, 3, 40, 40) * 255
    apply = torch.tensor([True, False, True, True, True, False])
    kernel = torch.tensor([3, 5, 5, 7, 23, 3])
    sigma = torch.tensor([0.8, 1.0, 1.1, 1.4, 1.7, 0.5])
    out = gaussian_blur_per_sample(x, apply, kernel, sigma)
    for i in range(6):
        want = F.gaussian_blur_image(x[i], [int(kernel[i])] * 2, [float(sigma[i])] * 2) if apply[i] else x[i]
        torch.testing.assert_close(out[i], want, atol=1e-3, rtol=1e-4)


def test_per_sample_jitter_equals_the_per_image_kernel():
    torch.manual_seed(5)
    p = draw_view_params(16, 32, 32, ViewAugmentConfig())
    x = torch.rand(16, 3, 32, 32) * 255
    out = color_jitter_per_sample(x.clone(), p)
    for i in range(16):
        f = p.factors[i].tolist()
        want = color_jitter_float(x[i], p.order[i].tolist(), *f, bound=255.0) if p.jitter[i] else x[i]
        torch.testing.assert_close(out[i], want, atol=1e-3, rtol=1e-4)


def position_batch(n=4, size=256):
    """R = column, G = row; the mask holds each pixel's linear index."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    image = torch.stack([xx, yy, torch.full_like(xx, 128)], dim=-1).to(torch.uint8)
    return {"image": image.expand(n, -1, -1, -1).contiguous(),
            "mask": (yy * size + xx).to(torch.int32).expand(n, -1, -1).contiguous()}


def test_mask_is_the_nearest_warp_of_the_image_geometry():
    cfg = ViewAugmentConfig(crop_size=96, jitter_p=0.0, grayscale_p=0.0, mean=(0, 0, 0), std=(1, 1, 1))
    batch = position_batch(16)
    out = DeviceViews(cfg, torch.Generator().manual_seed(6))(batch)
    for v in (1, 2):
        img, mask = out[f"view{v}"] * 255, out[f"mask{v}"]
        rows, cols = mask // 256, mask % 256
        inner = (rows > 0) & (rows < 255) & (cols > 0) & (cols < 255)  # clamped borders aside
        # the image's bin centre c lies in [nearest, nearest + 1): a linear ramp reads c - 0.5
        assert (img[:, 0] - cols)[inner].abs().max() <= 0.5 + 1e-3
        assert (img[:, 1] - rows)[inner].abs().max() <= 0.5 + 1e-3
        assert inner.float().mean() > 0.9


def test_identity_box_flip_and_rotation_are_exact():
    cfg = ViewAugmentConfig(crop_size=32, scale=(1.0, 1.0), ratio=(1.0, 1.0), jitter_p=0.0,
                            grayscale_p=0.0, mean=(0, 0, 0), std=(1, 1, 1))
    torch.manual_seed(7)
    image = torch.randint(0, 256, (8, 32, 32, 3), dtype=torch.uint8)
    mask = torch.randint(0, 5, (8, 32, 32), dtype=torch.uint8)
    views = DeviceViews(cfg, torch.Generator().manual_seed(7))
    out = views({"image": image, "mask": mask})
    p = draw_view_params(8, 32, 32, cfg, torch.Generator().manual_seed(7))
    for i in range(8):
        want_img = image[i].permute(2, 0, 1).float()
        want_mask = mask[i].long()
        if p.flip[i]:
            want_img, want_mask = want_img.flip(-1), want_mask.flip(-1)
        want_img = torch.rot90(want_img, int(p.k[i]), dims=(-2, -1))
        want_mask = torch.rot90(want_mask, int(p.k[i]), dims=(-2, -1))
        torch.testing.assert_close(out["view1"][i] * 255, want_img, atol=1e-3, rtol=0)
        assert torch.equal(out["mask1"][i], want_mask)


def test_colour_ops_never_touch_masks_and_parameters_differ_per_sample():
    torch.manual_seed(8)
    image = torch.randint(0, 256, (1, 64, 64, 3), dtype=torch.uint8).expand(8, -1, -1, -1).contiguous()
    mask = torch.randint(0, 6, (1, 64, 64), dtype=torch.uint8).expand(8, -1, -1).contiguous()
    strong = ViewAugmentConfig(crop_size=48, jitter_p=1.0, grayscale_p=1.0, blur_p=1.0, blur_kernel=5)
    none = ViewAugmentConfig(crop_size=48, jitter_p=0.0, grayscale_p=0.0, blur_p=0.0, blur_kernel=5)
    a = DeviceViews(strong, torch.Generator().manual_seed(9))({"image": image, "mask": mask})
    b = DeviceViews(none, torch.Generator().manual_seed(9))({"image": image, "mask": mask})
    assert torch.equal(a["mask1"], b["mask1"]) and torch.equal(a["mask2"], b["mask2"])
    assert not torch.allclose(a["view1"], b["view1"])
    # one image eight times: every view, and each view pair, differs
    v = a["view1"].flatten(1)
    assert torch.cdist(v, v).add(torch.eye(8) * 1e9).min() > 0
    assert not torch.equal(a["view1"], a["view2"])


def test_views_are_reproducible_under_a_seed():
    image = torch.randint(0, 256, (4, 64, 64, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    cfg = ViewAugmentConfig(crop_size=32)
    torch.manual_seed(10)
    a = DeviceViews(cfg)({"image": image})
    torch.manual_seed(10)
    b = DeviceViews(cfg)({"image": image})
    c = DeviceViews(cfg)({"image": image})
    assert torch.equal(a["view1"], b["view1"]) and torch.equal(a["view2"], b["view2"])
    assert not torch.equal(a["view1"], c["view1"])


def test_tile_dataset_streams_uint8_tiles_through_workers(tmp_path):
    images = np.lib.format.open_memmap(tmp_path / "x.npy", "w+", np.uint8, (6, 16, 16, 3))
    images[:] = np.arange(6)[:, None, None, None]
    images.flush()
    ro = np.load(tmp_path / "x.npy", mmap_mode="r")
    masks = np.arange(6 * 256, dtype=np.uint16).reshape(6, 16, 16)
    data = TileDataset(ro, masks, indices=[1, 3, 5])
    loader = torch.utils.data.DataLoader(data, batch_size=3, num_workers=1)
    batch = next(iter(loader))
    assert batch["image"].dtype == torch.uint8 and batch["image"].shape == (3, 16, 16, 3)
    assert batch["image"][:, 0, 0, 0].tolist() == [1, 3, 5]
    assert torch.equal(batch["mask"].long(), torch.from_numpy(masks[[1, 3, 5]].astype(np.int64)))


def test_auto_pipeline_is_device_on_cuda_only():
    assert resolve_view_pipeline("auto", torch.device("cpu")) == "cpu"
    assert resolve_view_pipeline("auto", torch.device("cuda")) == "device"
    assert resolve_view_pipeline("device", torch.device("cpu")) == "device"


def test_pretraining_on_the_device_pipeline_resumes_mid_epoch_to_the_same_encoder(tmp_path, monkeypatch):
    """view_pipeline: device; killed in epoch 2 after its first batch (3 batches an epoch), the
    stage resumes from the checkpoint (torch RNG state, the views' only random source) and ends
    with exactly the encoder of an uninterrupted run."""
    from test_pretraining import TOY, _runner
    from harness_builtin.methods.simclr import SimCLR

    monkeypatch.setenv("HARNESS_CHECKPOINT_EVERY_S", "0")  # a checkpoint every step
    method = "{simclr: {epochs: 2, batch_size: 5, view_pipeline: device, augment: {crop_size: 32}}}"
    overrides = ["methods=" + method, "folds=[fold1]", "fractions=[1.0]", "protocols=[frozen]"]

    def mid_epoch(saved):
        assert saved["position"] == 4  # epoch 2, batch 1 of 3

    (resumed_meta, resumed), (fresh_meta, fresh) = resumed_and_fresh(
        lambda root: _runner(root, TOY, overrides), tmp_path, monkeypatch, SimCLR, 5, mid_epoch)
    assert resumed_meta["final_loss"] == fresh_meta["final_loss"]
    assert all(torch.equal(resumed[k], fresh[k]) for k in fresh)
