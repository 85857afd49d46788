"""Reading the official PanNuke release and converting it into the harness cache.

Shared by the ``pannuke`` and ``pannuke_breast`` plugins (Gamper et al., 2019/2020; thesis
§4.1.1).

Source layouts accepted (``--source`` is a folder):

* the unpacked archives: ``Fold k/images/foldk/images.npy``, ``Fold k/images/foldk/types.npy``
  and ``Fold k/masks/foldk/masks.npy`` for k = 1, 2, 3;
* the three official archives ``fold_1.zip``, ``fold_2.zip``, ``fold_3.zip`` side by side. Their
  ``.npy`` members are streamed (header parsed with ``numpy.lib.format``, rows decompressed a chunk
  at a time), never extracted or loaded whole.

A folder ``Fold k`` wins over ``fold_k.zip`` when both exist. Unpacked arrays are read through
a map of each chunk's rows only, dropped before the next (:mod:`._pannuke_npy`), the cache is
written with ``pwrite`` (:class:`harness.data.cache.RowWriter`), and every fold is converted
chunk by chunk (:mod:`._pannuke_convert`), so the peak RSS stays under 1 GiB whatever the
release size (``tests/test_prepare_memory.py``).

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

Anomalies (found in the released arrays) are tolerated and counted per fold in the READY info:
overlap pixels and patches, void pixels, patches with void and fully void patches, ids spanning
several 4-connected components, and pixels that are both nucleus and background.
"""

from __future__ import annotations

import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np

from harness.data.cache import CacheWriter
from harness.errors import DataError, one_line

from ._pannuke_convert import ANOMALY_KEYS, N_MASK_CHANNELS, convert_images, convert_masks
from ._pannuke_npy import NpyMember

CLASS_NAMES = ("neoplastic", "inflammatory", "connective", "dead", "epithelial")
#: The 19 tissue names exactly as stored in the release's ``types.npy``.
TISSUES = ("Adrenal_gland", "Bile-duct", "Bladder", "Breast", "Cervix", "Colon", "Esophagus",
           "HeadNeck", "Kidney", "Liver", "Lung", "Ovarian", "Pancreatic", "Prostate", "Skin",
           "Stomach", "Testis", "Thyroid", "Uterus")
FOLDS = ("fold1", "fold2", "fold3")
#: Patches per fold, counted in the released arrays (the thesis's 7,904 is a typo-level
#: documentation discrepancy, the arrays hold 7,901).
OFFICIAL_FOLD_SIZES = {"fold1": 2656, "fold2": 2523, "fold3": 2722}
IMAGE_SIZE = (256, 256)

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
                raise DataError(f"{archive}: unreadable zip archive ({one_line(exc)})") from None
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
    from harness.console import progress_bar

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
                anomalies[fold] = _convert_fold(fs, idx, out, position, (ids, tissues), advance, chunk)
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


def _convert_fold(fs: FoldSource, idx: np.ndarray, out: dict[str, np.ndarray],
                  position: dict[tuple[str, int], int], names: tuple[list, list], advance: Any,
                  chunk: int) -> dict[str, int]:
    """Convert the rows ``idx`` of one source fold, ``chunk`` rows at a time, into the cache
    arrays ``out`` at their ``position`` in the sample order, filling ``names`` (ids, tissues);
    returns the fold's mask anomaly counts."""
    fold = fs.fold
    if len(idx) and (idx[0] < 0 or idx[-1] >= fs.n):
        raise ValueError(f"{fold}: selected index outside 0..{fs.n - 1}")
    ids, tissues = names
    stats = dict.fromkeys(ANOMALY_KEYS, 0)
    vmax = -np.inf
    start = 0
    for im_chunk, mk_chunk in zip(fs.images.rows(idx, chunk), fs.masks.rows(idx, chunk)):
        sel = idx[start:start + len(im_chunk)]
        if len(mk_chunk) != len(im_chunk):
            raise fs.masks.error("fewer rows than images.npy")
        if len(im_chunk):
            vmax = max(vmax, float(np.max(im_chunk)))
        img8 = convert_images(im_chunk, fs.images, sel)
        maps = convert_masks(mk_chunk, fs.masks, sel, stats)
        maps["images"] = img8
        dest = np.array([position[(fold, int(i))] for i in sel], dtype=np.int64)
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
    return stats


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
