"""Reading the official PanNuke release and converting it into the harness cache.

Shared by the ``pannuke`` and ``pannuke_breast`` plugins (reference §1, §2, §6).

Source layouts accepted (``--source`` is a folder):

* the unpacked archives: ``Fold k/images/foldk/images.npy``, ``Fold k/images/foldk/types.npy``
  and ``Fold k/masks/foldk/masks.npy`` for k = 1, 2, 3;
* the three official archives ``fold_1.zip``, ``fold_2.zip``, ``fold_3.zip`` side by side. Their
  ``.npy`` members are streamed (header parsed with ``numpy.lib.format``, rows decompressed a chunk
  at a time), never extracted or loaded whole.

A folder ``Fold k`` wins over ``fold_k.zip`` when both exist. Unpacked arrays are opened with
``mmap_mode="r"``; every fold is converted chunk by chunk, so memory stays at a few hundred MB
whatever the release size.

Conversion of one patch (arrays ``images`` float64 0-255, ``masks`` float64 (H, W, 6)):

* image  -> uint8 by ``rint`` + clip; a value outside [-0.5, 255.5] or a NaN is an error.
* ``argmax`` of the six mask channels exactly as ``pricon:process_pannuke.py L54``: channel c < 5
  -> class c + 1, channel 5 -> 0. Void pixels (all six channels 0) therefore become class 1
  (neoplastic) and a pixel in two class channels goes to the channel with the larger id (ties:
  the lower channel). This is the ``thesis`` class map (``classes.npy``). The ``background`` map
  (``classes_background.npy``) is the same except that void pixels are 0.
* instances: the pair (channel, id) of the argmax channel names a nucleus; the pairs of one patch
  are renumbered 1..n in (channel, id) order, so ids are unique across channels within a patch
  and every instance lies inside one class. Overlap pixels belong to the winning channel's
  nucleus. An id that spans several connected components stays ONE instance (faithful to the
  release). ``instances_background.npy`` has 0 on void pixels; ``instances.npy`` (thesis map, where
  void pixels are "neoplastic") gives each 4-connected void region its own id after the nuclei,
  so that the instance and class maps agree about which pixels are foreground.

Anomalies (reference §1.2) are tolerated and counted per fold in the READY info: overlap pixels
and patches, void pixels, patches with void and fully void patches, ids spanning several
4-connected components, and pixels that are both nucleus and background.
"""

from __future__ import annotations

import io
import math
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal, Sequence

import numpy as np

from harness.data.cache import CacheWriter, read_rows
from harness.errors import DataError

CLASS_NAMES = ("neoplastic", "inflammatory", "connective", "dead", "epithelial")
#: The 19 tissue names exactly as stored in ``types.npy`` (reference §1.3).
TISSUES = ("Adrenal_gland", "Bile-duct", "Bladder", "Breast", "Cervix", "Colon", "Esophagus",
           "HeadNeck", "Kidney", "Liver", "Lung", "Ovarian", "Pancreatic", "Prostate", "Skin",
           "Stomach", "Testis", "Thyroid", "Uterus")
FOLDS = ("fold1", "fold2", "fold3")
#: Patches per fold in the released arrays (reference §1.4; the thesis's 7,904 is a typo-level
#: documentation discrepancy, the arrays hold 7,901).
OFFICIAL_FOLD_SIZES = {"fold1": 2656, "fold2": 2523, "fold3": 2722}
OFFICIAL_BREAST_PER_FOLD = {"fold1": 827, "fold2": 749, "fold3": 775}
IMAGE_SIZE = (256, 256)
N_MASK_CHANNELS = 6

VoidPolicy = Literal["thesis", "background"]
#: (classes, instances) file stems of each void policy.
POLICY_ARRAYS: dict[str, tuple[str, str]] = {
    "thesis": ("classes", "instances"),
    "background": ("classes_background", "instances_background"),
}
#: The void policy each PQ variant is defined with: the official PanNuke metric scores void
#: pixels as background; the thesis's numbers came from its argmax masks (void -> neoplastic).
VARIANT_VOID_POLICY: dict[str, str] = {"instance": "background", "thesis": "thesis"}
VOID_POLICY_HELP = (
    "What void pixels (0 in all six mask channels) become. Unset (default): follows "
    "metric.pq_variant -- 'background' for 'instance' (the official PanNuke metric), 'thesis' "
    "for 'thesis' (the thesis's numbers). 'thesis': the reference code's argmax over all six "
    "channels, so void pixels are class neoplastic (whole void patches become all-neoplastic). "
    "'background': void pixels are background (instance 0). A value that contradicts "
    "metric.pq_variant is an error. Both keep overlaps on the channel with the larger id. "
    "Chosen at load time: one prepared copy serves both.")

