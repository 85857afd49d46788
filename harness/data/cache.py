"""The prepared-dataset cache shared by dataset plugins.

A prepared labeled dataset is a folder of uint8/int32 ``.npy`` arrays (memory-mapped on load),
``samples.json`` (id, tissue and group of every sample, in array order), optional split files,
and ``manifest.json`` (shape, dtype and sha256 of every file), written atomically with
``READY`` last. A plugin converts the official download into this layout in ``prepare`` (with
:class:`CacheWriter`) and inherits loading and the generic checks from :class:`CachedDataset`.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from harness.data.base import (Dataset, LabeledArrays, atomic_directory, mark_ready,
                               prepare_command_for)

LABELED_ARRAYS = ("images", "instances", "classes")


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


class RowWriter:
    """One ``.npy`` array of the cache, written row block by row block with ``os.pwrite`` at
    its offset in the file: nothing of it is memory-mapped, so the bytes written sit in the page
    cache, not in this process's resident memory (a whole-file writable map keeps every page it
    touched resident: 15 GiB of max RSS when preparing the full PanNuke release, which an
    RSS-based job limit such as SLURM's ``--mem`` counts). ``arr[i] = ...``, ``arr[a:b] = ...``
    and ``arr[[i, j, ...]] = ...`` (first axis) as on the writable map it replaces."""

    def __init__(self, path: Path, shape: tuple[int, ...], dtype: Any):
        # the header and the file's full (sparse) size, as the map it replaces wrote them
        header = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
        self.offset, self.shape, self.dtype = int(header.offset), tuple(shape), np.dtype(dtype)
        del header
        self.row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
        self._fd = os.open(path, os.O_RDWR)

    def __len__(self) -> int:
        return self.shape[0]

    def __setitem__(self, index: Any, value: Any) -> None:
        if isinstance(index, tuple) and index and isinstance(index[0], (int, np.integer, slice)):
            # rows[first][rest] = value: read those rows, set, write them back
            start, stop = self._span(index[0])
            block = self._read(start, stop)
            block[(slice(None) if isinstance(index[0], slice) else 0, *index[1:])] = value
            self._write(start, stop - start, block)
        elif isinstance(index, (int, np.integer)):
            self._write(int(index), 1, value)
        elif isinstance(index, slice):
            start, stop, step = index.indices(self.shape[0])
            if step != 1:
                raise IndexError("RowWriter: slices with a step are not supported")
            self._write(start, max(0, stop - start), value)
        else:
            rows = np.asarray(index, dtype=np.int64).reshape(-1)
            values = np.broadcast_to(np.asarray(value, dtype=self.dtype),
                                     (len(rows), *self.shape[1:]))
            for j, row in enumerate(rows):
                self._write(int(row), 1, values[j])

    def _span(self, first: Any) -> tuple[int, int]:
        if isinstance(first, slice):
            start, stop, step = first.indices(self.shape[0])
            if step != 1:
                raise IndexError("RowWriter: slices with a step are not supported")
            return start, max(start, stop)
        return int(first), int(first) + 1

    def _read(self, start: int, stop: int) -> np.ndarray:
        data = os.pread(self._fd, (stop - start) * self.row_bytes, self.offset + start * self.row_bytes)
        return np.frombuffer(bytearray(data), dtype=self.dtype).reshape(stop - start, *self.shape[1:])

    def _write(self, start: int, count: int, value: Any) -> None:
        if count == 0:
            return
        if start < 0 or start + count > self.shape[0]:
            raise IndexError(f"rows {start}..{start + count - 1} outside 0..{self.shape[0] - 1}")
        data = np.ascontiguousarray(np.broadcast_to(np.asarray(value, dtype=self.dtype),
                                                    (count, *self.shape[1:])))
        view, at = memoryview(data).cast("B"), self.offset + start * self.row_bytes
        while len(view):
            done = os.pwrite(self._fd, view, at)
            view, at = view[done:], at + done

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def read_rows(arr: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Rows ``start:stop`` of ``arr`` as an array in memory. For a whole-file memory map (as
    ``np.load(mmap_mode="r")`` returns) they are read through a map of just those rows that is
    dropped at once: a pass over a cache holds one chunk in resident memory, not every page it
    has read (the whole map would keep them: 3.8 GiB when verifying the full PanNuke cache)."""
    stop = min(stop, len(arr))
    mm = getattr(arr, "_mmap", None)
    if not (isinstance(arr, np.memmap) and mm is not None and arr.filename
            and arr.flags.c_contiguous and stop > start):
        return np.asarray(arr[start:stop])
    shift = int(arr.offset) % mmap.ALLOCATIONGRANULARITY
    if arr.ctypes.data != np.frombuffer(mm, np.uint8).ctypes.data + shift:
        return np.asarray(arr[start:stop])  # a view into a map: not the whole array
    row_bytes = int(np.prod(arr.shape[1:], dtype=np.int64)) * arr.dtype.itemsize
    window = np.memmap(arr.filename, dtype=arr.dtype, mode="r",
                       offset=int(arr.offset) + start * row_bytes,
                       shape=(stop - start, *arr.shape[1:]))
    try:
        return np.array(window)
    finally:
        window._mmap.close()  # noqa: SLF001 - unmap now, not when garbage-collected
        del window


