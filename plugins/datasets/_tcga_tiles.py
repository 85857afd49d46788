"""Preparing the ``tcga`` dataset from a folder of pre-cut tiles (see :mod:`.tcga`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from harness.console import progress_bar
from harness.errors import DataError, one_line

from . import _wsi
from ._tcga_cache import Preparation, list_files, select, strip_ext

TILE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff")

#: (relative path, path, crop offset or None) of a tile to decode
Item = tuple[str, str, "tuple[int, int] | None"]


def to_rgb(im: Any) -> np.ndarray:
    """A PIL image as (H, W, 3) uint8 RGB; transparency composited over white."""
    if im.mode == "P":
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        return _wsi.composite_on_white(np.asarray(im.convert("RGBA")))
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N"):  # 16-bit grayscale: keep the high byte
        arr = (np.asarray(im).astype(np.uint32) >> 8).astype(np.uint8)
        return np.repeat(arr[..., None], 3, axis=-1)
    if im.mode != "RGB":
        im = im.convert("RGB")
    return np.asarray(im)


def prepare_tiles(prep: Preparation, source: Path) -> None:
    from PIL import Image

    cfg = prep.config
    t = cfg.tile_size
    files, ignored = list_files(source, TILE_EXTENSIONS)
    if not files:
        raise DataError(f"{source}: no tiles found (png, jpg, jpeg, tif or tiff files)")
    _check_unique_ids(source, files)
    usable = _usable_tiles(prep, files)
    del files  # per-tile bookkeeping is what grows with the tile count: keep only what is used
    chosen = [usable[i] for i in select(len(usable), cfg.max_tiles, cfg.seed)]
    if not chosen:
        skipped = prep.skipped
        raise DataError(f"{source}: no usable {t}x{t} tile ({len(skipped)} skipped, e.g. "
                        f"{skipped[0]['file']}: {skipped[0]['reason']})" if skipped else
                        f"{source}: no usable tile")

    def decode(item: Item) -> np.ndarray:
        _, path, crop = item
        with Image.open(path) as im:
            if crop is not None:
                im = im.crop((crop[0], crop[1], crop[0] + t, crop[1] + t))
            arr = to_rgb(im)
        if arr.shape != (t, t, 3):
            raise ValueError(f"decoded to shape {arr.shape}")
        return arr

    def provenance(item: Item) -> dict[str, Any]:
        return {"file": item[0], **({"crop": list(item[2])} if item[2] is not None else {})}

    prep.write(source, "tiles", chosen, decode, provenance, lambda item: strip_ext(item[0]),
               extra={"ignored_files": ignored, "candidates": len(usable)})


def _check_unique_ids(source: Path, files: list[tuple[str, Path]]) -> None:
    by_id: dict[str, str] = {}
    for rel, _ in files:
        sid = strip_ext(rel)
        if sid in by_id:
            raise DataError(f"{source / rel}: same tile id '{sid}' as {source / by_id[sid]} "
                            f"(two files differ only in their extension)")
        by_id[sid] = rel


def _usable_tiles(prep: Preparation, files: list[tuple[str, Path]]) -> list[Item]:
    """Pass 1, headers only (sizes), so the tile count is known before decoding: the tiles of
    the right size, and larger ones to crop (``resize_policy: center_crop``)."""
    from PIL import Image

    cfg = prep.config
    t = cfg.tile_size
    usable: list[Item] = []
    with progress_bar(f"{prep.name}: reading {len(files)} tile headers", len(files)) as advance:
        for rel, path in files:
            advance()
            try:
                with Image.open(path) as im:
                    w, h = im.size
            except Image.DecompressionBombError:
                w = h = -1
            except Exception as exc:  # noqa: BLE001 - any unreadable file
                prep.corrupt(path, f"unreadable image ({one_line(exc, True)})", rel)
                continue
            path_s = str(path)  # a str holds a path in a fifth of a Path's memory
            if (w, h) == (t, t):
                usable.append((rel, path_s, None))
                continue
            size = f"{w}x{h}" if w > 0 else "far larger than a tile"
            if cfg.resize_policy == "error":
                raise DataError(f"{path_s}: tile is {size}, expected {t}x{t} (resize_policy: "
                                f"error; use skip or center_crop)")
            if cfg.resize_policy == "center_crop" and w >= t and h >= t:
                usable.append((rel, path_s, ((w - t) // 2, (h - t) // 2)))
            else:
                prep.skip({"file": rel, "reason": f"size {size} != {t}x{t}"})
    return usable
