"""Fine-tuning augmentations made in batches on the training device (``finetune.augment_pipeline:
device``).

The loader only reads uint8 images and class maps (:class:`UInt8Samples`: the training crop,
if any, is sliced out of the memory map, nothing is converted); :class:`DeviceAugment` then
applies the thesis A.1 pipeline of :func:`harness.data.augment.finetune_train_transforms` to
the whole batch where the model runs, per sample and from the same distributions: flip
(horizontal, vertical or both, p = 0.5), rot90 (k uniform in {0, 1, 2, 3}, p = 0.5), Gaussian
blur on uint8 (p = 0.5, kernels 3/5/7 with probabilities 1/5, 2/5, 2/5, OpenCV's kernels:
:func:`blur_uint8`), scaling to [0, 1], Gaussian noise (p = 0.5,
variance uniform in [0, 25] on the 0-255 scale), in that order; geometric ops on image and
mask alike.

The per-sample parameters (a few numbers) are drawn on the host from torch's CPU generator in
the training process, which the loop seeds per epoch and rank and its checkpoint restores, so a
resumed run continues exactly; the noise, the only full-size draw, comes from a generator on
the training device seeded by one host draw per batch (no device RNG state is involved). The
draws differ from the CPU pipeline's (which draws in the loader, per image), so results differ
from ``cpu``'s for the same stage key; the distributions are equal (tested,
``tests/test_device_augment.py``). Speed: ``benchmarks/test_finetune_augment_speed.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torchvision.transforms.v2 import functional as F

from harness.data.augment import BLUR_LIMIT, blur_kernel_1d
from harness.data.base import LabeledArrays
from harness.errors import SpecError

__all__ = ["resolve_augment_pipeline", "UInt8Samples", "AugmentParams", "draw_augment_params",
           "blur_uint8", "DeviceAugment"]

#: Gaussian noise variance range (0-255 scale) of the thesis A.1 pipeline.
NOISE_VAR = (0.0, 25.0)


def resolve_augment_pipeline(setting: str, device: torch.device, head: str = "semantic") -> str:
    """``auto``: ``device`` on CUDA for the semantic head, else ``cpu`` (the CPU pipeline keeps
    earlier results; HoVer's targets are made from the augmented instance map in the loader).
    ``device`` with the hover head is a one-line SpecError."""
    if setting == "auto":
        return "device" if device.type == "cuda" and head == "semantic" else "cpu"
    if setting == "device" and head != "semantic":
        raise SpecError(f"finetune.augment_pipeline: device supports the semantic head only "
                        f"(head {head!r} makes its targets from the augmented instance map in the "
                        f"loader); use augment_pipeline: cpu or auto")
    return setting


class UInt8Samples(torch.utils.data.Dataset):
    """``(image (H, W, 3) uint8, class map (H, W) as stored)`` of the given sample ids, cropped
    to ``crop`` x ``crop`` at a uniform position (torch's RNG, as ``v2.RandomCrop``) when set."""

    def __init__(self, arrays: LabeledArrays, ids: Sequence[str], crop: int | None = None):
        index = arrays.index_of()
        missing = [sid for sid in ids if sid not in index]
        if missing:
            raise KeyError(f"unknown sample ids: {missing[:3]}")
        self.arrays, self.crop = arrays, crop
        self.rows = np.array([index[sid] for sid in ids], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        row = int(self.rows[i])
        image, mask = self.arrays.images[row], self.arrays.classes[row]
        if self.crop is not None:
            h, w = image.shape[:2]
            if h < self.crop or w < self.crop:
                raise ValueError(f"crop {self.crop} is larger than the {h}x{w} image")
            top = int(torch.randint(0, h - self.crop + 1, size=(1,)))
            left = int(torch.randint(0, w - self.crop + 1, size=(1,)))
            image = image[top:top + self.crop, left:left + self.crop]
            mask = mask[top:top + self.crop, left:left + self.crop]
        return torch.from_numpy(np.array(image)), torch.from_numpy(np.array(mask))


@dataclass
class AugmentParams:
    """Per-sample parameters of a batch (CPU tensors)."""

    flip: torch.Tensor    # (B,) int64: -1 none, 0 horizontal, 1 vertical, 2 both
    k: torch.Tensor       # (B,) int64 in {0, 1, 2, 3}: rot90 turns
    kernel: torch.Tensor  # (B,) int64: 0 (no blur) or an odd blur kernel size
    sigma: torch.Tensor   # (B,) float64: noise standard deviation on the [0, 1] scale (0: none)
    noise_seed: int       # seeds the batch's noise generator on the device


def draw_augment_params(n: int, p: float = 0.5, blur_limit: tuple[int, int] = BLUR_LIMIT,
                        generator: torch.Generator | None = None) -> AugmentParams:
    """Parameters of ``n`` samples from the distributions of the CPU pipeline's transforms
    (:class:`~harness.data.augment.RandomFlip`, ``RandomRot90``, ``RandomGaussianBlurAlb`` and
    ``RandomGaussianNoise``, each applied with probability ``p``)."""
    applied = torch.rand(n, 4, generator=generator) < p
    flip = torch.where(applied[:, 0], torch.randint(0, 3, (n,), generator=generator), -1)
    k = torch.where(applied[:, 1], torch.randint(0, 4, (n,), generator=generator), 0)
    lo, hi = blur_limit
    drawn = torch.randint(lo, hi + 1, (n,), generator=generator)
    drawn = torch.where((drawn != 0) & (drawn % 2 != 1), (drawn + 1) % (hi + 1), drawn)
    kernel = torch.where(applied[:, 2], drawn, 0)
    var = torch.empty(n, dtype=torch.float64).uniform_(*NOISE_VAR, generator=generator)
    sigma = torch.where(applied[:, 3], var.sqrt() / 255.0, 0.0)
    seed = int(torch.randint(0, 2**62, (), generator=generator))
    return AugmentParams(flip, k, kernel, sigma, seed)


def blur_uint8(x: torch.Tensor, k: int) -> torch.Tensor:
    """:func:`~harness.data.augment.gaussian_blur_cv2` of uint8 ``(..., H, W)`` images (OpenCV's
    ``GaussianBlur`` with sigma 0), as weighted sums of shifted copies: elementwise float32 ops,
    which CUDA never runs in TF32 (its convolutions may), and whose every partial sum is exact
    (the tabled weights are multiples of 1/64), so the result equals the convolution's."""
    w = blur_kernel_1d(k).tolist()
    pad, (h, width) = k // 2, x.shape[-2:]
    shape = x.shape
    y = torch.nn.functional.pad(x.reshape((-1, 1) + shape[-2:]).float(), (pad, pad, pad, pad), mode="reflect")
    y = sum(w[i] * y[..., i:i + width] for i in range(k))
    y = sum(w[i] * y[..., i:i + h, :] for i in range(k))
    return torch.floor(y + 0.5).clamp_(0, 255).to(torch.uint8).reshape(shape)


def _apply(x: torch.Tensor, where: torch.Tensor, op: Any) -> torch.Tensor:
    """``op`` on the samples of ``x`` selected by the host mask ``where`` (no device sync)."""
    if not bool(where.any()):
        return x
    idx = where.nonzero().flatten().to(x.device, non_blocking=True)
    return x.index_copy(0, idx, op(x.index_select(0, idx)))


class DeviceAugment:
    """The fine-tuning augmentations of a uint8 batch on its device: ``(images (B, H, W, 3)
    uint8, masks (B, H, W))`` in, ``(images (B, 3, H, W) float32 in [0, 1], masks (B, H, W)
    int64)`` out. ``augment=False``: the conversion only (``finetune.augment: false``)."""

    def __init__(self, augment: bool = True, p: float = 0.5):
        self.augment, self.p = augment, p

    def __call__(self, images: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = images.permute(0, 3, 1, 2)
        y = masks.long()
        if not self.augment:
            return F.to_dtype(x, torch.float32, scale=True), y
        params = draw_augment_params(len(x), self.p)
        return self.apply(x, y, params)

    def apply(self, x: torch.Tensor, y: torch.Tensor, params: AugmentParams
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """``params`` on ``x`` (uint8 ``(B, 3, H, W)``) and ``y`` (``(B, H, W)``)."""
        for mode, dims in ((0, (-1,)), (1, (-2,)), (2, (-2, -1))):
            sel = params.flip == mode
            x, y = (_apply(t, sel, lambda s, d=dims: s.flip(d)) for t in (x, y))
        if x.shape[-1] != x.shape[-2] and bool((params.k % 2 == 1).any()):
            raise ValueError(f"rot90 needs square images, got {tuple(x.shape[-2:])} (set finetune.image_size)")
        for k in (1, 2, 3):
            sel = params.k == k
            x, y = (_apply(t, sel, lambda s, k=k: torch.rot90(s, k, dims=(-2, -1))) for t in (x, y))
        for size in params.kernel.unique().tolist():
            if size > 1:
                x = _apply(x, params.kernel == size, lambda s, k=size: blur_uint8(s, k))
        x = F.to_dtype(x.contiguous(), torch.float32, scale=True)
        if bool((params.sigma > 0).any()):
            generator = torch.Generator(x.device).manual_seed(params.noise_seed)
            noise = torch.randn(x.shape, generator=generator, device=x.device)
            sigma = params.sigma.to(torch.float32).to(x.device, non_blocking=True)
            x = (x + noise * sigma[:, None, None, None]).clamp_(0.0, 1.0)
        return x, y
