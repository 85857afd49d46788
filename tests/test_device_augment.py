"""Fine-tuning augmentations on the device (``finetune.augment_pipeline: device``): the same
distributions as the CPU pipeline (drawn parameters against the CPU transforms' own draws, and
each op against the CPU transform given the same parameter), the loader's uint8 samples, the
setting's resolution, and a fine-tuning stage trained with it on the CPU (resume with it:
``tests/test_resume_workers.py``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

from harness.data.augment import (RandomFlip, RandomGaussianBlurAlb, RandomGaussianNoise, RandomRot90,
                                  blur_kernel_probs)
from harness.data.device_augment import (AugmentParams, DeviceAugment, UInt8Samples,
                                         draw_augment_params, resolve_augment_pipeline)
from harness.errors import SpecError
from test_finetune_batches import _arrays, _ctx, encoder  # noqa: F401 - a fixture

N = 20_000
# Binomial fractions over N draws: standard deviation at most sqrt(0.25 / N) = 0.0035, so a
# margin of 0.02 is more than 5 standard deviations.
MARGIN = 0.02


def _fractions(values: list, support) -> dict:
    return {v: sum(1 for x in values if x == v) / len(values) for v in support}


def test_drawn_parameters_follow_the_cpu_transforms_distributions():
    torch.manual_seed(0)
    params = draw_augment_params(N)
    torch.manual_seed(1)
    cpu_flip = [RandomFlip(0.5).make_params([])["mode"] for _ in range(N)]
    cpu_k = [RandomRot90(0.5).make_params([])["k"] for _ in range(N)]
    cpu_kernel = [RandomGaussianBlurAlb(p=0.5).make_params([])["k"] for _ in range(N)]
    cpu_sigma = [RandomGaussianNoise((0.0, 25.0), 0.5).make_params([])["sigma"] for _ in range(N)]

    dev_flip = _fractions([None if m < 0 else m for m in params.flip.tolist()], (None, 0, 1, 2))
    expected = {None: 0.5, 0: 0.5 / 3, 1: 0.5 / 3, 2: 0.5 / 3}
    for mode, p in expected.items():
        assert abs(dev_flip[mode] - p) < MARGIN and abs(_fractions(cpu_flip, (mode,))[mode] - p) < MARGIN
    dev_k, cpu_k = _fractions(params.k.tolist(), range(4)), _fractions(cpu_k, range(4))
    for k, p in {0: 0.625, 1: 0.125, 2: 0.125, 3: 0.125}.items():
        assert abs(dev_k[k] - p) < MARGIN and abs(cpu_k[k] - p) < MARGIN
    kernels = {0: 0.5, **{k: 0.5 * p for k, p in blur_kernel_probs().items()}}  # 3: .1, 5: .2, 7: .2
    dev_b, cpu_b = _fractions(params.kernel.tolist(), kernels), _fractions(cpu_kernel, kernels)
    for k, p in kernels.items():
        assert abs(dev_b[k] - p) < MARGIN and abs(cpu_b[k] - p) < MARGIN

    # noise: applied half the time; the variance (0-255 scale) uniform on [0, 25]
    dev_var = (params.sigma[params.sigma > 0] * 255) ** 2
    cpu_var = (torch.tensor([s for s in cpu_sigma if s > 0], dtype=torch.float64) * 255) ** 2
    for var, applied in ((dev_var, len(dev_var) / N), (cpu_var, len(cpu_var) / N)):
        assert abs(applied - 0.5) < MARGIN
        assert var.min() >= 0 and var.max() <= 25
        # uniform: mean 12.5 (sd of the mean 7.2 / sqrt(10^4) = 0.07), each fifth holds 1/5
        assert abs(float(var.mean()) - 12.5) < 0.5
        fifths = torch.histc(var, bins=5, min=0, max=25) / len(var)
        assert torch.all((fifths - 0.2).abs() < MARGIN)


def _cpu_reference(image: torch.Tensor, mask: torch.Tensor, flip: int, k: int, kernel: int):
    """The CPU pipeline's ops (the transforms themselves) with the given parameters, no noise."""
    img, msk = tv_tensors.Image(image), tv_tensors.Mask(mask)
    img, msk = (RandomFlip().transform(t, {"mode": None if flip < 0 else flip}) for t in (img, msk))
    img, msk = (RandomRot90().transform(t, {"k": k}) for t in (img, msk))
    img = RandomGaussianBlurAlb().transform(img, {"k": kernel})
    return F.to_dtype(img.as_subclass(torch.Tensor), torch.float32, scale=True), msk.as_subclass(torch.Tensor)


