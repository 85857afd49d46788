"""Two augmented views per image for self-supervised pretraining, with optional aligned masks.

The augmentations follow thesis Table A.1 / ``pricon:src/data.py`` (thesis §4.1.2):

* geometric ops, shared by the image and its class map: ``RandomResizedCrop`` to 224 with scale
  (0.2, 1.0) and ratio (3/4, 4/3) (antialiased bicubic for the image, nearest for the mask:
  pixel-centre "nearest-exact", which is PIL's NEAREST of the reference and lines up with the
  image's sampling grid, unlike torch's legacy "nearest"), horizontal flip, and rotation by a
  uniformly chosen 90, 180 or 270 degrees;
* colour ops, on the image only: ``ColorJitter(0.8, 0.8, 0.8, 0.2)`` with p = 0.8, grayscale with
  p = 0.2, Gaussian blur (kernel 23) with p = 0.0, then normalisation with mean = std = 0.5 (inputs
  in [-1, 1]).

**Probabilities.** ``hflip_p`` and ``rot90_p`` are the probabilities that the op *is applied*.
The reference applies flip and rotation when ``random.random() > p`` (``src/data.py`` L205,
L210), i.e. with probability ``1 - p``; for its defaults (p = 0.5) both readings give 0.5. A
config translated from the reference with p != 0.5 must use ``1 - p`` here.

Every view draws its own parameters (crop box, flip, k, jitter factors and order, ...) from the
torch RNG, so results are reproducible under ``torch.manual_seed`` and DataLoader workers get
independent streams. The geometric parameters of one view are shared by its image and mask
because both go through the same :class:`torchvision.transforms.v2.Compose` call as
``tv_tensors.Image`` and ``tv_tensors.Mask``; the colour transforms only handle ``Image``.

Speed (``benchmarks/test_view_pipeline_speed.py``): 4-5x the two-view samples/s of a
reference-like pipeline (PNG decode + PIL transforms) per worker on a lightly loaded machine,
somewhat less (~3.7-3.9x) when other processes oversubscribe the cores:

* images are read from the ``(N, H, W, 3)`` uint8 array (typically a read-only memory map)
  without decoding or copying: the crop is a view into the map, so only its rows are read;
* the crop is resized while still uint8 (torch's native AVX2 uint8 antialiased bicubic kernel,
  PIL's filter), and flips/rot90 act on the 224x224 uint8 result;
* the colour ops run on the 224x224 float crop, fused in one transform (:class:`ColorAugment`)
  with torchvision's random draws; the hue shift (:func:`adjust_hue_fast`) is a branch-free
  closed form instead of torchvision's RGB->HSV->RGB round trip (~7x faster, equal to float
  rounding: tested), and crop parameters are drawn in one call (:class:`RandomResizedCropFast`);
* masks are resized by row/column gathers (several times faster than torch's uint8 nearest).

This is the ``view_pipeline: cpu`` path; :mod:`harness.data.device_views` makes the same views
in batches on the training device (``device``, the default on CUDA).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Sequence

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from harness.data.augment import RandomRot90
from harness.data.memmap import MemmapPickling, tensor_view
from harness.data.view_color import ColorAugment
from harness.data.view_config import ViewAugmentConfig

__all__ = ["TwoViewDataset", "build_view_transform", "RandomResizedCropFast", "RandomRot90NonZero"]


# --- transforms --------------------------------------------------------------------------------

class RandomRot90NonZero(RandomRot90):
    """With probability p, rotate by k * 90 degrees with k uniform in {1, 2, 3} (the reference's
    ``random.choice([90, 180, 270])``); :class:`~harness.data.augment.RandomRot90` instead draws
    k from {0, 1, 2, 3} (albumentations ``RandomRotate90``)."""

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        if torch.rand(()) >= self.p:
            return {"k": 0}
        return {"k": int(torch.randint(1, 4, ()))}


class RandomResizedCropFast(v2.RandomResizedCrop):
    """``v2.RandomResizedCrop`` with the same crop distribution (up to 10 attempts of area
    fraction ~ U(scale) and log aspect ratio ~ U(log ratio), the first that fits wins, uniform
    position; else the central fallback) but all random numbers of a call drawn at once (one
    ``torch.rand`` instead of up to 40 scalar draws), and a ``transform`` that calls the kernels
    of ``F.resized_crop`` directly: crop (a view, so only the crop is read), then resize the crop
    (antialiased, uint8 kept); images equal ``F.resized_crop``'s output (tested). Masks use
    ``mask_interpolation``: nearest-exact by default (pixel centres, as PIL's NEAREST in the
    reference), where v2 would use torch's legacy nearest."""

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = v2.query_size(flat_inputs)
        area = height * width
        lr0, lr1 = float(self._log_ratio[0]), float(self._log_ratio[1])
        s0, s1 = self.scale
        for u_area, u_ratio, u_top, u_left in torch.rand(10, 4).tolist():
            target_area = area * (s0 + (s1 - s0) * u_area)
            aspect_ratio = math.exp(lr0 + (lr1 - lr0) * u_ratio)
            w = int(round(math.sqrt(target_area * aspect_ratio)))
            h = int(round(math.sqrt(target_area / aspect_ratio)))
            if 0 < w <= width and 0 < h <= height:
                top = min(int(u_top * (height - h + 1)), height - h)
                left = min(int(u_left * (width - w + 1)), width - w)
                return dict(top=top, left=left, height=h, width=w)
        in_ratio = float(width) / float(height)  # fallback: central crop, as v2
        if in_ratio < min(self.ratio):
            w, h = width, int(round(width / min(self.ratio)))
        elif in_ratio > max(self.ratio):
            h, w = height, int(round(height * max(self.ratio)))
        else:
            w, h = width, height
        return dict(top=(height - h) // 2, left=(width - w) // 2, height=h, width=w)

    def __init__(self, *args: Any,
                 mask_interpolation: v2.InterpolationMode = v2.InterpolationMode.NEAREST_EXACT,
                 **kwargs: Any):
        super().__init__(*args, **kwargs)
        if mask_interpolation not in (v2.InterpolationMode.NEAREST,
                                      v2.InterpolationMode.NEAREST_EXACT):
            raise ValueError(f"masks need a nearest interpolation, got {mask_interpolation}")
        self.mask_interpolation = mask_interpolation

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, tv_tensors.Mask):
            return self._mask(inpt, params)
        if not (isinstance(inpt, tv_tensors.Image) and self.interpolation in _NATIVE_UINT8
                and (inpt.dtype == torch.uint8 or inpt.is_floating_point())):
            return super().transform(inpt, params)
        top, left, h, w = params["top"], params["left"], params["height"], params["width"]
        x = inpt.as_subclass(torch.Tensor)[..., top:top + h, left:left + w]
        if list(self.size) == [h, w]:
            out = x.clone()  # never hand out a view into the (possibly memory-mapped) source
        else:
            lead = x.shape[:-3]
            out = torch.nn.functional.interpolate(
                x.reshape((-1,) + x.shape[-3:]), size=list(self.size),
                mode=self.interpolation.value, align_corners=False, antialias=self.antialias)
            out = out.reshape(lead + out.shape[-3:])
        return tv_tensors.wrap(out, like=inpt)

    def _mask(self, inpt: tv_tensors.Mask, params: dict[str, Any]) -> tv_tensors.Mask:
        """Nearest-neighbour resized crop as row and column gathers, equal to
        ``F.resize(F.crop(mask, ...), size, interpolation=mask_interpolation)`` (tested) and
        several times faster than torch's uint8 nearest kernel. ``NEAREST_EXACT`` (the default) samples
        pixel centres, like PIL's NEAREST in the reference and like the image's bicubic sampling
        grid; ``NEAREST`` is torch's legacy rule (v2's default), up to half a pixel off."""
        top, left, h, w = params["top"], params["left"], params["height"], params["width"]
        x = inpt.as_subclass(torch.Tensor)[..., top:top + h, left:left + w]
        out_h, out_w = self.size
        exact = self.mask_interpolation == v2.InterpolationMode.NEAREST_EXACT
        rows, cols = _nearest_index(h, out_h, exact), _nearest_index(w, out_w, exact)
        if x.device.type == "cpu" and not x.requires_grad:
            a = x.numpy()
            out = torch.from_numpy(np.ascontiguousarray(a[..., rows, :][..., cols]))
        else:
            out = x.index_select(-2, torch.from_numpy(rows).to(x.device))
            out = out.index_select(-1, torch.from_numpy(cols).to(x.device))
        return tv_tensors.wrap(out, like=inpt)


