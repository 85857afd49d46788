"""Two augmented views per image for self-supervised pretraining, with optional aligned masks.

The augmentations follow thesis Table A.1 / ``pricon:src/data.py`` (reference §7.4):

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
"""

from __future__ import annotations

import functools
import math
import mmap
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
    "ViewAugmentConfig", "TwoViewDataset", "build_view_transform", "RandomResizedCropFast",
    "RandomRot90NonZero", "ColorAugment", "FastColorJitter", "color_jitter_float",
    "adjust_hue_fast",
]


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
    #: image interpolation of the resized crop (antialiased, as PIL's in the reference)
    interpolation: Literal["bicubic", "bilinear"] = "bicubic"
    #: mask interpolation: "nearest-exact" samples pixel centres like PIL's NEAREST (reference)
    #: and like the image's sampling grid; "nearest" is torch's legacy rule (half a pixel off)
    mask_interpolation: Literal["nearest-exact", "nearest"] = "nearest-exact"

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


_GRAY = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights
_CONSTS: dict[tuple[str, torch.device, torch.dtype], torch.Tensor] = {}


def _const(name: str, values: Sequence[float], shape: tuple[int, ...], like: torch.Tensor):
    key = (name, like.device, like.dtype)
    out = _CONSTS.get(key)
    if out is None:
        out = _CONSTS[key] = torch.tensor(list(values), dtype=like.dtype,
                                          device=like.device).view(shape)
    return out


def _gray(img: torch.Tensor) -> torch.Tensor:
    """Luma ``(..., 1, H, W)`` with torchvision's weights (one matrix product over channels)."""
    w = _const("gray", _GRAY, (1, 3), img)
    return torch.matmul(w, img.flatten(-2)).view(img.shape[:-3] + (1,) + img.shape[-2:])


def adjust_hue_fast(img: torch.Tensor, hue_factor: float) -> torch.Tensor:
    """``F.adjust_hue`` for float RGB images ``(..., 3, H, W)`` with values >= 0 (any scale, e.g.
    [0, 1] or [0, 255]), without the round trip through a stacked HSV image; equal to
    torchvision's result up to float rounding (tested).

    A hue rotation keeps V = max(r, g, b), m = min(r, g, b) and C = V - m. With the hue in
    sextants ``h6`` as torchvision/PIL compute it (``(g - b) / C`` if max = r, else
    ``2 + (b - r) / C`` if max = g, else ``4 + (r - g) / C``), the rotated colour is the closed
    form of HSV->RGB, ``out_c = m + C * clamp(|z_c| - 1, 0, 1)`` with
    ``z_c = ((n_c + h6 + 6 * hue) mod 6) - 2`` and ``n = (5, 3, 1)`` for (r, g, b). Grey pixels
    (C = 0) stay unchanged. Everything is branch-free float arithmetic on (H, W) planes, about 25
    elementwise passes instead of torchvision's ~60 (``torch.where``, bool masks, ``remainder``
    and ``aminmax`` over the channel dim are several times slower on CPU, so none is used).
    """
    if not -0.5 <= hue_factor <= 0.5:
        raise ValueError(f"hue_factor ({hue_factor}) is not in [-0.5, 0.5].")
    if not img.is_floating_point():
        raise TypeError("adjust_hue_fast expects a float image")
    # in-place ops and early frees keep the working set small (it is memory-bound on CPU)
    r, g, b = img.unbind(dim=-3)
    maxc = torch.amax(img, dim=-3)
    minc = torch.amin(img, dim=-3)
    # 0/1 float indicators of the max channel (comparisons straight into float: no bool pass)
    is_r = torch.eq(maxc, r, out=torch.empty_like(maxc))
    is_g = torch.eq(maxc, g, out=torch.empty_like(maxc))
    chroma = maxc.sub_(minc)
    del maxc
    # h6 * C = (g - b) if max = r, else (b - r) + 2C if max = g, else (r - g) + 4C; the lerps
    # with 0/1 weights are exact selections (ties: r before g before b, as torchvision)
    h = torch.lerp(torch.sub(r, g).add_(chroma, alpha=4.0),
                   torch.sub(b, r).add_(chroma, alpha=2.0), is_g)
    h = torch.lerp(h, torch.sub(g, b), is_r)
    del is_r, is_g
    c6 = chroma.mul_(6.0)
    # u = h6 / 6 + hue + 1 (>= 0); where C == 0, h is 0 and any finite divisor gives 0
    u = h.div_(c6.clamp_min(1e-30)).add_(hue_factor + 1.0)
    offsets = _const("hue", (5.0 / 6.0, 3.0 / 6.0, 1.0 / 6.0), (3, 1, 1), img)
    # f = k / 6 in [0, 1): m + C * clamp(|6 f - 2| - 1, 0, 1)
    #                      = (m - C) + 6 C * clamp(|f - 1/3|, 1/6, 1/3)
    t = torch.add(u.unsqueeze(-3), offsets).frac_().sub_(1.0 / 3.0).abs_()
    base = torch.sub(minc, c6, alpha=1.0 / 6.0)
    return t.clamp_(1.0 / 6.0, 1.0 / 3.0).mul_(c6.unsqueeze(-3)).add_(base.unsqueeze(-3))