#: argmax channel -> class id (channel 5 = background -> 0).
_CHANNEL_TO_CLASS = np.array([1, 2, 3, 4, 5, 0], dtype=np.uint8)
_ID_LIMIT = 1 << 24  # largest accepted instance id (the release's maxima are ~3,517)
_FOUR = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], dtype=bool)  # ndimage.generate_binary_structure(2, 1)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


# ----------------------------------------------------------------------------------------------
# One .npy array in a folder or inside a zip
# ----------------------------------------------------------------------------------------------

@dataclass
class NpyMember:
    """A ``.npy`` file on disk (``member`` None) or a member of a zip archive."""

    path: Path
    member: str | None = None

    @property
    def name(self) -> str:
        return f"{self.path}:{self.member}" if self.member else str(self.path)

    def error(self, what: str) -> DataError:
        return DataError(f"{self.name}: {what}")

    # --- header ---------------------------------------------------------------------------------
    def header(self) -> tuple[tuple[int, ...], np.dtype]:
        """Shape and dtype, checking that the file holds exactly that many bytes."""
        if self.member is None:
            arr = self._mmap()
            return tuple(arr.shape), arr.dtype
        try:
            with zipfile.ZipFile(self.path) as zf:
                info = zf.getinfo(self.member)
                with zf.open(info) as fh:
                    shape, fortran, dtype, offset = self._read_header(fh)
        except (zipfile.BadZipFile, OSError, EOFError, KeyError) as exc:
            raise self.error(f"unreadable archive member ({_one_line(exc)})") from None
        expected = offset + math.prod(shape) * dtype.itemsize
        if info.file_size != expected:
            raise self.error(f"holds {info.file_size} bytes, a {dtype} array of shape "
                             f"{shape} needs {expected} (truncated or corrupt .npy)")
        if fortran and len(shape) > 1:
            raise self.error("is stored in Fortran order; unpack the archive and prepare "
                             "from the folder instead")
        return shape, dtype

    def _read_header(self, fh) -> tuple[tuple[int, ...], bool, np.dtype, int]:
        """Shape, Fortran flag, dtype and data offset of a ``.npy`` stream (at its start)."""
        fmt = np.lib.format
        try:
            version = fmt.read_magic(fh)
            if version == (1, 0):
                shape, fortran, dtype = fmt.read_array_header_1_0(fh)
            elif version == (2, 0):
                shape, fortran, dtype = fmt.read_array_header_2_0(fh)
            else:
                shape, fortran, dtype = fmt._read_array_header(fh, version)  # noqa: SLF001
        except Exception as exc:  # noqa: BLE001 - any parse failure is a corrupt file
            raise self.error(f"not a readable .npy array ({_one_line(exc)})") from None
        dtype = np.dtype(dtype)
        if dtype.hasobject:
            raise self.error("holds Python objects (pickled); expected a numeric array")
        return tuple(int(s) for s in shape), bool(fortran), dtype, int(fh.tell())

    def _mmap(self) -> np.ndarray:
        try:
            return np.load(self.path, mmap_mode="r", allow_pickle=False)
        except FileNotFoundError:
            raise self.error("missing") from None
        except Exception as exc:  # noqa: BLE001
            raise self.error(f"not a readable .npy array ({_one_line(exc)})") from None

    # --- small arrays ---------------------------------------------------------------------------
    def read_all(self) -> np.ndarray:
        """The whole array (used for ``types.npy`` only)."""
        try:
            if self.member is None:
                return np.load(self.path, allow_pickle=False)
            with zipfile.ZipFile(self.path) as zf:
                return np.load(io.BytesIO(zf.read(self.member)), allow_pickle=False)
        except FileNotFoundError:
            raise self.error("missing") from None
        except Exception as exc:  # noqa: BLE001
            raise self.error(f"not a readable .npy array ({_one_line(exc)})") from None

    # --- rows of big arrays ---------------------------------------------------------------------
    def rows(self, indices: np.ndarray, chunk: int) -> Iterator[np.ndarray]:
        """The rows ``indices`` (ascending), ``chunk`` rows at a time. A file on disk is read
        through a map of each chunk's rows only, dropped before the next (``read_rows``): a
        map of the whole fold would keep every page read resident, the whole 15 GB fold."""
        if self.member is None:
            arr = self._mmap()  # the header only: its data pages are never touched here
            for start in range(0, len(indices), chunk):
                sel = indices[start:start + chunk]
                try:
                    if not len(sel):
                        yield np.asarray(arr[:0])
                        continue
                    # each run of consecutive rows through its own map (a subset such as
                    # PanNuke-Breast skips rows: their pages are never read)
                    breaks = np.flatnonzero(np.diff(sel) != 1) + 1
                    runs = [(int(r[0]), int(r[-1]) + 1) for r in np.split(sel, breaks)]
                    parts = [read_rows(arr, a, b) for a, b in runs]
                    yield parts[0] if len(parts) == 1 else np.concatenate(parts)
                except OSError as exc:
                    raise self.error(f"read failed ({_one_line(exc)})") from None
            return
        yield from self._zip_rows(indices, chunk)

    def _zip_rows(self, indices: np.ndarray, chunk: int) -> Iterator[np.ndarray]:
        try:
            zf = zipfile.ZipFile(self.path)
        except Exception as exc:  # noqa: BLE001
            raise self.error(f"unreadable zip archive ({_one_line(exc)})") from None
        with zf, zf.open(self.member) as fh:
            shape, _, dtype, _ = self._read_header(fh)
            row_shape = shape[1:]
            row_bytes = math.prod(row_shape) * dtype.itemsize
            pos = 0  # next row in the stream
            pending: list[np.ndarray] = []
            for want in indices:
                want = int(want)
                try:
                    while pos < want:  # skip unselected rows, a bounded block at a time
                        skip = min(want - pos, max(1, (64 << 20) // max(row_bytes, 1)))
                        self._read_exact(fh, skip * row_bytes, pos)
                        pos += skip
                    raw = self._read_exact(fh, row_bytes, pos)
                except (zipfile.BadZipFile, OSError, EOFError) as exc:
                    raise self.error(f"corrupt archive member near row {pos} "
                                     f"({_one_line(exc)})") from None
                pos += 1
                pending.append(np.frombuffer(raw, dtype=dtype).reshape(row_shape))
                if len(pending) == chunk:
                    yield np.stack(pending)
                    pending = []
            if pending:
                yield np.stack(pending)

    def _read_exact(self, fh, nbytes: int, row: int) -> bytes:
        data = fh.read(nbytes)
        if len(data) != nbytes:
            raise self.error(f"truncated: the data ends inside row {row}")
        return data


# ----------------------------------------------------------------------------------------------
# Locating the three folds
# ----------------------------------------------------------------------------------------------

@dataclass
class FoldSource:
    fold: str  # "fold1"
    kind: str  # "folder" or "zip"
    images: NpyMember
    types: NpyMember
    masks: NpyMember
    n: int = 0
    types_list: list[str] = field(default_factory=list)
    image_dtype: str = ""
    mask_dtype: str = ""


def _zip_member(zpath: Path, names: list[str], suffix: str) -> str | None:
    """The member ending in ``suffix`` (e.g. ``images/fold1/images.npy``), outside __MACOSX."""
    hits = [n for n in names if n.replace("\\", "/").endswith(suffix)
            and "__MACOSX" not in n and not n.rsplit("/", 1)[-1].startswith("._")]
    if len(hits) > 1:
        raise DataError(f"{zpath}: several members end in '{suffix}': {', '.join(hits[:3])}")
    return hits[0] if hits else None


def locate_folds(source: Path | None) -> list[FoldSource]:
    """The three folds of the release under ``source`` (a folder), without reading any data."""
    if source is None:
        raise DataError("pannuke: --source is required: the folder holding 'Fold 1', 'Fold 2', "
                        "'Fold 3' (unpacked) or fold_1.zip, fold_2.zip, fold_3.zip")
    source = Path(source).expanduser()
    if not source.exists():
        raise DataError(f"{source}: no such folder")
    if source.is_file():
        raise DataError(f"{source}: expected the folder holding fold_1.zip, fold_2.zip and "
                        f"fold_3.zip (or the unpacked 'Fold 1'..'Fold 3'), got a file")
    folds = []
    for k in (1, 2, 3):
        fold = f"fold{k}"
        folder = source / f"Fold {k}"
        archive = source / f"fold_{k}.zip"
        if folder.is_dir():
            folds.append(FoldSource(
                fold=fold, kind="folder",
                images=NpyMember(folder / "images" / fold / "images.npy"),
                types=NpyMember(folder / "images" / fold / "types.npy"),
                masks=NpyMember(folder / "masks" / fold / "masks.npy")))
            for m in (folds[-1].images, folds[-1].types, folds[-1].masks):
                if not m.path.is_file():
                    raise m.error("missing")
        elif archive.is_file():
            try:
                with zipfile.ZipFile(archive) as zf:
                    names = zf.namelist()
            except Exception as exc:  # noqa: BLE001
                raise DataError(f"{archive}: unreadable zip archive ({_one_line(exc)})") from None
            members = {}
            for key, suffix in (("images", f"images/{fold}/images.npy"),
                                ("types", f"images/{fold}/types.npy"),
                                ("masks", f"masks/{fold}/masks.npy")):
                member = _zip_member(archive, names, suffix)
                if member is None:
                    raise DataError(f"{archive}: no member 'Fold {k}/{suffix}'")
                members[key] = NpyMember(archive, member)
            folds.append(FoldSource(fold=fold, kind="zip", **members))
        else:
            raise DataError(f"{source}: neither 'Fold {k}/' nor 'fold_{k}.zip' found (expected "
                            f"the official PanNuke download: fold_1.zip, fold_2.zip, fold_3.zip)")
    return folds


def _check_numeric(member: NpyMember, dtype: np.dtype) -> None:
    if not (np.issubdtype(dtype, np.floating) or np.issubdtype(dtype, np.integer)):
        raise member.error(f"dtype {dtype} is not numeric (expected float64)")


def inspect_folds(folds: list[FoldSource]) -> tuple[int, int]:
    """Check shapes, dtypes and tissue names of every fold; fill ``n`` and ``types_list``.
    Returns the common patch size (H, W)."""
    size: tuple[int, int] | None = None
    for fs in folds:
        ishape, idtype = fs.images.header()
        mshape, mdtype = fs.masks.header()
        _check_numeric(fs.images, idtype)
        _check_numeric(fs.masks, mdtype)
        if len(ishape) != 4 or ishape[-1] != 3:
            raise fs.images.error(f"shape {ishape}, expected (N, H, W, 3)")
        if len(mshape) != 4 or mshape[-1] != N_MASK_CHANNELS:
            raise fs.masks.error(f"shape {mshape}, expected (N, H, W, 6) "
                                 f"(5 class instance maps + background)")
        if mshape[:3] != ishape[:3]:
            raise fs.masks.error(f"shape {mshape} does not match images.npy {ishape} "
                                 f"(a mask without its image or vice versa)")
        if ishape[1] < 1 or ishape[2] < 1:
            raise fs.images.error(f"empty patches: shape {ishape}")
        if size is None:
            size = (ishape[1], ishape[2])
        elif size != (ishape[1], ishape[2]):
            raise fs.images.error(f"patches are {ishape[1]}x{ishape[2]}, other folds "
                                  f"{size[0]}x{size[1]}")
        types = fs.types.read_all()
        if types.dtype.kind not in "US":
            raise fs.types.error(f"dtype {types.dtype}, expected a string array (e.g. <U13)")
        if types.ndim != 1 or len(types) != ishape[0]:
            raise fs.types.error(f"shape {types.shape}, expected ({ishape[0]},) to match "
                                 f"images.npy")
        names = [t.decode() if isinstance(t, bytes) else str(t) for t in types.tolist()]
        known = set(TISSUES)
        for i, t in enumerate(names):
            if t not in known:
                raise fs.types.error(f"index {i}: unknown tissue '{t}' (not one of the 19 "
                                     f"PanNuke tissue types)")
        fs.n = ishape[0]
        fs.types_list = names
        fs.image_dtype, fs.mask_dtype = str(idtype), str(mdtype)
    assert size is not None
    return size


# ----------------------------------------------------------------------------------------------
# Conversion of a chunk of patches
# ----------------------------------------------------------------------------------------------

ANOMALY_KEYS = ("overlap_pixels", "overlap_patches", "void_pixels", "void_patches",
                "fully_void_patches", "split_ids", "nucleus_and_background_pixels",
                "nucleus_and_background_patches")


def convert_images(images: np.ndarray, member: NpyMember, indices: np.ndarray) -> np.ndarray:
    """uint8 RGB: ``rint`` and clip of values checked to lie in [-0.5, 255.5] (no NaN)."""
    x = np.asarray(images)
    n = len(x)
    flat = x.reshape(n, -1)
    lo, hi = flat.min(1), flat.max(1)  # a NaN propagates into both
    ok = (lo >= -0.5) & (hi <= 255.5)
    if not ok.all():
        i = int(np.argmin(ok))
        if np.issubdtype(x.dtype, np.floating) and not np.isfinite(flat[i]).all():
            raise member.error(f"index {int(indices[i])}: NaN or infinite values")
        raise member.error(f"index {int(indices[i])}: values {lo[i]:g}..{hi[i]:g} outside 0..255")
    if np.issubdtype(x.dtype, np.integer):
        return x.astype(np.uint8)
    tmp = np.rint(x)
    np.clip(tmp, 0, 255, out=tmp)
    return tmp.astype(np.uint8)


_PLANAR = np.zeros((3, 3, 3), dtype=bool)
_PLANAR[1] = _FOUR  # 4-connectivity within a plane, none across planes


def _as_int_ids(m: np.ndarray, member: NpyMember, indices: np.ndarray) -> np.ndarray:
    """The masks as int32 ids, checking that every value is a finite integer in 0..2^24-1."""
    n = len(m)
    if np.issubdtype(m.dtype, np.floating):
        with np.errstate(invalid="ignore"):
            mi = m.astype(np.int32)  # NaN, inf and huge values cast to garbage: caught here
        bad = (mi != m).reshape(n, -1).any(1)
        if bad.any():
            i = int(np.argmax(bad))
            row = m[i]
            if not np.isfinite(row).all():
                what = "NaN or infinite values"
            elif np.abs(row).max() >= _ID_LIMIT:
                what = f"instance id {np.abs(row).max():g} too large (limit {_ID_LIMIT})"
            else:
                what = "non-integer instance ids"
            raise member.error(f"index {int(indices[i])}: {what}")
    else:
        mi = m
    flat = mi.reshape(n, -1)
    neg = flat.min(1) < 0
    if neg.any():
        raise member.error(f"index {int(indices[np.argmax(neg)])}: negative values")
    top = flat.max(1)
    if (top >= _ID_LIMIT).any():
        i = int(np.argmax(top >= _ID_LIMIT))
        raise member.error(f"index {int(indices[i])}: instance id {top[i]} too large "
                           f"(limit {_ID_LIMIT})")
    return mi.astype(np.int32, copy=False)


def count_split_ids(mi: np.ndarray) -> int:
    """(patch, channel, id) triples of ``(n, H, W, 6)`` int masks whose pixels form more than one
    4-connected component. One labelling of the foreground of all class planes finds the ids
    spread over several components; ids that share their one component with other ids (touching
    nuclei) are checked exactly on their own."""
    from scipy import ndimage  # scipy on use: `harness validate`/`list` import this module

    n, h, w, _ = mi.shape
    planes = np.ascontiguousarray(mi[..., :5].transpose(0, 3, 1, 2)).reshape(n * 5, h, w)
    fg = planes > 0
    if not fg.any():
        return 0
    lab, nlab = ndimage.label(fg, structure=_PLANAR)
    # plane of every foreground pixel (boolean indexing walks the planes in order)
    plane = np.repeat(np.arange(n * 5, dtype=np.int64), fg.reshape(n * 5, -1).sum(1))
    key = plane * _ID_LIMIT + planes[fg]
    base = nlab + 1
    pairs = np.unique(key * base + lab[fg])
    pair_key, pair_lab = pairs // base, pairs % base
    keys, first, count = np.unique(pair_key, return_index=True, return_counts=True)
    split = int((count > 1).sum())
    keys_per_lab = np.bincount(pair_lab, minlength=base)
    ambiguous = (count == 1) & (keys_per_lab[pair_lab[first]] > 1)
    if ambiguous.any():
        boxes = ndimage.find_objects(lab)
        for k, comp in zip(keys[ambiguous], pair_lab[first][ambiguous]):
            box = boxes[int(comp) - 1]
            if ndimage.label(planes[box] == k % _ID_LIMIT, structure=_PLANAR)[1] > 1:
                split += 1
    return split


def convert_masks(masks: np.ndarray, member: NpyMember, indices: np.ndarray,
                  stats: dict[str, int]) -> dict[str, np.ndarray]:
    """Class and instance maps of both void policies for a chunk ``(n, H, W, 6)``."""
    from scipy import ndimage  # scipy on use: `harness validate`/`list` import this module

    mi = _as_int_ids(np.asarray(masks), member, indices)
    n = len(mi)
    # argmax over the six channels, exactly as np.argmax (ties -> the lower channel)
    best = mi[..., 0].copy()
    arg = np.zeros(best.shape, dtype=np.uint8)
    n_nuc = (best > 0).astype(np.uint8)
    for c in range(1, N_MASK_CHANNELS):
        v = mi[..., c]
        arg[v > best] = c
        np.maximum(best, v, out=best)
        if c < 5:
            n_nuc += v > 0
    classes = _CHANNEL_TO_CLASS[arg]
    void = best == 0  # all six channels 0 (values are non-negative)
    classes_bg = classes.copy()
    classes_bg[void] = 0

    # instances: (argmax channel, id) renumbered 1..n per patch in (channel, id) order
    fg = classes_bg > 0
    img = np.repeat(np.arange(n, dtype=np.int64), fg.reshape(n, -1).sum(1))
    stride = 8 * _ID_LIMIT
    key = img * stride + arg[fg].astype(np.int64) * _ID_LIMIT + best[fg]
    uniq, inv = np.unique(key, return_inverse=True)
    owner = uniq // stride
    rank = np.arange(len(uniq)) - np.searchsorted(owner, owner, side="left") + 1
    inst_bg = np.zeros(fg.shape, dtype=np.int32)
    inst_bg[fg] = rank[inv.reshape(-1)]
    inst = inst_bg.copy()
    per_image_void = void.reshape(n, -1).sum(1)
    for i in np.nonzero(per_image_void)[0]:
        labels, _ = ndimage.label(void[i], structure=_FOUR)
        top = int(inst_bg[i].max(initial=0))
        inst[i][void[i]] = labels[void[i]] + top

    # anomaly counts
    overlap = n_nuc > 1
    both = (n_nuc > 0) & (mi[..., 5] > 0)
    stats["overlap_pixels"] += int(overlap.sum())
    stats["overlap_patches"] += int(overlap.reshape(n, -1).any(1).sum())
    stats["void_pixels"] += int(per_image_void.sum())
    stats["void_patches"] += int((per_image_void > 0).sum())
    stats["fully_void_patches"] += int((per_image_void == void[0].size).sum())
    stats["nucleus_and_background_pixels"] += int(both.sum())
    stats["nucleus_and_background_patches"] += int(both.reshape(n, -1).any(1).sum())
    stats["split_ids"] += count_split_ids(mi)
    return {"classes": classes, "instances": inst,
            "classes_background": classes_bg, "instances_background": inst_bg}


# ----------------------------------------------------------------------------------------------
# Writing a cache
# ----------------------------------------------------------------------------------------------

def looks_complete(folds: list[FoldSource], size: tuple[int, int]) -> bool:
    """The source looks like the full official release: 256x256 patches and every fold at least
    90% of its official size. Only then does ``verify`` hold the cache to the official counts."""
    return size == IMAGE_SIZE and all(fs.n >= 0.9 * OFFICIAL_FOLD_SIZES[fs.fold] for fs in folds)


def write_cache(root: Path, name: str, version: str, source: Path,
                selection: dict[str, Sequence[int]], order: list[tuple[str, int]],
                groups: list[str], extra_json: dict[str, Any] | None = None,
                extra_info: dict[str, Any] | None = None, folds: list[FoldSource] | None = None,
                size: tuple[int, int] | None = None, chunk: int = 16) -> dict[str, Any]:
    """Convert the selected patches into the cache at ``root`` (atomically).

    ``selection`` maps each fold to the original indices to keep; ``order`` is the sample order
    of the cache as (fold, index) pairs (each selected pair exactly once), ``groups`` the group
    of each sample in that order. Returns the READY info.
    """
    from harness.engine.runtime import progress_bar

    if folds is None:
        folds = locate_folds(source)
        size = inspect_folds(folds)
    assert size is not None
    by_fold = {fs.fold: fs for fs in folds}
    position = {pair: i for i, pair in enumerate(order)}
    if len(position) != len(order):
        raise ValueError("duplicate (fold, index) pairs in the sample order")
    n_total = len(order)
    h, w = size
    info: dict[str, Any] = {
        "dataset": name, "version": version, "source": str(Path(source).expanduser().resolve()),
        "source_kind": sorted({fs.kind for fs in folds}),
        "source_fold_sizes": {fs.fold: fs.n for fs in folds},
        "source_dtypes": {fs.fold: {"images": fs.image_dtype, "masks": fs.mask_dtype}
                          for fs in folds},
        "complete_release": looks_complete(folds, size),
        "image_size": [h, w], "samples": n_total,
        "void_policies": {p: list(files) for p, files in POLICY_ARRAYS.items()},
        "class_names": list(CLASS_NAMES),
    }
    anomalies: dict[str, dict[str, int]] = {}
    ids, tissues = [None] * n_total, [None] * n_total
    with CacheWriter(root) as writer:
        out = {"images": writer.array("images", (n_total, h, w, 3), np.uint8)}
        for stem in ("classes", "classes_background"):
            out[stem] = writer.array(stem, (n_total, h, w), np.uint8)
        for stem in ("instances", "instances_background"):
            out[stem] = writer.array(stem, (n_total, h, w), np.int32)
        with progress_bar(f"preparing {name}", n_total) as advance:
            for fold in FOLDS:
                fs = by_fold[fold]
                idx = np.array(sorted(int(i) for i in selection.get(fold, ())), dtype=np.int64)
                if len(idx) and (idx[0] < 0 or idx[-1] >= fs.n):
                    raise ValueError(f"{fold}: selected index outside 0..{fs.n - 1}")
                stats = dict.fromkeys(ANOMALY_KEYS, 0)
                vmax = -np.inf
                start = 0
                chunks = zip(fs.images.rows(idx, chunk), fs.masks.rows(idx, chunk))
                for im_chunk, mk_chunk in chunks:
                    sel = idx[start:start + len(im_chunk)]
                    if len(mk_chunk) != len(im_chunk):
                        raise fs.masks.error("fewer rows than images.npy")
                    if len(im_chunk):
                        vmax = max(vmax, float(np.max(im_chunk)))
                    img8 = convert_images(im_chunk, fs.images, sel)
                    maps = convert_masks(mk_chunk, fs.masks, sel, stats)
                    dest = np.array([position[(fold, int(i))] for i in sel], dtype=np.int64)
                    maps["images"] = img8
                    if len(dest) and dest[-1] - dest[0] + 1 == len(dest):  # a block: one write
                        for stem, arr in maps.items():
                            out[stem][dest[0]:dest[-1] + 1] = arr
                    else:
                        for stem, arr in maps.items():
                            out[stem][dest] = arr
                    for j, d in enumerate(dest):
                        ids[d] = f"{fold}/{int(sel[j]):05d}"
                        tissues[d] = fs.types_list[int(sel[j])]
                    start += len(im_chunk)
                    advance(len(im_chunk), fold=fold)
                if start != len(idx):
                    raise fs.images.error(f"yielded {start} of {len(idx)} selected rows")
                if len(idx) >= 4 and vmax <= 1.0:
                    raise fs.images.error("values lie in 0..1; expected the release's 0..255 range")
                anomalies[fold] = stats
        if any(i is None for i in ids):
            raise ValueError("the sample order names pairs that were not selected")
        info["anomalies"] = anomalies
        info["group_sizes"] = _counts(groups)
        info.update(extra_info or {})
        writer.samples(list(ids), list(tissues), list(groups))
        for fname, data in (extra_json or {}).items():
            writer.json(fname, data)
        writer.finish(info)
    return info


def _counts(values: Sequence[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return dict(sorted(out.items()))


SAMPLE_ID = re.compile(r"^fold([123])/(\d{5,})$")


def parse_sample_id(sid: str) -> tuple[str, int]:
    match = SAMPLE_ID.match(sid)
    if not match:
        raise ValueError(f"sample id '{sid}' is not 'foldK/NNNNN'")
    return f"fold{match.group(1)}", int(match.group(2))
