"""``tcga``: unlabeled H&E tiles for pretraining (TCGA breast cancer slides, thesis §4.1.1).

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
  ``>= min_tissue``. The mask (``_wsi.tissue_mask``, after CLAM, Lu et al. 2021): HSV
  saturation of a low-resolution level (downsample ~``mask_downsample``), median blur 7, Otsu
  threshold. Slides without an mpp
  or at another magnification (e.g. 20x TCGA scans, 0.5 um/px) are skipped, never resampled,
  and reported. Slides need the ``wsi`` extra (openslide-python + openslide-bin).

``mode: auto`` chooses slides when a file has a slide-only extension (.svs, .ndpi ...) or a
.tif/.tiff opens in OpenSlide as a vendor format or a multi-level pyramid; otherwise tiles.

Preparation lives in ``_tcga_tiles`` (a folder of tiles) and ``_tcga_slides`` (whole-slide
images), sharing ``_tcga_cache`` (listing, decoding threads, the cache writer).

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
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from harness.data.base import DatasetConfig, LabeledArrays, prepare_command_for
from harness.data.cache import CachedDataset, verify_manifest
from harness.errors import DataError, one_line
from harness.hookspecs import hookimpl

from . import _wsi
from ._tcga_cache import Preparation, list_files
from ._tcga_slides import prepare_slides
from ._tcga_tiles import TILE_EXTENSIONS, prepare_tiles

_MAX_TIFF_PROBES = 16  # .tif files opened with OpenSlide when mode=auto decides tiles/slides


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
                   "the wsi extra: pip install 'pathbench-harness[wsi]'")
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
        prep = Preparation(self.name, self.version, self.root, self.config)
        if self._resolve_mode(source) == "slides":
            prepare_slides(prep, source)
        else:
            prepare_tiles(prep, source)

    def _resolve_mode(self, source: Path) -> str:
        cfg = self.config
        if cfg.mode != "auto":
            if cfg.mode == "slides":
                _wsi.require_openslide()
            return cfg.mode
        files, _ = list_files(source, TILE_EXTENSIONS + _wsi.SLIDE_EXTENSIONS)
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
            return [f"{self.root}: READY or tiles.json unreadable ({one_line(exc, True)})"]
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

    @classmethod
    def folds(cls, config: TCGAConfig) -> list[str]:
        return []

    @classmethod
    def expected_group_sizes(cls, config: TCGAConfig) -> dict[str, int] | None:
        return None


@hookimpl
def harness_register_datasets():
    return [TCGADataset]
