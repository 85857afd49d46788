"""Two augmented views per image for self-supervised pretraining, with optional aligned masks.

The augmentations follow thesis Table A.1 / ``pricon:src/data.py`` (reference §7.4):

* geometric ops, shared by the image and its class map: ``RandomResizedCrop`` to 224 with scale
  (0.2, 1.0) and ratio (3/4, 4/3) (bicubic for the image, nearest for the mask), horizontal flip,
  and rotation by a uniformly chosen 90, 180 or 270 degrees;
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

Speed (``benchmarks/test_view_pipeline_speed.py``):

* images are read from the ``(N, H, W, 3)`` uint8 array (typically a read-only memory map)
  without copying: the crop is a view into the map, so only the rows of the crop are read;
* the crop is resized while still uint8 (torch's native uint8 bicubic kernel), flips and rot90
  act on the 224x224 uint8 crop, and the colour ops run on the 224x224 float crop;
* :class:`FastColorJitter` has the parameters, random draws and op order of
  ``v2.ColorJitter`` but fused float kernels; its hue shift (:func:`adjust_hue_fast`) rotates the
  HSV hue with a closed form instead of a full RGB->HSV->RGB round trip and matches
  ``torchvision``'s ``adjust_hue`` to float rounding (tested).
"""

from __future__ import annotations

import warnings
from typing import Any, Literal, Sequence

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from harness.data.augment import RandomRot90

__all__ = [
    "ViewAugmentConfig", "TwoViewDataset", "build_view_transform", "RandomRot90NonZero",
    "FastColorJitter", "adjust_hue_fast",
]

Probability = Field(ge=0.0, le=1.0)


