"""``lizard``: Lizard colon nuclei in the CoNIC patch format (Graham et al., CoNIC 2021;
github.com/TissueImageAnalytics/CoNIC).

Source (``harness data prepare lizard --source DIR``): the folder of the CoNIC "patch-level
Lizard" release plus Lizard's ``info.csv``:

* ``images.npy``     ``(N, 256, 256, 3)`` uint8 RGB
* ``labels.npy``     ``(N, 256, 256, 2)`` integer (uint16 in the release): channel 0 the instance
  map (0 = background), channel 1 the class map 0..6
* ``patch_info.csv`` one column ``patch_info`` (``consep_1-0000``: source image, ``-``, patch index)
* ``counts.csv``     optional; six count columns, one row per patch (validated, kept as ``counts.npy``)
* ``info.csv``       Lizard's ``Filename, Source, Split``: in ``DIR``, in ``DIR/Lizard_Labels/`` or
  inside ``DIR/lizard_labels.zip`` (member ``Lizard_Labels/info.csv``)

Classes (class id = value of the class map): 1 neutrophil, 2 epithelial, 3 lymphocyte, 4 plasma,
5 eosinophil, 6 connective. The thesis printed them in the Lizard paper order; the ids follow
the CoNIC release (CoNIC ``extract_patches.py``).

Folds (thesis §4.2.2, ``pricon:segmentation/scripts/process_lizard.py``): the source image of a
patch is the text of ``patch_info`` before its first ``-``; its fold is ``fold{Split}`` from
``info.csv``. Sample ids are the ``patch_info`` strings; samples stay in ``images.npy`` order.

Policies:

* ``thesis_bgr_swap`` (default True): the reference code wrote the RGB arrays with
  ``cv2.imwrite`` and read them back as BGR, so its networks saw Lizard with R and B swapped.
  It is applied in :meth:`load` (a reversed-channel view of the memory map), so both settings
  share one prepared cache; it still enters every stage key.
* ``aggregate_by_source`` (default False): the thesis scored Lizard as a single group (nanmean
  over all images, ``eval_lizard.py``), so every sample gets the tissue ``"colon"`` and the
  harness's per-tissue aggregation reduces to that nanmean. True gives each patch the
  ``Source`` of its image instead (per-source aggregation; fraction draws stratify by source).
  Load time only, like the swap.
* A patch whose source image is not in ``info.csv``, a ``Split`` outside 1..3, a class id
  above 6, negative label values, instance and class maps that disagree about which pixels are
  nuclei, a ``patch_info.csv``/``counts.csv`` whose length differs from ``images.npy``,
  duplicate patch names, wrong shapes or dtypes and unreadable (e.g. truncated) ``.npy`` files
  are :class:`~harness.errors.DataError` (one line naming the file).
* ``info.csv`` without a ``Source`` column (the column is only documented second hand) is
  accepted: the source is then the image name's prefix before ``_`` (``consep_1`` -> ``consep``).
* The patch size is taken from the files (the release has 256x256).

Counts: the release has 4,981 patches; the per-fold counts are not published in any source we
have, so :meth:`expected_group_sizes` returns None. ``verify`` checks the 4,981 total when the
prepared source looked like the full release (4,981 patches of 256x256, recorded as
``complete_release`` in ``READY``) and the per-fold counts recorded at prepare time otherwise
and in addition.
"""

from __future__ import annotations

import csv
import io
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from harness.data.base import DatasetConfig, LabeledArrays
from harness.data.cache import CachedDataset, CacheWriter, group_counts
from harness.console import progress_bar
from harness.errors import DataError
from harness.hookspecs import hookimpl

CLASS_NAMES = ("neutrophil", "epithelial", "lymphocyte", "plasma", "eosinophil", "connective")
COUNT_COLUMNS = CLASS_NAMES
RELEASE_PATCHES = 4981
RELEASE_SIZE = 256
SPLITS = (1, 2, 3)
SINGLE_TISSUE = "colon"
_CHUNK = 64  # patches converted at a time


class LizardConfig(DatasetConfig):
    thesis_bgr_swap: bool = Field(
        True, description="Swap R and B on load, as the thesis's code fed Lizard to its networks "
        "(cv2.imwrite of RGB arrays read back as BGR). Load time only.")
    aggregate_by_source: bool = Field(
        False, description="False: every patch has the tissue 'colon', so the score is the "
        "nanmean over images as in the thesis. True: tissue = the image's Source in info.csv "
        "(per-source aggregation). Load time only.")


# --- reading the official files -------------------------------------------------------------------