def color_jitter_float(img: torch.Tensor, fn_idx: Sequence[int], brightness: float | None,
                       contrast: float | None, saturation: float | None, hue: float | None,
                       bound: float = 1.0, inplace: bool = False) -> torch.Tensor:
    """``v2.ColorJitter``'s ops on a float RGB image ``(..., 3, H, W)`` with values in
    [0, bound] (1.0 or 255.0), in the order ``fn_idx`` (0 brightness, 1 contrast, 2 saturation,
    3 hue; ``None`` factors are skipped), each clamped to [0, bound] like torchvision's kernels.
    ``img`` is modified only if ``inplace``."""
    out = img if inplace else img.clone()
    for fn_id in fn_idx:
        fn_id = int(fn_id)
        # with a factor <= 1 each op is a convex combination of values in [0, bound], so its
        # clamp would be a no-op and is skipped; hue keeps every pixel within its [min, max]
        if fn_id == 0 and brightness is not None:
            out = out.mul_(brightness)
            if brightness > 1.0:
                out = out.clamp_max_(bound)
        elif fn_id == 1 and contrast is not None:
            # mean of the grey image = grey weights . per-channel means
            mean = torch.matmul(out.mean(dim=(-2, -1)), _const("gray_w", _GRAY, (3,), out))
            mean = mean.mul_(1.0 - contrast).view(mean.shape + (1, 1, 1))
            out = torch.add(mean, out, alpha=contrast)
            if contrast > 1.0:
                out = out.clamp_(0.0, bound)
        elif fn_id == 2 and saturation is not None:
            out = torch.lerp(_gray(out), out, saturation)
            if saturation > 1.0:
                out = out.clamp_(0.0, bound)
        elif fn_id == 3 and hue is not None:
            out = adjust_hue_fast(out, hue)
    return out


class FastColorJitter(v2.ColorJitter):
    """``v2.ColorJitter`` with the same parameters, random draws (``make_params`` is inherited)
    and op order, computed by :func:`color_jitter_float` on float images in [0, 1] (any other
    input goes through torchvision's kernels)."""

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not (isinstance(inpt, torch.Tensor) and inpt.is_floating_point()
                and inpt.ndim >= 3 and inpt.shape[-3] == 3):
            return super().transform(inpt, params)
        out = color_jitter_float(inpt.as_subclass(torch.Tensor), params["fn_idx"].tolist(),
                                 params["brightness_factor"], params["contrast_factor"],
                                 params["saturation_factor"], params["hue_factor"])
        return tv_tensors.wrap(out, like=inpt) if isinstance(inpt, tv_tensors.TVTensor) else out


