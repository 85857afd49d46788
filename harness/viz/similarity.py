"""Point-similarity maps (thesis §4.3, Figures 4.2/4.3, after Bai et al.).

An image goes through an encoder at a higher resolution than its own (the thesis fed 896 px
inputs for 224 px images, 4x, to get a 28 x 28 instead of a 7 x 7 feature map); the encoder's
last, un-pooled feature map is L2-normalised per position; the cosine similarity of the anchor's
feature (the position under the anchor pixel) to every position is the similarity grid, which is
upsampled bilinearly to the image size for display.

Pure functions of tensors: no dataset, method or file is named here.
"""

from __future__ import annotations

import math
import re
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as nnf

from harness.errors import SpecError

#: Output stride of the encoders' last feature map (smp encoders at depth 5).
STRIDE = 32
#: Default encoder input: this many times the image side (the thesis's 224 -> 896 px).
DEFAULT_SCALE = 4

Point = tuple[float, float]  # (x, y) = (column, row) in image pixels


def parse_points(text: str) -> list[Point]:
    """``"x,y;x,y"`` -> ``[(x, y), ...]`` (pixels; x is the column, y the row)."""
    points: list[Point] = []
    for item in (text or "").split(";"):
        if not item.strip():
            continue
        parts = [p.strip() for p in item.split(",")]
        try:
            if len(parts) != 2:
                raise ValueError
            x, y = float(parts[0]), float(parts[1])
            if not (math.isfinite(x) and math.isfinite(y)):
                raise ValueError
        except ValueError:
            raise SpecError(f"--points {text!r}: {item.strip()!r} is not 'x,y' (expected "
                            f"pixel coordinates such as \"12,30;40,8\")") from None
        points.append((x, y))
    if not points:
        raise SpecError("--points: no point given (expected pixel coordinates such as \"12,30;40,8\")")
    return points


def check_points(points: Sequence[Point], image_shape: tuple[int, int]) -> None:
    """Every point lies inside an ``(H, W)`` image (0 <= x < W, 0 <= y < H)."""
    h, w = image_shape
    outside = [p for p in points if not (0 <= p[0] < w and 0 <= p[1] < h)]
    if outside:
        shown = ", ".join(f"{_fmt(x)},{_fmt(y)}" for x, y in outside)
        raise SpecError(f"--points: {shown} outside the image ({w} x {h} px: x in 0..{w - 1}, "
                        f"y in 0..{h - 1})")


def _fmt(v: float) -> str:
    return f"{v:g}"


def input_shape(image_shape: tuple[int, int], size: int | None = None) -> tuple[int, int]:
    """The encoder input for an ``(H, W)`` image: its longer side scaled to ``size`` (default
    :data:`DEFAULT_SCALE` x the image side), each side rounded to a multiple of the stride so
    that every feature position covers the same block of image pixels."""
    h, w = image_shape
    size = size if size is not None else DEFAULT_SCALE * max(h, w)
    scale = size / max(h, w)
    return tuple(max(STRIDE, round(s * scale / STRIDE) * STRIDE) for s in (h, w))  # type: ignore[return-value]


@torch.no_grad()
def feature_map(encoder: Callable[[torch.Tensor], object], image: torch.Tensor,
                size: tuple[int, int] | None = None) -> torch.Tensor:
    """The encoder's last feature map of one ``(3, H, W)`` (already normalised) image, resized
    bilinearly to ``size`` first; ``(C, h, w)``, unit length at every position (all-zero
    positions stay zero). An encoder returning a list of maps (smp) contributes its last one."""
    if isinstance(encoder, torch.nn.Module):
        encoder.eval()
    x = image.unsqueeze(0).float() if image.dim() == 3 else image.float()
    if size is not None and tuple(size) != tuple(x.shape[-2:]):
        x = nnf.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)
    out = encoder(x)
    if isinstance(out, (list, tuple)):
        out = out[-1]
    return nnf.normalize(out[0].float(), dim=0, eps=1e-12)


def anchor_cell(point: Point, image_shape: tuple[int, int], grid_shape: tuple[int, int]) -> tuple[int, int]:
    """``(row, col)`` of the feature position under the pixel ``point = (x, y)``."""
    (x, y), (h, w), (gh, gw) = point, image_shape, grid_shape
    return min(int(y * gh / h), gh - 1), min(int(x * gw / w), gw - 1)


def cosine_grid(features: torch.Tensor, cell: tuple[int, int]) -> torch.Tensor:
    """Cosine similarity ``(h, w)`` of the (unit) feature at ``cell`` to every position."""
    return torch.einsum("chw,c->hw", features, features[:, cell[0], cell[1]])


def cosine_map(features: torch.Tensor, point: Point, image_shape: tuple[int, int]) -> np.ndarray:
    """The similarity grid of the anchor under ``point``, upsampled bilinearly to
    ``image_shape``: an ``(H, W)`` float32 array."""
    grid = cosine_grid(features, anchor_cell(point, image_shape, tuple(features.shape[-2:])))
    up = nnf.interpolate(grid[None, None], size=tuple(image_shape), mode="bilinear",
                         align_corners=False)
    return up[0, 0].clamp_(-1.0, 1.0).cpu().numpy().astype(np.float32)


def similarity_map(encoder: Callable[[torch.Tensor], object], image: torch.Tensor, point: Point,
                   size: tuple[int, int] | None = None) -> np.ndarray:
    """Point-similarity map ``(H, W)`` of ``point = (x, y)`` in a ``(3, H, W)`` normalised image:
    cosine similarity of the anchor's feature to every feature position of the encoder's last
    map (input resized to ``size``, e.g. :func:`input_shape`), upsampled to the image."""
    return cosine_map(feature_map(encoder, image, size), point, tuple(image.shape[-2:]))


def safe_name(text: str) -> str:
    """A sample id as a file-name part (``fold1/0003`` -> ``fold1_0003``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "image"