@functools.lru_cache(maxsize=4096)
def _nearest_index(size_in: int, size_out: int, exact: bool) -> np.ndarray:
    """Source index of every output pixel, computed in float32 exactly as torch's CPU kernels do
    (``nearest``: floor(i * s); ``nearest-exact``: floor((i + 0.5) * s); s = in / out)."""
    if size_in == size_out:
        return np.arange(size_out, dtype=np.int64)
    scale = np.float32(size_in) / np.float32(size_out)
    pos = np.arange(size_out, dtype=np.float32)
    if exact:
        pos = pos + np.float32(0.5)
    idx = np.floor(pos * scale).astype(np.int64)
    idx = np.minimum(idx, size_in - 1)
    idx.setflags(write=False)
    return idx


_NATIVE_UINT8 = (v2.InterpolationMode.BILINEAR, v2.InterpolationMode.BICUBIC)


_INTERP = {"bicubic": v2.InterpolationMode.BICUBIC, "bilinear": v2.InterpolationMode.BILINEAR}


def build_view_transform(config: ViewAugmentConfig | None = None,
                         fast_color: bool = True) -> v2.Compose:
    """One view: uint8 ``Image`` (3, H, W) [+ ``Mask`` (H, W)] in, normalised float32 ``Image``
    (3, C, C) [+ ``Mask`` (C, C), dtype kept] out.

    Geometric ops (shared by image and mask): ``RandomResizedCrop`` (crop, then resize the uint8
    crop), ``RandomHorizontalFlip``, :class:`RandomRot90NonZero`. Colour ops (image only):
    ``fast_color=True`` fuses them into :class:`ColorAugment`; ``fast_color=False`` is the plain
    torchvision composition (``ToDtype``, ``RandomApply([ColorJitter])``, ``RandomGrayscale``,
    ``RandomApply([GaussianBlur])``, ``Normalize``) with the same random draws, kept as the
    reference for tests.
    """
    cfg = config or ViewAugmentConfig()
    ops: list[v2.Transform] = [
        RandomResizedCropFast(cfg.crop_size, scale=cfg.scale, ratio=cfg.ratio,
                              interpolation=_INTERP[cfg.interpolation], antialias=True,
                              mask_interpolation=v2.InterpolationMode(cfg.mask_interpolation)),
        v2.RandomHorizontalFlip(p=cfg.hflip_p),
        RandomRot90NonZero(p=cfg.rot90_p),
    ]
    if fast_color:
        ops.append(ColorAugment(cfg.jitter, cfg.jitter_p, cfg.grayscale_p, cfg.blur_p,
                                cfg.blur_kernel, cfg.blur_sigma, cfg.mean, cfg.std))
        return v2.Compose(ops)
    b, c, s, h = cfg.jitter
    ops += [
        v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True),
        v2.RandomApply([v2.ColorJitter(brightness=b, contrast=c, saturation=s, hue=h)],
                       p=cfg.jitter_p),
        v2.RandomGrayscale(p=cfg.grayscale_p),
    ]
    if cfg.blur_p > 0:
        ops.append(v2.RandomApply([v2.GaussianBlur(cfg.blur_kernel, sigma=cfg.blur_sigma)],
                                  p=cfg.blur_p))
    ops.append(v2.Normalize(mean=list(cfg.mean), std=list(cfg.std)))
    return v2.Compose(ops)