class ColorAugment(v2.Transform):
    """The image-only tail of a view in one transform: uint8 -> float,
    ``RandomApply([ColorJitter], jitter_p)``, ``RandomGrayscale(grayscale_p)``,
    ``RandomApply([GaussianBlur], blur_p)`` (only if ``blur_p > 0``) and ``Normalize`` (of the
    image scaled to [0, 1]); float32 out.

    It draws exactly the random numbers, in the same order, that the unfused v2 composition
    (:func:`build_view_transform` with ``fast_color=False``) draws, so both give the same views
    under the same seed (up to float rounding). The colour ops run on the unscaled [0, 255] float
    image (they are scale-invariant up to the clamp bound) and the 1/255 is folded into the
    normalisation; fusing also saves four transform dispatches and intermediate tensors per view.
    Masks and other non-image inputs pass through untouched.
    """

    def __init__(self, jitter: tuple[float, float, float, float] = (0.8, 0.8, 0.8, 0.2),
                 jitter_p: float = 0.8, grayscale_p: float = 0.2, blur_p: float = 0.0,
                 blur_kernel: int = 23, blur_sigma: tuple[float, float] = (0.1, 2.0),
                 mean: Sequence[float] = (0.5, 0.5, 0.5), std: Sequence[float] = (0.5, 0.5, 0.5)):
        super().__init__()
        b, c, s, h = jitter
        self.jitter = v2.ColorJitter(brightness=b, contrast=c, saturation=s, hue=h)
        self.jitter_p, self.grayscale_p, self.blur_p = jitter_p, grayscale_p, blur_p
        self.blur = v2.GaussianBlur(blur_kernel, sigma=blur_sigma) if blur_p > 0 else None
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self._norm: dict[tuple[float, torch.device, torch.dtype], tuple[torch.Tensor, ...]] = {}

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        # the draws of RandomApply(ColorJitter), RandomGrayscale and RandomApply(GaussianBlur)
        jitter = self.jitter.make_params(flat_inputs) if torch.rand(1) < self.jitter_p else None
        gray = bool(torch.rand(1) < self.grayscale_p)
        sigma = None
        if self.blur is not None and torch.rand(1) < self.blur_p:
            sigma = self.blur.make_params(flat_inputs)["sigma"]
        return {"jitter": jitter, "gray": gray, "sigma": sigma}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, tv_tensors.TVTensor) and not isinstance(inpt, tv_tensors.Image):
            return inpt  # masks, boxes, ...
        x = inpt.as_subclass(torch.Tensor)
        if x.dtype == torch.uint8:
            bound = 255.0
            # contiguous planes: the per-channel ops below are much slower on channels-last
            x = x.to(torch.float32, memory_format=torch.contiguous_format)
        elif x.is_floating_point():
            bound = 1.0
            x = x.clone(memory_format=torch.contiguous_format)
        else:
            raise TypeError(f"ColorAugment expects a uint8 or float image, got {x.dtype}")
        j = params["jitter"]
        if j is not None:
            x = color_jitter_float(x, j["fn_idx"].tolist(), j["brightness_factor"],
                                   j["contrast_factor"], j["saturation_factor"], j["hue_factor"],
                                   bound=bound, inplace=True)
        if params["gray"]:
            x = _gray(x)  # (1, H, W): the normalisation below broadcasts it to 3 channels
        if params["sigma"] is not None:
            kernel = [self.blur.kernel_size[0], self.blur.kernel_size[1]]
            x = F.gaussian_blur_image(x, kernel, params["sigma"])
        # (x / bound - mean) / std; out of place for a grey x, which it broadcasts to 3 channels
        key = (bound, x.device, x.dtype)
        norm = self._norm.get(key)
        if norm is None:
            norm = self._norm[key] = tuple(
                torch.tensor([v * bound for v in vals], dtype=x.dtype, device=x.device)
                .view(3, 1, 1) for vals in (self.mean, self.std))
        x = (x.sub_(norm[0]) if x.shape[-3] == 3 else x.sub(norm[0])).div_(norm[1])
        return tv_tensors.wrap(x, like=inpt) if isinstance(inpt, tv_tensors.TVTensor) else x


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


class _MemmapRef:
    """Pickled stand-in for a memory map of a whole file: re-opened read-only on unpickling
    (numpy would otherwise pickle the full contents)."""

    def __init__(self, arr: np.memmap):
        self.filename, self.offset = str(arr.filename), int(arr.offset)
        self.dtype, self.shape = arr.dtype, tuple(arr.shape)

    @staticmethod
    def wrap(arr: Any) -> Any:
        if (isinstance(arr, np.memmap) and arr.filename is not None
                and isinstance(arr.base, mmap.mmap) and arr.flags.c_contiguous):
            return _MemmapRef(arr)
        return arr  # slices of a map, plain arrays, other array types: pickled as they are

    def open(self) -> np.memmap:
        return np.memmap(self.filename, dtype=self.dtype, mode="r", offset=self.offset,
                         shape=self.shape)


class TwoViewDataset(torch.utils.data.Dataset):
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

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["images"] = _MemmapRef.wrap(self.images)
        state["masks"] = _MemmapRef.wrap(self.masks)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        for key in ("images", "masks"):
            if isinstance(state[key], _MemmapRef):
                state[key] = state[key].open()
        self.__dict__.update(state)

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