class CacheWriter:
    """Writes a prepared cache into a temporary folder that becomes ``root`` only on success::

        with CacheWriter(root) as w:
            images = w.array("images", (n, 256, 256, 3), np.uint8)   # a writable memmap
            ...fill images[i] one sample at a time...
            w.samples(ids, tissues, groups)
            w.json("split.json", {...})
            w.finish({"source": str(source)})
    """

    def __init__(self, root: Path):
        self._atomic = atomic_directory(Path(root))
        self.dir: Path | None = None
        self._arrays: dict[str, RowWriter] = {}
        self._finished = False

    def __enter__(self) -> "CacheWriter":
        self.dir = self._atomic.__enter__()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        for arr in self._arrays.values():
            arr.close()  # before the folder is renamed or removed
        self._arrays.clear()
        if exc_type is None and not self._finished:
            self._atomic.__exit__(RuntimeError, None, None)  # discard the partial folder
            raise RuntimeError("CacheWriter closed without finish(): nothing was written")
        self._atomic.__exit__(exc_type, exc, tb)

    def array(self, name: str, shape: tuple[int, ...], dtype: Any) -> RowWriter:
        """A ``.npy`` array filled in parts (``arr[i] = ...``, ``arr[a:b] = ...``), so arrays
        larger than memory are written holding one part at a time (:class:`RowWriter`)."""
        assert self.dir is not None
        arr = RowWriter(self.dir / f"{name}.npy", shape, dtype)
        self._arrays[name] = arr
        return arr

    def json(self, name: str, data: Any) -> None:
        assert self.dir is not None
        # json.dump encodes piece by piece (the same text as dumps): a 150,000-tile index is
        # never one string in memory
        with open(self.dir / name, "w") as fh:
            json.dump(data, fh, indent=1, sort_keys=True)

    def samples(self, ids: list[str], tissues: list[str], groups: list[str]) -> None:
        if len(set(ids)) != len(ids):
            raise ValueError("sample ids are not unique")
        if not ids:  # prepare and verify would pass and the first run crash: refuse it here
            from harness.errors import NoSamples

            raise NoSamples("the source holds no samples (0 images found); check that --source "
                            "is the dataset's official download")
        self.json("samples.json", {"ids": ids, "tissues": tissues, "groups": groups})

    def finish(self, info: dict[str, Any]) -> None:
        """Flush arrays, write the manifest (checksums) and READY."""
        assert self.dir is not None
        for arr in self._arrays.values():
            arr.close()  # written with pwrite: in the file once written, nothing to flush
        files = {}
        for path in sorted(self.dir.iterdir()):
            if path.is_file():
                entry: dict[str, Any] = {"sha256": file_sha256(path), "bytes": path.stat().st_size}
                if path.suffix == ".npy":
                    arr = np.load(path, mmap_mode="r")
                    entry.update(shape=list(arr.shape), dtype=str(arr.dtype))
                files[path.name] = entry
        (self.dir / "manifest.json").write_text(json.dumps({"files": files}, indent=1, sort_keys=True))
        mark_ready(self.dir, info)
        self._finished = True


def verify_manifest(root: Path, checksums: bool = True) -> list[str]:
    """Missing files, changed sizes, shapes, dtypes or checksums of a prepared cache."""
    root = Path(root)
    manifest_path = root / "manifest.json"
    if not manifest_path.exists():
        return [f"{manifest_path}: missing (prepare the dataset again)"]
    problems = []
    files = json.loads(manifest_path.read_text())["files"]
    for name, entry in files.items():
        path = root / name
        if not path.exists():
            problems.append(f"{path}: missing")
            continue
        if path.stat().st_size != entry["bytes"]:
            problems.append(f"{path}: size {path.stat().st_size} != {entry['bytes']} recorded")
            continue
        if "shape" in entry:
            try:
                arr = np.load(path, mmap_mode="r")
            except ValueError as exc:
                problems.append(f"{path}: unreadable ({exc})")
                continue
            if list(arr.shape) != entry["shape"] or str(arr.dtype) != entry["dtype"]:
                problems.append(f"{path}: shape/dtype {arr.shape} {arr.dtype} != recorded "
                                f"{tuple(entry['shape'])} {entry['dtype']}")
        if checksums and file_sha256(path) != entry["sha256"]:
            problems.append(f"{path}: checksum differs from the one recorded at prepare time")
    return problems