# --- dataset -----------------------------------------------------------------------------------

class TwoViewDataset(MemmapPickling, torch.utils.data.Dataset):
    """Two independently augmented views of each image, with their aligned class maps.

    ``images``: ``(N, H, W, 3)`` uint8 array, typically a read-only ``np.memmap``; only sample
    ``indices[i]`` is accessed by ``__getitem__(i)`` and nothing is copied up front.
    ``masks``: optional ``(N, H, W)`` integer class maps aligned with ``images`` by index.
    ``indices``: rows of ``images`` to use (default: all).

    ``config``: the augmentations (default: thesis Table A.1); ``transform`` replaces the whole
    per-view transform (uint8 ``Image`` [+ ``Mask``] in, as :func:`build_view_transform`).

    ``__getitem__`` returns ``{"view1", "view2"}``: float32 (3, C, C) normalised tensors, plus
    ``{"mask1", "mask2"}``: int64 (C, C) class maps under the same geometric transform as their
    view (colour ops never touch them).

    The per-sample work is meant to run single-threaded in DataLoader workers (which PyTorch
    sets to one intra-op thread). A whole-file ``np.memmap`` is pickled as a reference to its
    file (re-opened read-only), so spawned workers do not receive a copy of the data.
    """

    def __init__(self, images: Any, masks: Any | None = None,
                 config: ViewAugmentConfig | None = None,
                 indices: Sequence[int] | None = None, fast_color: bool = True,
                 transform: v2.Transform | None = None):
        shape = tuple(images.shape)
        if len(shape) != 4 or shape[-1] != 3:
            raise ValueError(f"images must be (N, H, W, 3), got {shape}")
        if np.dtype(images.dtype) != np.uint8:
            raise ValueError(f"images must be uint8, got {images.dtype}")
        if masks is not None:
            if tuple(masks.shape) != shape[:3]:
                raise ValueError(f"masks must be (N, H, W) = {shape[:3]}, got {tuple(masks.shape)}")
            if not np.issubdtype(np.dtype(masks.dtype), np.integer):
                raise ValueError(f"masks must be an integer class map, got {masks.dtype}")
        self.images = images
        self.masks = masks
        self.config = config or ViewAugmentConfig()
        n = shape[0]
        self.indices = (np.arange(n, dtype=np.int64) if indices is None
                        else np.asarray(indices, dtype=np.int64))
        if len(self.indices) and (self.indices.min() < 0 or self.indices.max() >= n):
            raise IndexError(f"indices out of range for {n} images")
        self.transform = transform if transform is not None else build_view_transform(
            self.config, fast_color=fast_color)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        row = int(self.indices[i])
        image = tv_tensors.Image(tensor_view(self.images[row]).permute(2, 0, 1))
        if self.masks is None:
            v1 = self.transform(image)
            v2_ = self.transform(image)
            return {"view1": v1.as_subclass(torch.Tensor), "view2": v2_.as_subclass(torch.Tensor)}
        mask = tv_tensors.Mask(tensor_view(self.masks[row]))
        v1, m1 = self.transform(image, mask)
        v2_, m2 = self.transform(image, mask)
        return {"view1": v1.as_subclass(torch.Tensor), "view2": v2_.as_subclass(torch.Tensor),
                "mask1": m1.as_subclass(torch.Tensor).long(),
                "mask2": m2.as_subclass(torch.Tensor).long()}
