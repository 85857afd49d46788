"""Preparing the ``tcga`` dataset from whole-slide images (see :mod:`.tcga`): each slide's
level at the target resolution cut into tiles kept by an automatic tissue mask."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from harness.console import progress_bar
from harness.errors import DataError, one_line

from . import _wsi
from ._tcga_cache import Preparation, list_files, select, strip_ext

#: (relative path, path, level-0 x, level-0 y, level read, level-0 footprint) of a tile
Item = tuple[str, Path, int, int, int, int]


def prepare_slides(prep: Preparation, source: Path) -> None:
    openslide = _wsi.require_openslide()
    cfg = prep.config
    files, _ = list_files(source, _wsi.SLIDE_EXTENSIONS)
    if not files:
        raise DataError(f"{source}: no whole-slide images found "
                        f"({', '.join(_wsi.SLIDE_EXTENSIONS)})")
    slides: list[dict[str, Any]] = []
    candidates: list[Item] = []
    with progress_bar(f"{prep.name}: tissue masks of {len(files)} slides", len(files)) as advance:
        for rel, path in files:
            candidates += _plan_one(prep, openslide, rel, path, slides)
            advance()
    chosen = [candidates[i] for i in select(len(candidates), cfg.max_tiles, cfg.seed)]
    if not chosen:
        reasons = "".join(f"; {s['file']}: {s['reason']}" for s in prep.skipped[:3])
        raise DataError(f"{source}: no tile with >= {cfg.min_tissue:g} tissue in "
                        f"{len(slides)} usable slides ({len(prep.skipped)} skipped{reasons})")
    reader = _SlideReader(openslide, cfg.tile_size)
    try:
        prep.write(source, "slides", chosen, reader.decode,
                   lambda it: {"file": it[0], "x": it[2], "y": it[3], "level": it[4], "size": it[5]},
                   lambda it: f"{strip_ext(it[0])}/{it[2]}_{it[3]}",
                   extra={"slides": slides, "candidates": len(candidates)}, decode_errors=(DataError,))
    finally:
        reader.close()


class _SlideReader:
    """Reads tiles in decoding threads; OpenSlide handles are thread-safe, and each thread
    keeps its current slide open."""

    def __init__(self, openslide: Any, tile_size: int):
        self.openslide, self.tile_size = openslide, tile_size
        self.local = threading.local()
        self.handles: list[Any] = []
        self.lock = threading.Lock()

    def decode(self, item: Item) -> np.ndarray:
        rel, path, x, y, level, _ = item
        local = self.local
        if getattr(local, "rel", None) != rel:
            slide = self.openslide.OpenSlide(str(path))
            with self.lock:
                if getattr(local, "slide", None) is not None:
                    self.handles.remove(local.slide)
                    local.slide.close()
                self.handles.append(slide)
            local.slide, local.rel = slide, rel
        try:
            return _wsi.read_tile(local.slide, x, y, level, self.tile_size)
        except Exception as exc:  # noqa: BLE001
            raise DataError(f"{path}: cannot read the tile at level-0 ({x}, {y}) "
                            f"({one_line(exc, True)})") from None

    def close(self) -> None:
        with self.lock:
            for slide in self.handles:
                slide.close()
            self.handles.clear()


def _plan_one(prep: Preparation, openslide: Any, rel: str, path: Path,
              slides: list[dict[str, Any]]) -> list[Item]:
    """Candidate tiles of one slide; records the slide in ``slides`` or, when it cannot be
    tiled at the target resolution, among the skipped files."""
    cfg = prep.config
    try:
        fmt = openslide.OpenSlide.detect_format(str(path))
    except Exception:  # noqa: BLE001
        fmt = None
    if fmt is None:
        prep.skip({"file": rel, "reason": "not a whole-slide image OpenSlide reads"})
        return []
    try:
        slide = openslide.OpenSlide(str(path))
    except Exception as exc:  # noqa: BLE001
        prep.corrupt(path, f"OpenSlide cannot open it ({one_line(exc, True)})", rel)
        return []
    with slide:
        props = slide.properties
        mpp = _wsi.slide_mpp(props)
        base = {"file": rel, "vendor": props.get("openslide.vendor", fmt),
                "objective_power": props.get("openslide.objective-power"),
                "mpp": list(mpp) if mpp else None, "dimensions": list(slide.level_dimensions[0])}
        if mpp is None:
            prep.skip({**base, "reason": "no mpp recorded (magnification unknown)"})
            return []
        level = _wsi.choose_level(mpp, tuple(slide.level_downsamples), cfg.target_mpp,
                                  cfg.mpp_tolerance)
        if level is None:
            prep.skip({**base, "reason": (
                f"mpp {mpp[0]:.4g} at level 0 (~{10 / mpp[0]:.0f}x) and no level within "
                f"{cfg.target_mpp:g}+-{cfg.mpp_tolerance:g} um/px")})
            return []
        try:
            plan = _wsi.plan_slide(slide, level, cfg.tile_size, cfg.mask_downsample, 7,
                                   cfg.saturation_threshold)
        except Exception as exc:  # noqa: BLE001
            prep.corrupt(path, f"cannot read its low-resolution level ({one_line(exc, True)})", rel)
            return []
        kept = plan.kept(cfg.min_tissue)
        slides.append({**base, "level": level, "downsample": plan.downsample,
                       "grid": [len(plan.xs), len(plan.ys)],
                       "candidates": int(plan.fractions.size), "kept": len(kept),
                       "tissue_fraction": round(float(plan.mask.mean()), 4),
                       "saturation_threshold": plan.threshold})
        return [(rel, path, x, y, level, plan.step) for x, y in kept]
