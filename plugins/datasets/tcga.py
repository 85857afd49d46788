"""``tcga``: unlabeled H&E tiles for pretraining (TCGA breast cancer slides, reference §5).

The thesis pretrained on ~150,000 non-overlapping 512x512 tiles at 40x cut from manually
selected regions of TCGA breast-cancer whole-slide images; neither the slide list nor the ROIs
were published. This plugin therefore accepts either

* **tiles**: a folder of pre-cut tiles (png/jpg/jpeg/tif/tiff, searched recursively, hidden
  files ignored), sorted by relative path; a tile's id is its relative path without the
  extension. Every tile must be ``tile_size`` x ``tile_size``; other sizes follow
  ``resize_policy``. RGBA/palette images are composited over white, grayscale/CMYK converted to
  RGB. An unreadable image is a DataError naming it (``corrupt_policy: error``) or is skipped
  and reported (``skip``).
* **slides**: a folder (or one file) of whole-slide images OpenSlide reads (.svs, .ndpi,
  .mrxs, .scn, .vms, .bif, .svslide, pyramidal .tif/.tiff ...). For each slide the finest
  pyramid level whose resolution is ``target_mpp +- mpp_tolerance`` um/px (default 0.25 +- 0.05,
  i.e. 40x; normally level 0) is cut into non-overlapping ``tile_size`` tiles (partial edge
  tiles dropped); a tile is kept when its tissue fraction under an automatic tissue mask is
  ``>= min_tissue``. The mask (``_wsi.tissue_mask``, §5.3): HSV saturation of a low-resolution
  level (downsample ~``mask_downsample``), median blur 7, Otsu threshold. Slides without an mpp
  or at another magnification (e.g. 20x TCGA scans, 0.5 um/px) are skipped, never resampled,
  and reported. Slides need the ``wsi`` extra (openslide-python + openslide-bin).

``mode: auto`` chooses slides when a file has a slide-only extension (.svs, .ndpi ...) or a
.tif/.tiff opens in OpenSlide as a vendor format or a multi-level pyramid; otherwise tiles.

``prepare`` decodes every tile once into ``tiles.npy``, an ``(N, T, T, 3)`` uint8 array that
:meth:`TCGADataset.unlabeled_images` returns as a read-only memory map, so pretraining never
decodes an image per epoch. ``tiles.json`` holds the id and provenance of every tile (source
file; for slides the level-0 x/y, the level read and the level-0 footprint), and ``READY`` the
resolved mode, counts, per-slide statistics and every skipped file with its reason.
``max_tiles`` keeps a random subset (deterministic by ``seed``, kept in source order).

There is no official tile release, so ``verify`` checks the manifest checksums, the shape and
dtype of ``tiles.npy`` and that the tile count equals the count recorded at prepare time
(READY's ``complete_release`` is always False). The dataset has no labels, so it has no folds,
no metric (``metric_family = "none"``) and cannot be the fine-tuning dataset of a spec: name it
under ``unlabeled:``.
"""

from __future__ import annotations

import json
import os
import threading
from contextlib import closing
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from harness.data.base import DatasetConfig, LabeledArrays, prepare_command_for
from harness.data.cache import CachedDataset, CacheWriter, verify_manifest
from harness.errors import DataError
from harness.hookspecs import hookimpl

from . import _wsi

TILE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
_MAX_TIFF_PROBES = 16  # .tif files opened with OpenSlide when mode=auto decides tiles/slides
_DECODE_THREADS = 8  # threads decoding tiles (PIL and OpenSlide release the GIL)
_PRINTED_SKIPS = 20  # skipped files printed one per line (all are recorded in READY)