def _open_npy(path: Path) -> np.ndarray:
    if not path.exists():
        raise DataError(f"{path}: missing (the CoNIC patch release has images.npy, labels.npy, "
                        f"patch_info.csv and counts.csv)")
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"{path}: unreadable .npy (truncated or corrupt: {msg})") from None


def _read_csv(text: str) -> tuple[list[str], list[dict[str, str]]]:
    """Column names and rows, keys and values stripped of surrounding blanks."""
    reader = csv.DictReader(io.StringIO(text.lstrip("\ufeff")))
    rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items() if k is not None}
            for row in reader]
    return [(c or "").strip() for c in (reader.fieldnames or [])], rows


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: unreadable ({type(exc).__name__})") from None


def read_patch_info(path: Path) -> list[str]:
    if not path.exists():
        raise DataError(f"{path}: missing (one column 'patch_info', one row per patch)")
    columns, rows = _read_csv(_read_text(path))
    if "patch_info" not in columns:
        raise DataError(f"{path}: no 'patch_info' column (got {columns})")
    names = [r.get("patch_info", "") for r in rows]
    for i, name in enumerate(names):
        if not name or "-" not in name:
            raise DataError(f"{path}: row {i + 2} '{name}' is not '<image>-<index>'")
    seen: set[str] = set()
    for i, name in enumerate(names):
        if name in seen:
            raise DataError(f"{path}: row {i + 2}: duplicate patch name '{name}'")
        seen.add(name)
    return names


def source_image(patch_name: str) -> str:
    """The Lizard image a patch comes from: the text before the first ``-`` (process_lizard.py L49)."""
    return patch_name[:patch_name.find("-")]


def find_info_csv(source: Path) -> tuple[str, str]:
    """``(where, text)`` of Lizard's info.csv: DIR/info.csv, DIR/Lizard_Labels/info.csv or the
    ``Lizard_Labels/info.csv`` member of DIR/lizard_labels.zip."""
    for path in (source / "info.csv", source / "Lizard_Labels" / "info.csv"):
        if path.exists():
            return str(path), _read_text(path)
    zpath = source / "lizard_labels.zip"
    if zpath.exists():
        try:
            with zipfile.ZipFile(zpath) as zf:
                members = [m for m in zf.namelist() if m.split("/")[-1] == "info.csv"
                           and "__MACOSX" not in m]
                if not members:
                    raise DataError(f"{zpath}: no Lizard_Labels/info.csv inside")
                member = sorted(members, key=len)[0]
                return f"{zpath}!{member}", zf.read(member).decode("utf-8")
        except (zipfile.BadZipFile, OSError, UnicodeDecodeError) as exc:
            raise DataError(f"{zpath}: unreadable zip ({type(exc).__name__}: {exc})") from None
    raise DataError(f"{source}: no info.csv (expected info.csv, Lizard_Labels/info.csv or "
                    f"lizard_labels.zip from https://warwick.ac.uk/fac/cross_fac/tia/data/lizard/)")


def parse_info(where: str, text: str) -> dict[str, tuple[str, int]]:
    """``{Filename: (Source, Split)}`` from Lizard's info.csv."""
    columns, rows = _read_csv(text)
    for col in ("Filename", "Split"):
        if col not in columns:
            raise DataError(f"{where}: no '{col}' column (got {columns})")
    has_source = "Source" in columns
    info: dict[str, tuple[str, int]] = {}
    for i, row in enumerate(rows):
        name = row["Filename"]
        if not name:
            raise DataError(f"{where}: row {i + 2}: empty Filename")
        raw = row["Split"]
        try:
            split = int(float(raw))
            if split != float(raw):
                raise ValueError
        except ValueError:
            raise DataError(f"{where}: row {i + 2} ({name}): Split '{raw}' is not an integer") from None
        if split not in SPLITS:
            raise DataError(f"{where}: row {i + 2} ({name}): Split {split} is not 1, 2 or 3")
        src = row.get("Source", "") if has_source else name.split("_")[0]
        if not src:
            raise DataError(f"{where}: row {i + 2} ({name}): empty Source")
        if name in info and info[name] != (src, split):
            raise DataError(f"{where}: row {i + 2}: '{name}' listed twice with different values")
        info[name] = (src, split)
    if not info:
        raise DataError(f"{where}: no rows")
    return info


