"""Whole-slide tiling helpers: tissue mask, tile grid, tissue fraction per tile, slide opening.

Numpy/scipy only (no OpenCV). OpenSlide is optional: :func:`require_openslide` imports it and
turns its absence into a :class:`~harness.errors.DataError` that names the extra to install.

The tissue mask follows CLAM's ``WholeSlideImage.segmentTissue`` (github.com/mahmoodlab/CLAM,
wsi_core/WholeSlideImage.py; Lu et al., Nat. Biomed. Eng. 2021): RGB of a low-resolution level
-> HSV saturation (0..255, as OpenCV computes it) -> median blur with a 7x7 kernel (edge pixels
replicated, as ``cv2.medianBlur``) -> Otsu threshold (a pixel is tissue when its blurred
saturation is strictly above the threshold, as ``cv2.THRESH_BINARY``). White background has a
low saturation, stained tissue a high one. CLAM's optional morphological close and contour-area
filter are not applied: tiles are kept by their tissue fraction instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from harness.errors import DataError

WSI_EXTRA_HINT = "install the wsi extra: pip install 'pathbench-harness[wsi]'"

#: Extensions only whole-slide formats use (a file with one of these is a slide, never a tile).
SLIDE_ONLY_EXTENSIONS = (".svs", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".svslide", ".bif")
#: Extensions that may be a whole-slide image or a plain tile (decided by opening the file).
AMBIGUOUS_EXTENSIONS = (".tif", ".tiff")
SLIDE_EXTENSIONS = SLIDE_ONLY_EXTENSIONS + AMBIGUOUS_EXTENSIONS


# --- OpenSlide -------------------------------------------------------------------------------------

def require_openslide() -> Any:
    """The ``openslide`` module, or a DataError telling how to install it."""
    try:
        import openslide
    except ImportError as exc:  # also OSError-like failures to load the bundled library
        raise DataError(f"whole-slide images need OpenSlide ({type(exc).__name__}: {exc}); "
                        f"{WSI_EXTRA_HINT}") from None
    except OSError as exc:
        raise DataError(f"OpenSlide could not be loaded ({exc}); {WSI_EXTRA_HINT}") from None
    return openslide


def openslide_available() -> bool:
    try:
        require_openslide()
    except DataError:
        return False
    return True


def looks_like_slide(path: Path) -> bool:
    """True when OpenSlide recognises ``path`` as a whole-slide image: a vendor format, or a
    generic tiled TIFF with more than one pyramid level. A single-level generic TIFF (e.g. a
    tiled 512x512 tile) counts as a plain image."""
    openslide = require_openslide()
    try:
        fmt = openslide.OpenSlide.detect_format(str(path))
    except Exception:  # noqa: BLE001 - unreadable files are judged later
        return False
    if fmt is None:
        return False
    if fmt != "generic-tiff":
        return True
    try:
        with openslide.OpenSlide(str(path)) as slide:
            return slide.level_count > 1
    except Exception:  # noqa: BLE001
        return False


def slide_mpp(properties: Any) -> tuple[float, float] | None:
    """Level-0 (mpp_x, mpp_y) in micrometres per pixel, or None when the slide records none."""
    def get(key: str) -> float | None:
        try:
            value = float(properties[key])
        except (KeyError, TypeError, ValueError):
            return None
        return value if np.isfinite(value) and value > 0 else None

    mx, my = get("openslide.mpp-x"), get("openslide.mpp-y")
    if mx is None and my is None:
        return None
    return (mx if mx is not None else my, my if my is not None else mx)  # type: ignore[return-value]


def choose_level(mpp0: tuple[float, float], downsamples: tuple[float, ...], target: float,
                 tolerance: float) -> int | None:
    """The first (finest) pyramid level whose mpp (level-0 mpp x downsample, both axes) lies
    within ``target +- tolerance``; None when no level does. For a 40x scan this is level 0."""
    for level, ds in enumerate(downsamples):
        if all(abs(m * ds - target) <= tolerance + 1e-9 for m in mpp0):
            return level
    return None


def composite_on_white(rgba: np.ndarray) -> np.ndarray:
    """RGBA (as OpenSlide's ``read_region`` returns, not premultiplied) -> RGB over white, so
    that regions outside the scanned area (alpha 0) read as background, not black."""
    rgb = rgba[..., :3]
    alpha = rgba[..., 3]
    if alpha.min(initial=255) == 255:
        return np.ascontiguousarray(rgb)
    a = alpha[..., None].astype(np.float32) / 255.0
    out = rgb.astype(np.float32) * a + 255.0 * (1.0 - a)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


# --- tissue mask -----------------------------------------------------------------------------------

def hsv_saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation of a uint8 RGB image on OpenCV's 0..255 scale: ``255 * (max - min) / max``
    (0 where max is 0), rounded."""
    rgb = np.asarray(rgb)
    mx = rgb.max(axis=-1).astype(np.float32)
    mn = rgb.min(axis=-1).astype(np.float32)
    sat = np.zeros_like(mx)
    np.divide(255.0 * (mx - mn), mx, out=sat, where=mx > 0)
    return np.clip(np.rint(sat), 0, 255).astype(np.uint8)


def otsu_threshold(values: np.ndarray) -> int:
    """Otsu's threshold of uint8 values (256-bin histogram; the first maximiser of the
    between-class variance, as OpenCV). Foreground is ``values > threshold``."""
    hist = np.bincount(np.asarray(values, dtype=np.uint8).ravel(), minlength=256).astype(np.float64)
    total = hist.sum()
    if total == 0:
        return 0
    p = hist / total
    omega = np.cumsum(p)
    mu = np.cumsum(p * np.arange(256))
    denom = omega * (1.0 - omega)
    sigma_b = np.zeros(256)
    np.divide((mu[-1] * omega - mu) ** 2, denom, out=sigma_b, where=denom > 1e-12)
    return int(np.argmax(sigma_b))


def tissue_mask(rgb: np.ndarray, median_kernel: int = 7,
                threshold: int | None = None) -> tuple[np.ndarray, int]:
    """Boolean tissue mask of a low-resolution RGB image and the saturation threshold used
    (Otsu when ``threshold`` is None, else the fixed value, as CLAM's ``sthresh``)."""
    sat = hsv_saturation(rgb)
    if median_kernel > 1:
        from scipy.ndimage import median_filter  # scipy on use: `harness validate`/`list` import this module

        sat = median_filter(sat, size=median_kernel, mode="nearest")
    t = otsu_threshold(sat) if threshold is None else int(threshold)
    return sat > t, t


# --- tile grid -------------------------------------------------------------------------------------

def tile_grid(width: int, height: int, step: int) -> tuple[np.ndarray, np.ndarray]:
    """Level-0 top-left corners (xs, ys) of the non-overlapping ``step`` x ``step`` tiles that
    lie fully inside a ``width`` x ``height`` slide (partial tiles at the right and bottom
    edges are dropped)."""
    xs = np.arange(0, max(width - step + 1, 0), step, dtype=np.int64)
    ys = np.arange(0, max(height - step + 1, 0), step, dtype=np.int64)
    return xs, ys


def _overlap_weights(starts: np.ndarray, length: float, scale: float, n_pixels: int) -> np.ndarray:
    """(len(starts), n_pixels): how much of each mask pixel [j, j+1) the interval
    [start / scale, (start + length) / scale) covers."""
    a = starts.astype(np.float64)[:, None] / scale
    b = (starts.astype(np.float64)[:, None] + length) / scale
    j = np.arange(n_pixels, dtype=np.float64)[None, :]
    return np.clip(np.minimum(b, j + 1) - np.maximum(a, j), 0.0, None)


def tissue_fractions(mask: np.ndarray, scale_x: float, scale_y: float, xs: np.ndarray,
                     ys: np.ndarray, step: float) -> np.ndarray:
    """(len(ys), len(xs)) tissue fraction of each level-0 tile footprint ``[x, x+step) x
    [y, y+step)``, area-weighted over the mask pixels it overlaps (``scale_*`` = level-0
    pixels per mask pixel along each axis, need not be integers)."""
    if len(xs) == 0 or len(ys) == 0:
        return np.zeros((len(ys), len(xs)))
    h, w = mask.shape
    wx = _overlap_weights(xs, step, scale_x, w)
    wy = _overlap_weights(ys, step, scale_y, h)
    covered = wy @ mask.astype(np.float64) @ wx.T
    area = wy.sum(1)[:, None] * wx.sum(1)[None, :]
    frac = np.zeros_like(covered)
    np.divide(covered, area, out=frac, where=area > 0)
    return frac


@dataclass
class SlideTiles:
    """The tiling of one slide: level used, step at level 0, candidate tiles and tissue mask."""

    level: int
    downsample: float
    step: int  # level-0 pixels per tile side
    xs: np.ndarray
    ys: np.ndarray
    fractions: np.ndarray  # (len(ys), len(xs))
    mask: np.ndarray
    mask_scale: tuple[float, float]
    threshold: int

    def kept(self, min_tissue: float) -> list[tuple[int, int]]:
        """Level-0 (x, y) of the tiles with a tissue fraction >= ``min_tissue``, row-major."""
        rows, cols = np.nonzero(self.fractions >= min_tissue - 1e-9)
        return [(int(self.xs[c]), int(self.ys[r])) for r, c in zip(rows, cols)]


def read_mask_image(slide: Any, mask_downsample: float) -> tuple[np.ndarray, float, float]:
    """A low-resolution RGB image of the whole slide (the pyramid level closest to
    ``mask_downsample``, or a thumbnail when the pyramid has no level that coarse) and its
    level-0 pixels per pixel along x and y."""
    w0, h0 = slide.level_dimensions[0]
    level = slide.get_best_level_for_downsample(mask_downsample)
    lw, lh = slide.level_dimensions[level]
    if slide.level_downsamples[level] * 2 < mask_downsample:  # too fine: use a thumbnail
        size = (max(1, round(w0 / mask_downsample)), max(1, round(h0 / mask_downsample)))
        thumb = np.asarray(slide.get_thumbnail(size).convert("RGB"))
    else:
        thumb = composite_on_white(np.asarray(slide.read_region((0, 0), level, (lw, lh))))
    return thumb, w0 / thumb.shape[1], h0 / thumb.shape[0]


def plan_slide(slide: Any, level: int, tile_size: int, mask_downsample: float = 64.0,
               median_kernel: int = 7, threshold: int | None = None) -> SlideTiles:
    """Tissue mask and candidate grid of an open OpenSlide slide read at ``level``."""
    ds = float(slide.level_downsamples[level])
    step = int(round(tile_size * ds))
    w0, h0 = slide.level_dimensions[0]
    thumb, sx, sy = read_mask_image(slide, mask_downsample)
    mask, t = tissue_mask(thumb, median_kernel, threshold)
    xs, ys = tile_grid(w0, h0, step)
    frac = tissue_fractions(mask, sx, sy, xs, ys, step)
    return SlideTiles(level=level, downsample=ds, step=step, xs=xs, ys=ys, fractions=frac,
                      mask=mask, mask_scale=(sx, sy), threshold=t)


def read_tile(slide: Any, x: int, y: int, level: int, tile_size: int) -> np.ndarray:
    """The ``tile_size`` x ``tile_size`` RGB tile at level-0 (x, y) read at ``level``."""
    region = slide.read_region((int(x), int(y)), level, (tile_size, tile_size))
    return composite_on_white(np.asarray(region))