class TCGAConfig(DatasetConfig):
    mode: Literal["auto", "tiles", "slides"] = Field(
        "auto", description="'tiles': a folder of pre-cut tiles; 'slides': whole-slide images "
        "tiled here; 'auto': slides if any file is a whole-slide image, else tiles.")
    tile_size: int = Field(512, ge=16, le=8192, description="Side of each tile in pixels (thesis: 512).")
    resize_policy: Literal["error", "skip", "center_crop"] = Field(
        "skip", description="A pre-cut tile of another size: 'error' stops with a DataError, "
        "'skip' leaves it out (recorded in READY), 'center_crop' crops a larger one to the "
        "centre (a smaller one is skipped).")
    corrupt_policy: Literal["error", "skip"] = Field(
        "error", description="An unreadable tile or slide: 'error' stops with a DataError naming "
        "it; 'skip' leaves it out and records it.")
    target_mpp: float = Field(0.25, gt=0, description="Resolution to tile slides at, in um/px "
                              "(0.25 = 40x, as the thesis).")
    mpp_tolerance: float = Field(0.05, ge=0, description="Accepted deviation from target_mpp; "
                                 "slides with no level in range are skipped and reported.")
    min_tissue: float = Field(0.5, ge=0, le=1, description="Keep a slide tile when at least this "
                              "fraction of its footprint is tissue.")
    mask_downsample: float = Field(64.0, ge=1, description="Downsample of the low-resolution "
                                   "level the tissue mask is computed on (CLAM: ~64).")
    saturation_threshold: int | None = Field(
        None, ge=0, le=255, description="Fixed saturation threshold (CLAM's sthresh) instead of "
        "Otsu; None = Otsu (default).")
    max_tiles: int | None = Field(None, ge=1, description="Keep at most this many tiles, a random "
                                  "subset drawn with `seed` (for quick experiments).")
    seed: int = Field(0, description="Seed of the max_tiles subset.")


def _one_line(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())


def _list_files(source: Path, extensions: tuple[str, ...]) -> tuple[list[tuple[str, Path]], int]:
    """(relative posix path, path) of the files under ``source`` with one of ``extensions``,
    sorted by relative path, hidden files and folders left out; and the number of other files."""
    if source.is_file():
        return [(source.name, source)], 0
    found, other = [], 0
    for dirpath, dirnames, filenames in os.walk(source):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for fn in filenames:
            if fn.startswith("."):
                continue
            path = Path(dirpath) / fn
            if path.suffix.lower() in extensions:
                found.append((path.relative_to(source).as_posix(), path))
            else:
                other += 1
    found.sort(key=lambda item: item[0])
    return found, other


def _strip_ext(rel: str) -> str:
    return rel.rsplit(".", 1)[0] if "." in rel.rsplit("/", 1)[-1] else rel


def _to_rgb(im: Any) -> np.ndarray:
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


def _attempt(decode, item) -> tuple[np.ndarray | None, Exception | None]:
    try:
        return decode(item), None
    except Exception as exc:  # noqa: BLE001 - judged by the caller
        return None, exc


def _decode_all(items: list, decode, workers: int):
    """Yield ``(item, (tile, error))`` in order; decoding runs in ``workers`` threads (PIL
    releases the GIL while it decompresses), a few blocks ahead at most."""
    if workers <= 1:
        for item in items:
            yield item, _attempt(decode, item)
        return
    from concurrent.futures import ThreadPoolExecutor

    block = 4 * workers
    with ThreadPoolExecutor(workers, thread_name_prefix="tcga-decode") as pool:
        for start in range(0, len(items), block):
            chunk = items[start:start + block]
            yield from zip(chunk, pool.map(lambda it: _attempt(decode, it), chunk))


def _select(n: int, max_tiles: int | None, seed: int) -> np.ndarray:
    """Indices of the kept entries: all, or a seeded random subset kept in original order."""
    if max_tiles is None or n <= max_tiles:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=max_tiles, replace=False))