#: Sizes and modification times of a cache's files when its checksums last matched.
VERIFIED = ".verified.json"


def cache_problems_at_run(root: Path) -> list[str]:
    """What ``verify_manifest`` finds, run cheaply before each run: sizes, shapes and dtypes
    every time; checksums only when a file changed (size or mtime) since they last matched,
    so a tampered, truncated or bit-flipped cache is refused and an intact one costs a stat."""
    root = Path(root)
    if not (root / "manifest.json").exists():
        return []  # a dataset that keeps no manifest (its own verify covers it)
    try:
        files = json.loads((root / "manifest.json").read_text())["files"]
        stats = {n: [(root / n).stat().st_size, (root / n).stat().st_mtime_ns] for n in files}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return [f"{root / 'manifest.json'}: unreadable or lists missing files ({type(exc).__name__})"]
    try:
        if json.loads((root / VERIFIED).read_text()) == stats:
            return []
    except (OSError, ValueError):
        pass
    problems = verify_manifest(root)
    if not problems:
        try:
            (root / VERIFIED).write_text(json.dumps(stats))
        except OSError:  # a read-only shared store: check again next time
            pass
    return problems


class CachedDataset(Dataset):
    """A labeled dataset stored in the :class:`CacheWriter` layout. Subclasses implement
    ``prepare`` (and may extend ``verify`` with their expected counts)."""

    def load(self) -> LabeledArrays:
        if not self.is_prepared():
            raise FileNotFoundError(f"{self.root} is not a prepared '{self.name}' cache")
        samples = json.loads((self.root / "samples.json").read_text())
        arrays = {n: np.load(self.root / f"{n}.npy", mmap_mode="r") for n in LABELED_ARRAYS}
        return LabeledArrays(ids=samples["ids"], tissues=samples["tissues"],
                             groups=samples["groups"], **arrays)

    def cache_problems(self) -> list[str]:
        """The checks every cached dataset starts its ``verify`` with: prepared, and the files
        match the manifest written at prepare time (sizes, shapes, dtypes, checksums)."""
        if not self.is_prepared():
            return [f"{self.root}: not prepared (run `{prepare_command_for(self)}`)"]
        return verify_manifest(self.root)

    def checked_arrays(self) -> tuple[LabeledArrays | None, list[str]]:
        """The cached arrays (None when the cache itself is not sound) and the problems of the
        cache and of the arrays' contents: the start of every labeled dataset's ``verify``."""
        problems = self.cache_problems()
        if problems:
            return None, problems
        arrays = self.load()
        return arrays, problems + check_labeled_arrays(arrays, len(self.class_names))

    def verify(self) -> list[str]:
        arrays, problems = self.checked_arrays()
        if arrays is None:
            return problems
        expected = self.expected_group_sizes(self.config)
        if expected:
            counts = group_counts(arrays.groups)
            for group, n in expected.items():
                if counts.get(group, 0) != n:
                    problems.append(f"{self.root}: group '{group}' has {counts.get(group, 0)} "
                                    f"samples, expected {n}")
        return problems


def check_labeled_arrays(arrays: LabeledArrays, num_fg_classes: int,
                         chunk: int = 256) -> list[str]:
    """Shapes, dtypes, class ids in range and instance/class agreement, chunk by chunk."""
    problems = []
    n = len(arrays)
    if arrays.images.ndim != 4 or arrays.images.shape[-1] != 3 or arrays.images.dtype != np.uint8:
        problems.append(f"images: expected (N, H, W, 3) uint8, got {arrays.images.shape} {arrays.images.dtype}")
    hw = arrays.images.shape[1:3]
    for name, dtype in (("instances", np.int32), ("classes", np.uint8)):
        arr = getattr(arrays, name)
        if arr.shape != (n, *hw) or arr.dtype != dtype:
            problems.append(f"{name}: expected {(n, *hw)} {np.dtype(dtype)}, got {arr.shape} {arr.dtype}")
    if problems:
        return problems
    for start in range(0, n, chunk):
        cls = read_rows(arrays.classes, start, start + chunk)
        inst = read_rows(arrays.instances, start, start + chunk)
        if cls.max(initial=0) > num_fg_classes:
            bad = start + int(np.argmax(cls.reshape(len(cls), -1).max(1) > num_fg_classes))
            problems.append(f"classes: sample '{arrays.ids[bad]}' has class id "
                            f"{int(cls.max())} > {num_fg_classes}")
            break
        if ((inst > 0) != (cls > 0)).any():
            bad = start + int(np.argmax(((inst > 0) != (cls > 0)).reshape(len(cls), -1).any(1)))
            problems.append(f"sample '{arrays.ids[bad]}': instance and class maps disagree "
                            f"about which pixels are nuclei")
            break
    return problems


def group_counts(groups: Iterable[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for g in groups:
        counts[g] = counts.get(g, 0) + 1
    return counts