class ViewAugmentConfig(BaseModel):
    """Pretraining view augmentations; defaults are thesis Table A.1 (PRICon, SimCLR).
    SimSiam uses ``jitter=(0.4, 0.4, 0.4, 0.1)``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    crop_size: int = Field(224, gt=0)
    scale: tuple[float, float] = (0.2, 1.0)
    ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
    #: probability that the horizontal flip is applied (reference: flip when random() > p)
    hflip_p: float = Field(0.5, ge=0.0, le=1.0)
    #: probability that a rotation by k * 90 degrees, k uniform in {1, 2, 3}, is applied
    rot90_p: float = Field(0.5, ge=0.0, le=1.0)
    #: ColorJitter (brightness, contrast, saturation, hue) strengths
    jitter: tuple[float, float, float, float] = (0.8, 0.8, 0.8, 0.2)
    jitter_p: float = Field(0.8, ge=0.0, le=1.0)
    grayscale_p: float = Field(0.2, ge=0.0, le=1.0)
    blur_p: float = Field(0.0, ge=0.0, le=1.0)
    blur_kernel: int = Field(23, gt=0)
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    #: image interpolation of the resized crop (masks always use nearest)
    interpolation: Literal["bicubic", "bilinear"] = "bicubic"

    @model_validator(mode="after")
    def _check(self) -> "ViewAugmentConfig":
        lo, hi = self.scale
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(f"scale must satisfy 0 < lo <= hi <= 1, got {self.scale}")
        if not 0.0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError(f"ratio must satisfy 0 < lo <= hi, got {self.ratio}")
        if any(j < 0 for j in self.jitter[:3]) or not 0.0 <= self.jitter[3] <= 0.5:
            raise ValueError(f"jitter strengths must be >= 0 and hue <= 0.5, got {self.jitter}")
        if self.blur_kernel % 2 == 0:
            raise ValueError(f"blur_kernel must be odd, got {self.blur_kernel}")
        if not 0.0 < self.blur_sigma[0] <= self.blur_sigma[1]:
            raise ValueError(f"blur_sigma must satisfy 0 < lo <= hi, got {self.blur_sigma}")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std must be positive, got {self.std}")
        return self


# --- transforms --------------------------------------------------------------------------------

class RandomRot90NonZero(RandomRot90):
    """With probability p, rotate by k * 90 degrees with k uniform in {1, 2, 3} (the reference's
    ``random.choice([90, 180, 270])``); :class:`~harness.data.augment.RandomRot90` instead draws
    k from {0, 1, 2, 3} (albumentations ``RandomRotate90``)."""

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        if torch.rand(()) >= self.p:
            return {"k": 0}
        return {"k": int(torch.randint(1, 4, ()))}


_GRAY = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights
_HUE_OFFSETS: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}


def _gray(img: torch.Tensor) -> torch.Tensor:
    r, g, b = img.unbind(dim=-3)
    return r.mul(_GRAY[0]).add_(g, alpha=_GRAY[1]).add_(b, alpha=_GRAY[2]).unsqueeze_(-3)


def adjust_hue_fast(img: torch.Tensor, hue_factor: float) -> torch.Tensor:
    """``F.adjust_hue`` for float RGB images in [0, 1] (``(..., 3, H, W)``), without the round
    trip through a stacked HSV image.

    A hue rotation keeps V = max(r, g, b) and the chroma C = max - min; with the hue in sextants
    ``h6`` (as torchvision/PIL compute it: ``(g - b) / C`` if max = r, ``2 + (b - r) / C`` if
    max = g, else ``4 + (r - g) / C``), the rotated colour is the standard closed form
    ``out_c = V - C * clamp(min(k_c, 4 - k_c), 0, 1)`` with ``k_c = (n_c + h6 + 6 * hue) mod 6``
    and ``n = (5, 3, 1)`` for (r, g, b). Grey pixels (C = 0) stay unchanged, as in torchvision.
    """
    if not -0.5 <= hue_factor <= 0.5:
        raise ValueError(f"hue_factor ({hue_factor}) is not in [-0.5, 0.5].")
    if not img.is_floating_point():
        raise TypeError("adjust_hue_fast expects a float image in [0, 1]")
    r, g, b = img.unbind(dim=-3)
    # Branch-free on purpose: torch.where, comparisons to bool and reductions over the channel
    # dim with aminmax are several times slower on CPU than plain float arithmetic.
    maxc = torch.amax(img, dim=-3)
    chroma = maxc - torch.amin(img, dim=-3)
    # where chroma == 0 all differences are 0 as well, so any finite divisor gives 0
    inv = chroma.clamp_min(1e-30).reciprocal_()
    # 0/1 indicators of the channel holding the maximum, first of r, g, b on ties (torchvision)
    is_r = torch.sign(maxc - r).neg_().add_(1.0)
    is_g = torch.sign(maxc - g).neg_().add_(1.0).mul_(1.0 - is_r)
    is_b = (1.0 - is_r).sub_(is_g)
    # h6 = (g - b) / C, 2 + (b - r) / C or 4 + (r - g) / C, plus the shift in sextants
    num = (g - b).mul_(is_r).addcmul_(b - r, is_g).addcmul_(r - g, is_b)
    h6 = num.mul_(inv).add_(is_g, alpha=2.0).add_(is_b, alpha=4.0).add_(6.0 * hue_factor)
    key = (img.device, img.dtype)
    offsets = _HUE_OFFSETS.get(key)
    if offsets is None:
        offsets = _HUE_OFFSETS[key] = torch.tensor([5.0, 3.0, 1.0], dtype=img.dtype,
                                                   device=img.device).view(3, 1, 1)
    k = h6.unsqueeze(-3).add(offsets)
    k = k.sub_(k.mul(1.0 / 6.0).floor_().mul_(6.0))  # mod 6 (remainder() is slow)
    t = torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)
    return t.mul_(chroma.unsqueeze(-3).neg_()).add_(maxc.unsqueeze(-3))


def color_jitter_float(img: torch.Tensor, fn_idx: Sequence[int], brightness: float | None,
                       contrast: float | None, saturation: float | None,
                       hue: float | None) -> torch.Tensor:
    """``v2.ColorJitter``'s ops on a float RGB image in [0, 1], in the order ``fn_idx``
    (0 brightness, 1 contrast, 2 saturation, 3 hue), each clamped to [0, 1] like torchvision's
    float kernels. Returns a new tensor; ``img`` is not modified."""
    out = img
    owned = False
    for fn_id in fn_idx:
        fn_id = int(fn_id)
        if fn_id == 0 and brightness is not None:
            out = (out.mul_(brightness) if owned else out.mul(brightness)).clamp_(0.0, 1.0)
        elif fn_id == 1 and contrast is not None:
            mean = _gray(out).mean(dim=(-3, -2, -1), keepdim=True)
            out = (out.mul_(contrast) if owned else out.mul(contrast))
            out = out.add_(mean, alpha=1.0 - contrast).clamp_(0.0, 1.0)
        elif fn_id == 2 and saturation is not None:
            gray = _gray(out)
            out = (out.mul_(saturation) if owned else out.mul(saturation))
            out = out.add_(gray, alpha=1.0 - saturation).clamp_(0.0, 1.0)
        elif fn_id == 3 and hue is not None:
            out = adjust_hue_fast(out, hue)
        else:
            continue
        owned = True
    return out if owned else img.clone()


class FastColorJitter(v2.ColorJitter):
    """``v2.ColorJitter`` with the same parameters, random draws (``make_params`` is inherited)
    and op order, computed by :func:`color_jitter_float` on float images (any other input goes
    through torchvision's kernels). Only ``Image`` (and plain tensors) are transformed; masks
    pass through."""

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not (isinstance(inpt, torch.Tensor) and inpt.is_floating_point()
                and inpt.ndim >= 3 and inpt.shape[-3] == 3):
            return super().transform(inpt, params)
        out = color_jitter_float(inpt.as_subclass(torch.Tensor), params["fn_idx"].tolist(),
                                 params["brightness_factor"], params["contrast_factor"],
                                 params["saturation_factor"], params["hue_factor"])
        return tv_tensors.wrap(out, like=inpt) if isinstance(inpt, tv_tensors.TVTensor) else out


_INTERP = {"bicubic": v2.InterpolationMode.BICUBIC, "bilinear": v2.InterpolationMode.BILINEAR}


def build_view_transform(config: ViewAugmentConfig | None = None,
                         fast_color: bool = True) -> v2.Compose:
    """One view: uint8 ``Image`` (3, H, W) [+ ``Mask`` (H, W)] in, normalised float32 ``Image``
    (3, C, C) [+ ``Mask`` (C, C), same dtype as given] out. ``fast_color=False`` uses
    ``v2.ColorJitter`` itself (same distribution, slower hue)."""
    cfg = config or ViewAugmentConfig()
    b, c, s, h = cfg.jitter
    jitter_cls = FastColorJitter if fast_color else v2.ColorJitter
    ops: list[v2.Transform] = [
        v2.RandomResizedCrop(cfg.crop_size, scale=cfg.scale, ratio=cfg.ratio,
                             interpolation=_INTERP[cfg.interpolation], antialias=True),
        v2.RandomHorizontalFlip(p=cfg.hflip_p),
        RandomRot90NonZero(p=cfg.rot90_p),
        v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True),
        v2.RandomApply([jitter_cls(brightness=b, contrast=c, saturation=s, hue=h)],
                       p=cfg.jitter_p),
        v2.RandomGrayscale(p=cfg.grayscale_p),
    ]
    if cfg.blur_p > 0:
        ops.append(v2.RandomApply([v2.GaussianBlur(cfg.blur_kernel, sigma=cfg.blur_sigma)],
                                  p=cfg.blur_p))
    ops.append(v2.Normalize(mean=list(cfg.mean), std=list(cfg.std)))
    return v2.Compose(ops)


# --- dataset -----------------------------------------------------------------------------------

def _tensor_view(arr: Any) -> torch.Tensor:
    """A tensor sharing memory with one sample of a (possibly read-only) array: no copy, so a
    memory-mapped sample is only paged in where a crop reads it. Nothing writes through it (every
    transform is out of place), hence the non-writable warning is silenced."""
    a = np.asarray(arr)
    if a.flags.writeable:
        return torch.from_numpy(a)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(a)


class TwoViewDataset(torch.utils.data.Dataset):
    """Two independently augmented views of each image, with their aligned class maps.

    ``images``: ``(N, H, W, 3)`` uint8 array, typically a read-only ``np.memmap``; only sample
    ``indices[i]`` is accessed by ``__getitem__(i)`` and nothing is copied up front.
    ``masks``: optional ``(N, H, W)`` integer class maps aligned with ``images`` by index.
    ``indices``: rows of ``images`` to use (default: all).

    ``__getitem__`` returns ``{"view1", "view2"}``: float32 (3, C, C) normalised tensors, plus
    ``{"mask1", "mask2"}``: int64 (C, C) class maps under the same geometric transform as their
    view (colour ops never touch them).
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
        image = tv_tensors.Image(_tensor_view(self.images[row]).permute(2, 0, 1))
        if self.masks is None:
            v1 = self.transform(image)
            v2_ = self.transform(image)
            return {"view1": v1.as_subclass(torch.Tensor), "view2": v2_.as_subclass(torch.Tensor)}
        mask = tv_tensors.Mask(_tensor_view(self.masks[row]))
        v1, m1 = self.transform(image, mask)
        v2_, m2 = self.transform(image, mask)
        return {"view1": v1.as_subclass(torch.Tensor), "view2": v2_.as_subclass(torch.Tensor),
                "mask1": m1.as_subclass(torch.Tensor).long(),
                "mask2": m2.as_subclass(torch.Tensor).long()}
