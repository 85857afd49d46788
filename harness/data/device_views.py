"""Pretraining views made in batches on the training device (``view_pipeline: device``).

The loader only streams uint8 tiles (and class maps) from the memory map into (pinned) batches
(:class:`TileDataset`); :class:`DeviceViews` then makes both views of the whole batch where the
model runs, with per-sample random parameters drawn from the same distributions as the
per-sample CPU pipeline (:mod:`harness.data.views`, thesis Table A.1):

* geometry, shared by image and mask: the resized crop's box (the same attempt/fallback rule
  and rounding as :class:`~harness.data.views.RandomResizedCropFast`, vectorised), horizontal
  flip, rotation by k * 90 degrees with k uniform in {1, 2, 3};
* colour, image only: ``ColorJitter`` with p = ``jitter_p`` and a per-sample factor order (as
  torchvision draws it), grayscale, Gaussian blur (per-sample sigma; kernel size per sample
  too, :func:`gaussian_blur_per_sample`), normalisation.

All random parameters are drawn on the host from torch's CPU generator (a few numbers per
sample): no device RNG is involved, so views are equal on every device up to float rounding,
reproducible under ``torch.manual_seed`` and resumed bit-identically by the loop's checkpoint
(which stores torch's RNG state); no step waits on the device to choose a branch.

Library choices (measured, ``benchmarks/test_view_pipeline_speed.py`` and the module's tests):

* resized crop: :func:`torchvision.ops.roi_align` (``aligned=True``, adaptive sampling ratio).
  Each output pixel averages ``ceil(crop / out)``^2 bilinear samples of its bin, an antialiasing
  box filter. Against the CPU pipeline's antialiased resize, on 64 random crops of noisy
  checkerboard tiles, its mean absolute error was 1.7 (256 px tiles) and 2.9 (512 px) grey
  levels; kornia's ``crop_and_resize`` (a warp, no antialiasing, corner-aligned) gave 7.3 and
  21.7 at similar speed on CPU, so kornia's resized crop is not used. The mask takes the pixel
  under each bin's centre (nearest-exact, the CPU pipeline's rule), which is exactly the point
  the image's bin is centred on, so image and mask share one geometry.
* colour jitter: kornia's ``ColorJitter`` draws one op order per batch (``torch.randperm(4)``
  in its parameter generator); Table A.1 / torchvision draw it per image, so the jitter here
  reuses the torchvision-equal kernels of :mod:`harness.data.view_color` on per-sample factors.
* blur: :func:`kornia.filters.gaussian_blur2d` (per-sample sigma, reflect border as
  torchvision's), one call per kernel size present in the batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from harness.data.view_color import _gray, adjust_hue_fast
from harness.data.view_config import ViewAugmentConfig
from harness.data.memmap import MemmapPickling, tensor_view

__all__ = ["TileDataset", "DeviceViews", "ViewParams", "draw_view_params", "crop_boxes",
           "gaussian_blur_per_sample", "reference_blur_params", "resolve_view_pipeline"]


def resolve_view_pipeline(setting: str, device: torch.device) -> str:
    """``auto``: ``device`` on CUDA (the GPU makes the views), ``cpu`` elsewhere (on a CPU the
    per-sample pipeline in loader workers is faster for small tiles and keeps earlier results)."""
    if setting == "auto":
        return "device" if device.type == "cuda" else "cpu"
    return setting


# --- loader side -------------------------------------------------------------------------------

class TileDataset(MemmapPickling, torch.utils.data.Dataset):
    """uint8 tiles ``(H, W, 3)`` (+ class maps ``(H, W)``) of ``images[indices[i]]``, no
    augmentation: the loader's whole job is one copy out of the memory map."""

    def __init__(self, images: Any, masks: Any | None = None, indices: Sequence[int] | None = None):
        if len(images.shape) != 4 or images.shape[-1] != 3 or np.dtype(images.dtype) != np.uint8:
            raise ValueError(f"images must be uint8 (N, H, W, 3), got {images.dtype} {tuple(images.shape)}")
        if masks is not None and tuple(masks.shape) != tuple(images.shape[:3]):
            raise ValueError(f"masks must be (N, H, W) = {tuple(images.shape[:3])}, got {tuple(masks.shape)}")
        self.images, self.masks = images, masks
        n = images.shape[0]
        self.indices = np.arange(n, dtype=np.int64) if indices is None else np.asarray(indices, np.int64)
        if len(self.indices) and (self.indices.min() < 0 or self.indices.max() >= n):
            raise IndexError(f"indices out of range for {n} images")

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        row = int(self.indices[i])
        out = {"image": tensor_view(self.images[row])}  # collation makes the one copy
        if self.masks is not None:
            m = self.masks[row]
            if np.dtype(m.dtype) not in (np.uint8, np.int16, np.int32, np.int64):
                m = np.asarray(m, dtype=np.int32)
            out["mask"] = tensor_view(m)
        return out


