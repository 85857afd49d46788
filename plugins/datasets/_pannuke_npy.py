"""One ``.npy`` array of the PanNuke release, in a folder or inside one of its zip archives:
its header (shape, dtype, size checked), a small array whole, and the rows of a big one a chunk
at a time (a file through a map of each chunk's rows, a zip member streamed), so memory holds a
chunk whatever the fold's size. Split from :mod:`._pannuke_io`."""

from __future__ import annotations

import io
import math
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from harness.data.cache import read_rows
from harness.errors import DataError, one_line


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
            raise self.error(f"unreadable archive member ({one_line(exc)})") from None
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
            raise self.error(f"not a readable .npy array ({one_line(exc)})") from None
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
            raise self.error(f"not a readable .npy array ({one_line(exc)})") from None

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
            raise self.error(f"not a readable .npy array ({one_line(exc)})") from None

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
                    raise self.error(f"read failed ({one_line(exc)})") from None
            return
        yield from self._zip_rows(indices, chunk)

    def _zip_rows(self, indices: np.ndarray, chunk: int) -> Iterator[np.ndarray]:
        try:
            zf = zipfile.ZipFile(self.path)
        except Exception as exc:  # noqa: BLE001
            raise self.error(f"unreadable zip archive ({one_line(exc)})") from None
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
                                     f"({one_line(exc)})") from None
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