def test_each_op_equals_the_cpu_transform_with_the_same_parameters():
    torch.manual_seed(0)
    b = 24
    images = torch.randint(0, 256, (b, 16, 16, 3), dtype=torch.uint8)
    masks = torch.randint(0, 4, (b, 16, 16), dtype=torch.uint8)
    combos = [(f, k, kern) for f in (-1, 0, 1, 2) for k in (0, 1, 2, 3) for kern in (0, 3, 5, 7)]
    picks = torch.randperm(len(combos))[:b]
    flip, k, kernel = (torch.tensor([combos[i][j] for i in picks]) for j in range(3))
    params = AugmentParams(flip, k, kernel, torch.zeros(b, dtype=torch.float64), 0)
    got_x, got_y = DeviceAugment().apply(images.permute(0, 3, 1, 2), masks.long(), params)
    for i in range(b):
        ref_x, ref_y = _cpu_reference(images[i].permute(2, 0, 1), masks[i].long(),
                                      int(flip[i]), int(k[i]), int(kernel[i]))
        assert torch.equal(got_x[i], ref_x) and torch.equal(got_y[i], ref_y)


def test_noise_has_the_drawn_standard_deviation_and_touches_only_its_images():
    torch.manual_seed(0)
    images = torch.full((4, 64, 64, 3), 128, dtype=torch.uint8)
    sigma = torch.tensor([0.0, 1.0, 3.0, 5.0], dtype=torch.float64) / 255
    params = AugmentParams(torch.full((4,), -1), torch.zeros(4, dtype=torch.long),
                           torch.zeros(4, dtype=torch.long), sigma, 7)
    x, _ = DeviceAugment().apply(images.permute(0, 3, 1, 2), torch.zeros(4, 64, 64, dtype=torch.long), params)
    residual = x - 128 / 255
    assert torch.equal(residual[0], torch.zeros_like(residual[0]))
    for i in (1, 2, 3):  # 12,288 values each: the sample sd is within 2% (3.5 standard errors)
        assert float(residual[i].std()) == pytest.approx(float(sigma[i]), rel=0.02)
    again, _ = DeviceAugment().apply(images.permute(0, 3, 1, 2), torch.zeros(4, 64, 64, dtype=torch.long),
                                     params)
    assert torch.equal(x, again)  # the noise is a function of the drawn seed


def test_uint8_samples_crop_and_keep_the_stored_dtypes():
    arrays = _arrays(3, size=64)
    torch.manual_seed(0)
    image, mask = UInt8Samples(arrays, ["s1"], crop=32)[0]
    assert image.dtype == torch.uint8 and image.shape == (32, 32, 3) and mask.shape == (32, 32)
    full = torch.from_numpy(arrays.images[1])
    hits = [(t, left) for t in range(33) for left in range(33)
            if torch.equal(full[t:t + 32, left:left + 32], image)]
    assert hits and torch.equal(torch.from_numpy(arrays.classes[1][hits[0][0]:hits[0][0] + 32,
                                                                   hits[0][1]:hits[0][1] + 32]), mask)
    tops = {int(UInt8Samples(arrays, ["s0"], crop=32).__getitem__(0)[0][0, 0, 0]) for _ in range(40)}
    assert len(tops) > 5  # positions vary


def test_augment_pipeline_resolution():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_augment_pipeline("auto", cpu) == "cpu"
    assert resolve_augment_pipeline("auto", cuda) == "device"
    assert resolve_augment_pipeline("auto", cuda, "hover") == "cpu"
    assert resolve_augment_pipeline("device", cpu) == "device"
    with pytest.raises(SpecError, match="semantic head only"):
        resolve_augment_pipeline("device", cpu, "hover")


def test_finetuning_trains_with_device_augmentations_on_the_cpu(tmp_path, encoder):
    from harness.engine.finetune import finetune
    from harness.protocols.full import Full
    from harness.spec.models import FinetuneSettings

    settings = FinetuneSettings(epochs=4, batch_size=4, amp=False, lr=3e-3, augment_pipeline="device",
                                image_size=32)
    arrays = _arrays(8, size=48)
    arrays.images[...] = np.where(arrays.classes[..., None] == 1, 200, 40).astype(np.uint8)  # learnable
    ctx = _ctx(tmp_path, "ft", {"encoder": encoder})
    summary = finetune(ctx, arrays=arrays, train_ids=[f"s{i}" for i in range(8)], num_classes=3,
                       settings=settings, protocol=Full(), seed=0)
    assert summary["augment_pipeline"] == "device" and summary["steps"] == 8
    assert summary["final_loss"] < summary["first_loss"]
    assert (ctx.out / "model.pt").exists()


def test_the_shifted_sum_blur_equals_opencvs_on_larger_images():
    from harness.data.augment import gaussian_blur_cv2
    from harness.data.device_augment import blur_uint8

    torch.manual_seed(0)
    x = torch.randint(0, 256, (3, 3, 40, 57), dtype=torch.uint8)
    for k in (3, 5, 7):
        assert torch.equal(blur_uint8(x, k), gaussian_blur_cv2(x, k))


def test_the_device_pipeline_with_the_hover_head_is_refused_when_the_spec_loads():
    from pydantic import ValidationError

    from harness.spec.models import FinetuneSettings

    with pytest.raises(ValidationError, match="semantic head only"):
        FinetuneSettings(head="hover", augment_pipeline="device")
    assert FinetuneSettings(head="hover").augment_pipeline == "auto"