def read_counts(path: Path, n: int) -> np.ndarray | None:
    if not path.exists():
        return None
    columns, rows = _read_csv(_read_text(path))
    missing = [c for c in COUNT_COLUMNS if c not in columns]
    if missing:
        raise DataError(f"{path}: missing columns {missing} (got {columns})")
    if len(rows) != n:
        raise DataError(f"{path}: {len(rows)} rows but images.npy has {n} patches")
    out = np.zeros((n, len(COUNT_COLUMNS)), dtype=np.int32)
    for i, row in enumerate(rows):
        for j, col in enumerate(COUNT_COLUMNS):
            raw = row.get(col, "")
            try:
                value = int(float(raw))
            except ValueError:
                raise DataError(f"{path}: row {i + 2}: {col} '{raw}' is not a count") from None
            if value < 0:
                raise DataError(f"{path}: row {i + 2}: negative {col} count {value}")
            out[i, j] = value
    return out


# --- the dataset ------------------------------------------------------------------------------------

class LizardDataset(CachedDataset):
    name = "lizard"
    version = "1"
    labeled = True
    class_names = CLASS_NAMES
    metric_family = "pq"
    split_scheme = "kfold"
    magnification = "20x"
    description = ("Lizard colon nuclei, CoNIC 256x256 patch release (4,981 patches, 6 classes, "
                   "20x), three folds from Lizard's info.csv.")
    source_hint = ("CoNIC patch release (images.npy, labels.npy, patch_info.csv, counts.csv; "
                   "https://conic-challenge.grand-challenge.org, registration required) plus "
                   "lizard_labels.zip (info.csv; https://warwick.ac.uk/fac/cross_fac/tia/data/"
                   "lizard/) in one folder")
    Config = LizardConfig
    cache_fields = ()  # both options apply at load time: one prepared copy serves all
    config: LizardConfig

    @classmethod
    def folds(cls, config: LizardConfig) -> list[str]:
        return [f"fold{k}" for k in SPLITS]

    @classmethod
    def expected_group_sizes(cls, config: LizardConfig) -> dict[str, int] | None:
        return None  # per-fold patch counts are not published (only the 4,981 total)

    # --- preparation ---------------------------------------------------------------------------
    @classmethod
    def conformance_fixture(cls, folder: Path) -> dict:
        """A tiny source in the official layout, for `harness plugin check`."""
        from ._fixtures import lizard

        return {"source": lizard(folder / "src")}

    def prepare(self, source: Path | None = None) -> None:
        if source is None:
            raise DataError(f"lizard: --source is required ({self.source_hint})")
        source = Path(source)
        if not source.is_dir():
            raise DataError(f"{source}: expected the folder holding images.npy, labels.npy, "
                            f"patch_info.csv and info.csv (or lizard_labels.zip)")
        images = _open_npy(source / "images.npy")
        labels = _open_npy(source / "labels.npy")
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise DataError(f"{source / 'images.npy'}: expected (N, H, W, 3) uint8, got "
                            f"{images.shape} {images.dtype}")
        n, h, w = images.shape[:3]
        if labels.shape != (n, h, w, 2):
            raise DataError(f"{source / 'labels.npy'}: expected shape {(n, h, w, 2)} "
                            f"(instance and class map per patch), got {labels.shape}")
        if not np.issubdtype(labels.dtype, np.integer):
            raise DataError(f"{source / 'labels.npy'}: expected an integer dtype, got {labels.dtype}")
        names = read_patch_info(source / "patch_info.csv")
        if len(names) != n:
            raise DataError(f"{source / 'patch_info.csv'}: {len(names)} rows but images.npy has "
                            f"{n} patches")
        counts = read_counts(source / "counts.csv", n)
        where, text = find_info_csv(source)
        info = parse_info(where, text)
        tissues, groups = [], []
        for i, name in enumerate(names):
            img = source_image(name)
            if img not in info:
                raise DataError(f"{source / 'patch_info.csv'}: row {i + 2}: patch '{name}' comes "
                                f"from image '{img}', which {where} does not list")
            src, split = info[img]
            tissues.append(src)
            groups.append(f"fold{split}")

        with CacheWriter(self.root) as writer:
            out_img = writer.array("images", (n, h, w, 3), np.uint8)
            out_inst = writer.array("instances", (n, h, w), np.int32)
            out_cls = writer.array("classes", (n, h, w), np.uint8)
            with progress_bar("prepare lizard", n) as advance:
                for start in range(0, n, _CHUNK):
                    stop = min(n, start + _CHUNK)
                    _convert_chunk(source, names, images, labels, start, stop,
                                   out_img, out_inst, out_cls)
                    advance(stop - start)
            if counts is not None:
                np.save(writer.dir / "counts.npy", counts)
            writer.samples(names, tissues, groups)
            fold_counts = group_counts(groups)
            complete = n == RELEASE_PATCHES and (h, w) == (RELEASE_SIZE, RELEASE_SIZE)
            writer.finish({"dataset": self.name, "version": self.version, "source": str(source),
                           "info_csv": where, "samples": n, "group_counts": fold_counts,
                           "complete_release": complete, "counts_csv": counts is not None,
                           "labels_dtype": str(labels.dtype),
                           "sources": sorted(set(tissues)),
                           "images_in_info_without_patches":
                               sorted(set(info) - {source_image(s) for s in names})})

    # --- checks and loading ------------------------------------------------------------------------
    def ready_info(self) -> dict[str, Any]:
        return json.loads((self.root / "READY").read_text())

    def verify(self) -> list[str]:
        arrays, problems = self.checked_arrays()
        if arrays is None:
            return problems
        info = self.ready_info()
        counts = group_counts(arrays.groups)
        if info.get("complete_release") and len(arrays) != RELEASE_PATCHES:
            problems.append(f"{self.root}: {len(arrays)} patches, the release has {RELEASE_PATCHES}")
        for group, expected in sorted(info.get("group_counts", {}).items()):
            if counts.get(group, 0) != expected:
                problems.append(f"{self.root}: group '{group}' has {counts.get(group, 0)} samples, "
                                f"{expected} recorded at prepare time")
        unknown = set(counts) - set(self.folds(self.config))
        if unknown:
            problems.append(f"{self.root}/samples.json: unknown groups {sorted(unknown)}")
        return problems

    def load(self) -> LabeledArrays:
        arrays = super().load()
        if self.config.thesis_bgr_swap:
            arrays.images = ChannelReversed.of(arrays.images)  # a view: nothing is loaded
        if not self.config.aggregate_by_source:
            arrays.tissues = [SINGLE_TISSUE] * len(arrays.ids)
        return arrays

    def sources(self) -> list[str]:
        """The Source of each patch's image (whatever ``aggregate_by_source`` says)."""
        return list(json.loads((self.root / "samples.json").read_text())["tissues"])


