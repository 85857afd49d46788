"""Colour augmentation of pretraining views (thesis Table A.1): colour jitter, grayscale,
blur and normalisation fused in one transform (:class:`ColorAugment`), with a branch-free hue
shift (:func:`adjust_hue_fast`). Split from :mod:`harness.data.views`, which re-exports them."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F


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


def adjust_hue_fast(img: torch.Tensor, hue_factor: float | torch.Tensor) -> torch.Tensor:
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
    # a tensor ``hue_factor`` broadcasts against (..., H, W): per-sample shifts, shape (B, 1, 1)
    if not isinstance(hue_factor, torch.Tensor) and not -0.5 <= hue_factor <= 0.5:
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