class TCGADataset(CachedDataset):
    name = "tcga"
    version = "1"
    labeled = False
    has_unlabeled = True
    class_names: tuple[str, ...] = ()
    metric_family = "none"
    split_scheme = "none"
    magnification = "40x"
    description = ("Unlabeled 512x512 H&E tiles at 40x for pretraining: a folder of pre-cut tiles, "
                   "or TCGA breast-cancer whole-slide images tiled with an automatic tissue mask.")
    source_hint = ("TCGA-BRCA diagnostic slides (.svs) from the GDC Data Portal, "
                   "https://portal.gdc.cancer.gov/ (open access, no registration; download with "
                   "gdc-client and a manifest), or a folder of pre-cut 512x512 tiles; slides need "
                   f"the wsi extra: pip install 'pathbench-harness[wsi]'")
    Config = TCGAConfig

    config: TCGAConfig

    # --- preparation ---------------------------------------------------------------------------
    @classmethod
    def conformance_fixture(cls, folder: Path) -> dict:
        """A tiny source in the official layout, for `harness plugin check`."""
        from ._fixtures import tiles

        return {"source": tiles(folder / "src"), "config": {"mode": "tiles", "tile_size": 64}}

    def prepare(self, source: Path | None = None) -> None:
        if source is None:
            raise DataError(f"{self.name}: --source PATH is required ({self.source_hint})")
        source = Path(source).expanduser()
        if not source.exists():
            raise DataError(f"{source}: not found (give a folder of tiles or whole-slide images)")
        mode = self._resolve_mode(source)
        if mode == "slides":
            self._prepare_slides(source)
        else:
            self._prepare_tiles(source)

    def _resolve_mode(self, source: Path) -> str:
        cfg = self.config
        if cfg.mode != "auto":
            if cfg.mode == "slides":
                _wsi.require_openslide()
            return cfg.mode
        files, _ = _list_files(source, TILE_EXTENSIONS + _wsi.SLIDE_EXTENSIONS)
        if source.is_file() and source.suffix.lower() not in TILE_EXTENSIONS:
            _wsi.require_openslide()
            return "slides"
        if any(p.suffix.lower() in _wsi.SLIDE_ONLY_EXTENSIONS for _, p in files):
            _wsi.require_openslide()
            return "slides"
        tiffs = [p for _, p in files if p.suffix.lower() in _wsi.AMBIGUOUS_EXTENSIONS]
        if not tiffs:
            return "tiles"
        if _wsi.openslide_available():
            probe = tiffs if source.is_file() else tiffs[:_MAX_TIFF_PROBES]
            return "slides" if any(_wsi.looks_like_slide(p) for p in probe) else "tiles"
        # No OpenSlide: a TIFF far larger than a tile is most likely a whole-slide image.
        from PIL import Image

        for path in tiffs[:_MAX_TIFF_PROBES]:
            try:
                with Image.open(path) as im:
                    big = max(im.size) > 8 * cfg.tile_size or getattr(im, "n_frames", 1) > 1
            except Image.DecompressionBombError:
                big = True
            except Exception:  # noqa: BLE001 - judged when the tile is read
                continue
            if big:
                raise DataError(f"{path}: looks like a whole-slide image (large or multi-page "
                                f"TIFF) and OpenSlide is not installed; {_wsi.WSI_EXTRA_HINT} "
                                f"(or set mode: tiles)")
        return "tiles"

    # tiles -------------------------------------------------------------------------------------
    def _corrupt(self, path: Path, what: str, skipped: list[dict[str, Any]], rel: str) -> None:
        if self.config.corrupt_policy == "error":
            raise DataError(f"{path}: {what}")
        self._skip(skipped, {"file": rel, "reason": what})

    def _skip(self, skipped: list[dict[str, Any]], entry: dict[str, Any]) -> None:
        """Record a skipped file (all go to READY) and print it (the first few, as they come)."""
        from harness.engine.runtime import console

        skipped.append(entry)
        if len(skipped) <= _PRINTED_SKIPS:
            console.print(f"{self.name}: skipped {entry['file']}: {entry['reason']}",
                          markup=False, highlight=False, soft_wrap=True)

    def _prepare_tiles(self, source: Path) -> None:
        from PIL import Image

        from harness.engine.runtime import progress_bar

        cfg = self.config
        t = cfg.tile_size
        files, ignored = _list_files(source, TILE_EXTENSIONS)
        if not files:
            raise DataError(f"{source}: no tiles found (png, jpg, jpeg, tif or tiff files)")
        by_id: dict[str, str] = {}
        for rel, _ in files:
            sid = _strip_ext(rel)
            if sid in by_id:
                raise DataError(f"{source / rel}: same tile id '{sid}' as {source / by_id[sid]} "
                                f"(two files differ only in their extension)")
            by_id[sid] = rel
        del by_id  # per-tile bookkeeping is what grows with the tile count: keep only what is used

        # Pass 1: headers only (size), so the tile count is known before decoding.
        skipped: list[dict[str, Any]] = []
        usable: list[tuple[str, str, tuple[int, int] | None]] = []  # rel, path, crop offset
        with progress_bar(f"{self.name}: reading {len(files)} tile headers", len(files)) as advance:
            for rel, path in files:
                advance()
                try:
                    with Image.open(path) as im:
                        w, h = im.size
                except Image.DecompressionBombError:
                    w = h = -1
                except Exception as exc:  # noqa: BLE001 - any unreadable file
                    self._corrupt(path, f"unreadable image ({_one_line(exc)})", skipped, rel)
                    continue
                path = str(path)  # a str holds a path in a fifth of a Path's memory
                if (w, h) == (t, t):
                    usable.append((rel, path, None))
                    continue
                size = f"{w}x{h}" if w > 0 else "far larger than a tile"
                if cfg.resize_policy == "error":
                    raise DataError(f"{path}: tile is {size}, expected {t}x{t} (resize_policy: "
                                    f"error; use skip or center_crop)")
                if cfg.resize_policy == "center_crop" and w >= t and h >= t:
                    usable.append((rel, path, ((w - t) // 2, (h - t) // 2)))
                else:
                    self._skip(skipped, {"file": rel, "reason": f"size {size} != {t}x{t}"})
        del files
        chosen = [usable[i] for i in _select(len(usable), cfg.max_tiles, cfg.seed)]
        if not chosen:
            raise DataError(f"{source}: no usable {t}x{t} tile ({len(skipped)} skipped, e.g. "
                            f"{skipped[0]['file']}: {skipped[0]['reason']})" if skipped else
                            f"{source}: no usable tile")

        def decode(item: tuple[str, str, tuple[int, int] | None]) -> np.ndarray:
            rel, path, crop = item
            with Image.open(path) as im:
                if crop is not None:
                    im = im.crop((crop[0], crop[1], crop[0] + t, crop[1] + t))
                arr = _to_rgb(im)
            if arr.shape != (t, t, 3):
                raise ValueError(f"decoded to shape {arr.shape}")
            return arr

        def provenance(item) -> dict[str, Any]:
            entry: dict[str, Any] = {"file": item[0]}
            if item[2] is not None:
                entry["crop"] = list(item[2])
            return entry

        self._write(source, "tiles", chosen, decode, provenance, skipped,
                    lambda item: _strip_ext(item[0]), extra={"ignored_files": ignored,
                                                              "candidates": len(usable)},
                    workers=min(_DECODE_THREADS, os.cpu_count() or 1))

    # slides ------------------------------------------------------------------------------------
    def _prepare_slides(self, source: Path) -> None:
        from harness.engine.runtime import progress_bar

        openslide = _wsi.require_openslide()
        cfg = self.config
        t = cfg.tile_size
        files, _ = _list_files(source, _wsi.SLIDE_EXTENSIONS)
        if not files:
            raise DataError(f"{source}: no whole-slide images found "
                            f"({', '.join(_wsi.SLIDE_EXTENSIONS)})")
        skipped: list[dict[str, Any]] = []
        slides: list[dict[str, Any]] = []
        candidates: list[tuple[str, Path, int, int, int, int]] = []  # rel, path, x, y, level, step
        with progress_bar(f"{self.name}: tissue masks of {len(files)} slides",
                          len(files)) as advance:
            for rel, path in files:
                candidates += self._plan_one(openslide, rel, path, skipped, slides)
                advance()
        chosen = [candidates[i] for i in _select(len(candidates), cfg.max_tiles, cfg.seed)]
        if not chosen:
            reasons = "".join(f"; {s['file']}: {s['reason']}" for s in skipped[:3])
            raise DataError(f"{source}: no tile with >= {cfg.min_tissue:g} tissue in "
                            f"{len(slides)} usable slides ({len(skipped)} skipped{reasons})")

        # OpenSlide handles are thread-safe; each decoding thread keeps its current slide open.
        local = threading.local()
        handles: list[Any] = []
        lock = threading.Lock()

        def decode(item) -> np.ndarray:
            rel, path, x, y, level, _ = item
            if getattr(local, "rel", None) != rel:
                slide = openslide.OpenSlide(str(path))
                with lock:
                    if getattr(local, "slide", None) is not None:
                        handles.remove(local.slide)
                        local.slide.close()
                    handles.append(slide)
                local.slide, local.rel = slide, rel
            try:
                return _wsi.read_tile(local.slide, x, y, level, t)
            except Exception as exc:  # noqa: BLE001
                raise DataError(f"{path}: cannot read the tile at level-0 ({x}, {y}) "
                                f"({_one_line(exc)})") from None

        def provenance(item) -> dict[str, Any]:
            rel, _, x, y, level, step = item
            return {"file": rel, "x": x, "y": y, "level": level, "size": step}

        try:
            self._write(source, "slides", chosen, decode, provenance, skipped,
                        lambda item: f"{_strip_ext(item[0])}/{item[2]}_{item[3]}",
                        extra={"slides": slides, "candidates": len(candidates)},
                        decode_errors=(DataError,),
                        workers=min(_DECODE_THREADS, os.cpu_count() or 1))
        finally:
            with lock:
                for slide in handles:
                    slide.close()
                handles.clear()

    def _plan_one(self, openslide: Any, rel: str, path: Path, skipped: list[dict[str, Any]],
                  slides: list[dict[str, Any]]) -> list[tuple[str, Path, int, int, int, int]]:
        """Candidate tiles (rel, path, x, y, level, step) of one slide; records the slide in
        ``slides`` or, when it cannot be tiled at the target resolution, in ``skipped``."""
        cfg = self.config
        try:
            fmt = openslide.OpenSlide.detect_format(str(path))
        except Exception:  # noqa: BLE001
            fmt = None
        if fmt is None:
            self._skip(skipped, {"file": rel, "reason": "not a whole-slide image OpenSlide reads"})
            return []
        try:
            slide = openslide.OpenSlide(str(path))
        except Exception as exc:  # noqa: BLE001
            self._corrupt(path, f"OpenSlide cannot open it ({_one_line(exc)})", skipped, rel)
            return []
        with slide:
            props = slide.properties
            vendor = props.get("openslide.vendor", fmt)
            objective = props.get("openslide.objective-power")
            mpp = _wsi.slide_mpp(props)
            base = {"file": rel, "vendor": vendor, "objective_power": objective,
                    "mpp": list(mpp) if mpp else None,
                    "dimensions": list(slide.level_dimensions[0])}
            if mpp is None:
                self._skip(skipped, {**base, "reason": "no mpp recorded (magnification unknown)"})
                return []
            level = _wsi.choose_level(mpp, tuple(slide.level_downsamples), cfg.target_mpp,
                                      cfg.mpp_tolerance)
            if level is None:
                self._skip(skipped, {**base, "reason": (
                    f"mpp {mpp[0]:.4g} at level 0 (~{10 / mpp[0]:.0f}x) and no level within "
                    f"{cfg.target_mpp:g}+-{cfg.mpp_tolerance:g} um/px")})
                return []
            try:
                plan = _wsi.plan_slide(slide, level, cfg.tile_size, cfg.mask_downsample, 7,
                                       cfg.saturation_threshold)
            except Exception as exc:  # noqa: BLE001
                self._corrupt(path, f"cannot read its low-resolution level "
                              f"({_one_line(exc)})", skipped, rel)
                return []
            kept = plan.kept(cfg.min_tissue)
            slides.append({**base, "level": level, "downsample": plan.downsample,
                           "grid": [len(plan.xs), len(plan.ys)],
                           "candidates": int(plan.fractions.size), "kept": len(kept),
                           "tissue_fraction": round(float(plan.mask.mean()), 4),
                           "saturation_threshold": plan.threshold})
            return [(rel, path, x, y, level, plan.step) for x, y in kept]

    # writing -----------------------------------------------------------------------------------
    def _write(self, source: Path, mode: str, items: list, decode, provenance, skipped: list,
               make_id, extra: dict[str, Any], decode_errors: tuple = (),
               workers: int = 1) -> None:
        """Decode ``items`` (in ``workers`` threads, results in order) into ``tiles.npy``,
        atomically with READY last."""
        from harness.engine.runtime import console, progress_bar

        cfg = self.config
        t = cfg.tile_size
        n = len(items)
        ids: list[str] = []
        index: list[dict[str, Any]] = []
        with CacheWriter(self.root) as w:
            assert w.dir is not None
            staging = w.dir / "tiles.staging.npy"
            arr = np.lib.format.open_memmap(staging, mode="w+", dtype=np.uint8, shape=(n, t, t, 3))
            k = 0
            # closing(): on an error the decoding threads stop before the caller closes slides
            with progress_bar(f"{self.name}: decoding {n} tiles ({mode})", total=n) as advance, \
                    closing(_decode_all(items, decode, workers)) as decoded:
                for item, (tile, exc) in decoded:
                    if exc is not None:
                        if isinstance(exc, decode_errors):
                            raise exc
                        self._corrupt(item[1], f"unreadable image ({_one_line(exc)})", skipped,
                                      item[0])
                        advance()
                        continue
                    arr[k] = tile
                    ids.append(make_id(item))
                    index.append(provenance(item))
                    k += 1
                    advance()
            arr.flush()
            del arr
            if k == 0:
                raise DataError(f"{source}: every tile was unreadable (e.g. {skipped[-1]['file']}: "
                                f"{skipped[-1]['reason']})")
            if k == n:
                os.replace(staging, w.dir / "tiles.npy")
            else:  # some tiles turned out unreadable (corrupt_policy: skip): compact
                src = np.load(staging, mmap_mode="r")
                dst = w.array("tiles", (k, t, t, 3), np.uint8)
                for start in range(0, k, 256):
                    stop = min(start + 256, k)
                    dst[start:stop] = src[start:stop]
                del src
                staging.unlink()
            w.json("tiles.json", {"ids": ids, "index": index})
            info = {"dataset": self.name, "version": self.version, "mode": mode,
                    "source": str(source), "tiles": k, "tile_size": t,
                    "complete_release": False, "skipped": skipped,
                    "config": cfg.model_dump(mode="json"), **extra}
            w.finish(info)
        more = (f" ({len(skipped) - _PRINTED_SKIPS} not printed; all listed in "
                f"{self.root / 'READY'})" if len(skipped) > _PRINTED_SKIPS else "")
        console.print(f"{self.name}: {k} tiles of {t}x{t} ({mode}) from {source}; "
                      f"{len(skipped)} files skipped{more}", markup=False, highlight=False,
                      soft_wrap=True)

    # --- checks --------------------------------------------------------------------------------
    def _ready(self) -> dict[str, Any]:
        return json.loads((self.root / "READY").read_text())

    def verify(self) -> list[str]:
        if not self.is_prepared():
            return [f"{self.root}: not prepared (run `{prepare_command_for(self)}`)"]
        problems = verify_manifest(self.root)
        if problems:
            return problems
        try:
            info = self._ready()
            meta = json.loads((self.root / "tiles.json").read_text())
        except (OSError, ValueError) as exc:
            return [f"{self.root}: READY or tiles.json unreadable ({_one_line(exc)})"]
        t = self.config.tile_size
        n = info.get("tiles")
        arr = np.load(self.root / "tiles.npy", mmap_mode="r")
        if arr.ndim != 4 or arr.shape[1:] != (t, t, 3) or arr.dtype != np.uint8:
            problems.append(f"{self.root / 'tiles.npy'}: expected (N, {t}, {t}, 3) uint8, got "
                            f"{arr.shape} {arr.dtype}")
        if arr.shape[0] != n:
            problems.append(f"{self.root / 'tiles.npy'}: {arr.shape[0]} tiles, {n} recorded at "
                            f"prepare time")
        ids, index = meta.get("ids", []), meta.get("index", [])
        if len(ids) != n or len(index) != n:
            problems.append(f"{self.root / 'tiles.json'}: {len(ids)} ids and {len(index)} index "
                            f"entries, {n} tiles recorded")
        if len(set(ids)) != len(ids):
            problems.append(f"{self.root / 'tiles.json'}: tile ids are not unique")
        if info.get("config") != self.config.model_dump(mode="json"):
            problems.append(f"{self.root}: prepared with a different config; prepare it again")
        return problems

    # --- loading -------------------------------------------------------------------------------
    def _require_prepared(self) -> None:
        if not self.is_prepared():
            raise DataError(f"dataset '{self.name}' is not prepared (looked in {self.root}); "
                            f"run `{prepare_command_for(self)}` ({self.source_hint})")

    def load(self) -> LabeledArrays:
        raise DataError(f"dataset '{self.name}' is unlabeled (pretraining tiles only) and cannot "
                        f"be loaded as labeled arrays; name it under `unlabeled:` and fine-tune on "
                        f"a labeled dataset")

    def unlabeled_images(self) -> np.ndarray:
        """``(N, T, T, 3)`` uint8 read-only memory map of every tile, in ``tile_index`` order."""
        self._require_prepared()
        return np.load(self.root / "tiles.npy", mmap_mode="r")

    def tile_ids(self) -> list[str]:
        self._require_prepared()
        return list(json.loads((self.root / "tiles.json").read_text())["ids"])

    def tile_index(self) -> list[dict[str, Any]]:
        """Provenance of every tile, aligned with :meth:`unlabeled_images`: ``id``, ``file``
        (relative to the source) and, for slides, level-0 ``x``/``y``, the pyramid ``level``
        read and the level-0 footprint ``size``; for center-cropped tiles the ``crop`` offset."""
        self._require_prepared()
        meta = json.loads((self.root / "tiles.json").read_text())
        return [{"id": sid, **entry} for sid, entry in zip(meta["ids"], meta["index"])]

    def prepare_report(self) -> dict[str, Any]:
        """What prepare recorded: mode, counts, per-slide statistics, skipped files."""
        self._require_prepared()
        return self._ready()

    def folds(self) -> list[str]:
        return []

    def expected_group_sizes(self) -> dict[str, int] | None:
        return None


@hookimpl
def harness_register_datasets():
    return [TCGADataset]