class ChannelReversed(np.ndarray):
    """``images[..., ::-1]`` of a (memory-mapped) array, without reading it. Indexing returns
    ordinary C-contiguous arrays (one sample or chunk is copied when read), because a
    negative-stride view cannot become a torch tensor (``torch.from_numpy`` refuses it)."""

    @classmethod
    def of(cls, images: np.ndarray) -> "ChannelReversed":
        return images[..., ::-1].view(cls)

    def __getitem__(self, key: Any) -> Any:
        out = np.ndarray.__getitem__(self.view(np.ndarray), key)
        return np.ascontiguousarray(out) if isinstance(out, np.ndarray) else out


def _convert_chunk(source: Path, names: list[str], images: np.ndarray, labels: np.ndarray,
                   start: int, stop: int, out_img: np.ndarray, out_inst: np.ndarray,
                   out_cls: np.ndarray) -> None:
    lab_path = source / "labels.npy"
    try:
        img = np.asarray(images[start:stop])
        lab = np.asarray(labels[start:stop])
    except (ValueError, OSError) as exc:
        raise DataError(f"{source / 'images.npy'} or labels.npy: unreadable at patches "
                        f"{start}..{stop - 1} ({exc})") from None
    inst, cls = lab[..., 0], lab[..., 1]
    if lab.size and int(lab.min()) < 0:
        bad = start + int(np.argmax(lab.reshape(len(lab), -1).min(1) < 0))
        raise DataError(f"{lab_path}: patch {bad} ('{names[bad]}') has negative label values")
    if cls.size and int(cls.max()) > len(CLASS_NAMES):
        bad = start + int(np.argmax(cls.reshape(len(cls), -1).max(1) > len(CLASS_NAMES)))
        raise DataError(f"{lab_path}: patch {bad} ('{names[bad]}') has class id "
                        f"{int(np.asarray(labels[bad, ..., 1]).max())}; Lizard ids are 0..6")
    if inst.size and int(inst.max()) > np.iinfo(np.int32).max:
        raise DataError(f"{lab_path}: instance ids exceed int32 in patches {start}..{stop - 1}")
    disagree = ((inst > 0) != (cls > 0)).reshape(len(lab), -1).any(1)
    if disagree.any():
        bad = start + int(np.argmax(disagree))
        raise DataError(f"{lab_path}: patch {bad} ('{names[bad]}'): instance map (channel 0) and "
                        f"class map (channel 1) disagree about which pixels are nuclei")
    out_img[start:stop] = img
    out_inst[start:stop] = inst.astype(np.int32)
    out_cls[start:stop] = cls.astype(np.uint8)


@hookimpl
def harness_register_datasets():
    return [LizardDataset]
