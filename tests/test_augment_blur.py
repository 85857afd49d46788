"""The fine-tuning blur is albumentations 1.1.0's ``GaussianBlur(blur_limit=(3, 7),
sigma_limit=0)``: kernel ``np.random.randint(3, 8)`` with even values bumped to the next odd
one (3/5/7 with p = 1/5, 2/5, 2/5), and OpenCV's sigma-0 kernel of that size."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision import tv_tensors

from harness.data.augment import (RandomGaussianBlurAlb, blur_kernel_1d, blur_kernel_probs,
                                  draw_blur_kernel, finetune_train_transforms, gaussian_blur_cv2,
                                  sigma_for_kernel)

#: cv2.GaussianBlur(img, (k, k), 0) of two seeded 13x11x3 images (uint8 and float32), written
#: with opencv-python-headless 5.0.0 (numpy.random.default_rng(20261201)); stored so the test
#: needs no OpenCV.
CV2 = Path(__file__).parent / "data" / "cv2_gaussian_blur.npz"


def test_kernel_probabilities_follow_albumentations_draw():
    assert blur_kernel_probs() == {3: 0.2, 5: 0.4, 7: 0.4}
    # the rule itself, for another limit: randint(3, 9 + 1) -> 3, 5, 5, 7, 7, 9, 9
    assert blur_kernel_probs((3, 9)) == pytest.approx({3: 1 / 7, 5: 2 / 7, 7: 2 / 7, 9: 2 / 7})


def test_sigma_from_the_kernel_size():
    assert [sigma_for_kernel(k) for k in (3, 5, 7)] == pytest.approx([0.8, 1.1, 1.4], abs=1e-12)
    # above OpenCV's table: a Gaussian of that sigma
    x = torch.arange(11, dtype=torch.float64) - 5
    w = torch.exp(-x ** 2 / (2 * sigma_for_kernel(11) ** 2))
    assert torch.allclose(blur_kernel_1d(11), w / w.sum())


def test_kernel_frequencies_within_sampling_error():
    torch.manual_seed(0)
    n = 20_000
    blur = RandomGaussianBlurAlb(p=1.0)
    counts = {3: 0, 5: 0, 7: 0}
    for _ in range(n):
        counts[blur.make_params([])["k"]] += 1
    for k, p in blur_kernel_probs().items():
        bound = 3 * math.sqrt(n * p * (1 - p))  # 3-sigma binomial bound
        assert abs(counts[k] - n * p) < bound, (k, counts)
    torch.manual_seed(1)
    applied = sum(RandomGaussianBlurAlb(p=0.5).make_params([])["k"] > 0 for _ in range(n))
    assert abs(applied - n / 2) < 3 * math.sqrt(n / 4)


def test_draws_are_reproducible_from_the_torch_seed():
    torch.manual_seed(5)
    a = [draw_blur_kernel() for _ in range(50)]
    torch.manual_seed(5)
    assert [draw_blur_kernel() for _ in range(50)] == a and set(a) == {3, 5, 7}


@pytest.mark.parametrize("k", [3, 5, 7])
def test_equal_to_opencv(k):
    ref = np.load(CV2)
    u8 = torch.from_numpy(ref["image_u8"]).permute(2, 0, 1)
    ours = gaussian_blur_cv2(u8, k).permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(ours, ref[f"u8_k{k}"])  # bit for bit, rounding included
    f32 = torch.from_numpy(ref["image_f32"]).permute(2, 0, 1)
    ours = gaussian_blur_cv2(f32, k).permute(1, 2, 0).numpy()
    np.testing.assert_allclose(ours, ref[f"f32_k{k}"], rtol=0, atol=1e-6)


def test_blur_touches_the_image_only_and_the_pipeline_uses_it():
    image = tv_tensors.Image(torch.randint(0, 256, (3, 16, 16), dtype=torch.uint8))
    mask = tv_tensors.Mask(torch.randint(0, 4, (16, 16), dtype=torch.uint8))
    torch.manual_seed(0)
    out_i, out_m = RandomGaussianBlurAlb(p=1.0)(image, mask)
    assert torch.equal(out_m, mask) and not torch.equal(out_i, image)
    assert out_i.dtype == torch.uint8 and isinstance(out_i, tv_tensors.Image)
    ops = finetune_train_transforms().transforms
    blurs = [op for op in ops if isinstance(op, RandomGaussianBlurAlb)]
    assert len(blurs) == 1 and blurs[0].p == 0.5 and blurs[0].blur_limit == (3, 7)
    assert not any(isinstance(op, RandomGaussianBlurAlb) for op in finetune_train_transforms(augment=False).transforms)