# --- random parameters (host) ------------------------------------------------------------------

@dataclass
class ViewParams:
    """Per-sample parameters of one view of a batch (CPU tensors)."""

    boxes: torch.Tensor        # (B, 4) int64: top, left, height, width
    flip: torch.Tensor         # (B,) bool
    k: torch.Tensor            # (B,) int64 in {0, 1, 2, 3}
    jitter: torch.Tensor       # (B,) bool
    factors: torch.Tensor      # (B, 4) float32: brightness, contrast, saturation, hue
    order: torch.Tensor        # (B, 4) int64: a permutation of 0..3 per sample
    gray: torch.Tensor         # (B,) bool
    blur: torch.Tensor         # (B,) bool
    sigma: torch.Tensor        # (B,) float32
    kernel: torch.Tensor       # (B,) int64 (odd)


def crop_boxes(n: int, height: int, width: int, scale: tuple[float, float],
               ratio: tuple[float, float], generator: torch.Generator | None = None) -> torch.Tensor:
    """``(n, 4)`` boxes (top, left, h, w): per sample, up to 10 attempts of area fraction
    ~ U(scale) and log aspect ratio ~ U(log ratio); the first that fits wins at a uniform
    position, else the central fallback; the arithmetic (float64, round half to even) of
    :meth:`RandomResizedCropFast.make_params`."""
    u = torch.rand(n, 10, 4, generator=generator).double()
    lr0, lr1 = math.log(ratio[0]), math.log(ratio[1])
    area = height * width * (scale[0] + (scale[1] - scale[0]) * u[..., 0])
    aspect = torch.exp(lr0 + (lr1 - lr0) * u[..., 1])
    w = torch.round(torch.sqrt(area * aspect)).long()
    h = torch.round(torch.sqrt(area / aspect)).long()
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = ok.int().argmax(dim=1)
    pick = lambda t: t.gather(1, first[:, None])[:, 0]  # noqa: E731
    w, h, ut, ul = pick(w), pick(h), pick(u[..., 2]), pick(u[..., 3])
    top = torch.minimum((ut * (height - h + 1)).long(), height - h)
    left = torch.minimum((ul * (width - w + 1)).long(), width - w)
    found = ok.any(dim=1)
    in_ratio = width / height  # fallback: central crop, as torchvision
    if in_ratio < ratio[0]:
        fw, fh = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        fw, fh = int(round(height * ratio[1])), height
    else:
        fw, fh = width, height
    fb = torch.tensor([(height - fh) // 2, (width - fw) // 2, fh, fw])
    boxes = torch.stack([top, left, h, w], dim=1)
    return torch.where(found[:, None], boxes, fb)


def reference_blur_params(n: int, generator: torch.Generator | None = None
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Kernel sizes 3/5/7 with probabilities 0.2/0.4/0.4 and OpenCV's sigma for sigma = 0,
    ``0.3 * ((k - 1) * 0.5 - 1) + 0.8`` (the albumentations/OpenCV blur of the reference's
    fine-tuning pipeline); for :func:`gaussian_blur_per_sample`."""
    u = torch.rand(n, generator=generator)
    k = torch.where(u < 0.2, 3, torch.where(u < 0.6, 5, 7)).long()
    return k, 0.3 * ((k.float() - 1) * 0.5 - 1) + 0.8


def draw_view_params(n: int, height: int, width: int, cfg: ViewAugmentConfig,
                     generator: torch.Generator | None = None) -> ViewParams:
    g = generator
    boxes = crop_boxes(n, height, width, cfg.scale, cfg.ratio, g)
    flip = torch.rand(n, generator=g) < cfg.hflip_p
    rot = torch.rand(n, generator=g) < cfg.rot90_p
    k = torch.where(rot, torch.randint(1, 4, (n,), generator=g), 0)
    b, c, s, h = cfg.jitter
    jitter = torch.rand(n, generator=g) < cfg.jitter_p
    lo = torch.tensor([max(0.0, 1 - b), max(0.0, 1 - c), max(0.0, 1 - s), -h])
    hi = torch.tensor([1 + b, 1 + c, 1 + s, h])
    factors = lo + (hi - lo) * torch.rand(n, 4, generator=g)
    order = torch.argsort(torch.rand(n, 4, generator=g), dim=1)
    gray = torch.rand(n, generator=g) < cfg.grayscale_p
    blur = torch.rand(n, generator=g) < cfg.blur_p
    s0, s1 = cfg.blur_sigma
    sigma = s0 + (s1 - s0) * torch.rand(n, generator=g)
    kernel = torch.full((n,), cfg.blur_kernel, dtype=torch.long)
    return ViewParams(boxes, flip, k, jitter, factors, order, gray, blur, sigma, kernel)


# --- device side -------------------------------------------------------------------------------

def _index(sel: torch.Tensor, device: torch.device) -> torch.Tensor | None:
    idx = sel.nonzero()[:, 0]
    return idx.to(device, non_blocking=True) if len(idx) else None


def resized_crop(x: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Antialiased resized crops ``(B, C, size, size)`` of float ``x`` at ``boxes`` (top, left,
    h, w; CPU int64) by ``roi_align`` (see the module docstring)."""
    from torchvision.ops import roi_align

    b = boxes.to(torch.float32)
    rois = torch.stack([torch.arange(len(b), dtype=torch.float32), b[:, 1], b[:, 0],
                        b[:, 1] + b[:, 3], b[:, 0] + b[:, 2]], dim=1)
    return roi_align(x, rois.to(x.device, non_blocking=True), (size, size), spatial_scale=1.0,
                     sampling_ratio=-1, aligned=True)


def crop_mask(mask: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """The class map under each output bin's centre: source row ``top + floor((i + 0.5) * h /
    size)`` (the image's bin centres; nearest-exact), likewise for columns."""
    b = boxes.to(torch.float64)
    pos = torch.arange(size, dtype=torch.float64) + 0.5
    rows = (b[:, :1] + torch.floor(pos * b[:, 2:3] / size)).long()
    rows = torch.minimum(rows, (b[:, 0:1] + b[:, 2:3] - 1).long())
    cols = (b[:, 1:2] + torch.floor(pos * b[:, 3:4] / size)).long()
    cols = torch.minimum(cols, (b[:, 1:2] + b[:, 3:4] - 1).long())
    rows, cols = rows.to(mask.device, non_blocking=True), cols.to(mask.device, non_blocking=True)
    n = torch.arange(len(b), device=mask.device)
    return mask[n[:, None, None], rows[:, :, None], cols[:, None, :]]


def flip_rotate(x: torch.Tensor, flip: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Per-sample horizontal flip, then rotation by ``k`` * 90 degrees (square crops), exact."""
    idx = _index(flip, x.device)
    if idx is not None:
        x = x.index_copy(0, idx, x.index_select(0, idx).flip(-1))
    for kk in (1, 2, 3):
        idx = _index(k == kk, x.device)
        if idx is not None:
            x = x.index_copy(0, idx, torch.rot90(x.index_select(0, idx), kk, dims=(-2, -1)))
    return x


def _jitter_op(x: torch.Tensor, op: int, f: torch.Tensor, bound: float) -> torch.Tensor:
    """One of torchvision's jitter ops with per-sample factors ``f`` (n,) on ``x`` (n, 3, H, W)."""
    if op == 3:
        return adjust_hue_fast(x, f.view(-1, 1, 1))
    f4 = f.view(-1, 1, 1, 1)
    if op == 0:
        return x.mul(f4).clamp_(0.0, bound)
    if op == 1:
        mean = _gray(x).mean(dim=(-3, -2, -1), keepdim=True)
        return torch.lerp(mean, x, f4).clamp_(0.0, bound)
    return torch.lerp(_gray(x), x, f4).clamp_(0.0, bound)


def color_jitter_per_sample(x: torch.Tensor, p: ViewParams, bound: float = 255.0) -> torch.Tensor:
    """``ColorJitter`` where ``p.jitter``, each sample with its own factors and op order."""
    factors = p.factors.to(x.device, non_blocking=True)
    for slot in range(4):
        for op in range(4):
            sel = p.jitter & (p.order[:, slot] == op)
            idx = _index(sel, x.device)
            if idx is not None:
                x = x.index_copy(0, idx, _jitter_op(x.index_select(0, idx), op,
                                                    factors.index_select(0, idx)[:, op], bound))
    return x


def gaussian_blur_per_sample(x: torch.Tensor, apply: torch.Tensor, kernel: torch.Tensor,
                             sigma: torch.Tensor) -> torch.Tensor:
    """Gaussian blur of the samples where ``apply``, with per-sample odd kernel size and sigma
    (CPU tensors), reflect border (as torchvision's ``gaussian_blur``)."""
    from kornia.filters import gaussian_blur2d

    for ks in torch.unique(kernel[apply]).tolist():
        idx = _index(apply & (kernel == ks), x.device)
        s = sigma.to(x.device, non_blocking=True).index_select(0, idx).to(x.dtype)
        out = gaussian_blur2d(x.index_select(0, idx), (int(ks), int(ks)),
                              torch.stack([s, s], dim=1), border_type="reflect")
        x = x.index_copy(0, idx, out)
    return x


class DeviceViews:
    """Both views of a batch ``{"image": uint8 (B, H, W, 3)[, "mask": (B, H, W)]}`` already on
    the device: ``{"view1", "view2"}`` float32 (B, 3, C, C) normalised (+ ``{"mask1",
    "mask2"}`` int64 (B, C, C)), the output of :class:`~harness.data.views.TwoViewDataset`."""

    def __init__(self, config: ViewAugmentConfig | None = None,
                 generator: torch.Generator | None = None):
        self.cfg = config or ViewAugmentConfig()
        self.generator = generator
        self._norm: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        image = batch["image"]
        x = image.permute(0, 3, 1, 2).float()
        mask = batch.get("mask")
        n, _, height, width = x.shape
        out: dict[str, torch.Tensor] = {}
        for v in (1, 2):
            p = draw_view_params(n, height, width, self.cfg, self.generator)
            out[f"view{v}"] = self.view(x, p)
            if mask is not None:
                out[f"mask{v}"] = flip_rotate(crop_mask(mask, p.boxes, self.cfg.crop_size),
                                              p.flip, p.k).long()
        return out

    def view(self, x: torch.Tensor, p: ViewParams) -> torch.Tensor:
        """One view of float ``x`` (B, 3, H, W) in [0, 255] under parameters ``p``."""
        cfg = self.cfg
        y = resized_crop(x, p.boxes, cfg.crop_size).clamp_(0.0, 255.0)
        y = flip_rotate(y, p.flip, p.k)
        y = color_jitter_per_sample(y, p)
        idx = _index(p.gray, y.device)
        if idx is not None:
            y = y.index_copy(0, idx, _gray(y.index_select(0, idx)).expand(-1, 3, -1, -1))
        if bool(p.blur.any()):
            y = gaussian_blur_per_sample(y, p.blur, p.kernel, p.sigma)
        mean, std = self._norm.get(y.device) or self._norm.setdefault(y.device, (
            torch.tensor([m * 255.0 for m in cfg.mean], device=y.device).view(1, 3, 1, 1),
            torch.tensor([s * 255.0 for s in cfg.std], device=y.device).view(1, 3, 1, 1)))
        return y.sub_(mean).div_(std)
