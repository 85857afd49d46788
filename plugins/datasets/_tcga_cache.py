"""What preparing the ``tcga`` dataset shares between its two sources (a folder of tiles,
:mod:`._tcga_tiles`; whole-slide images, :mod:`._tcga_slides`): listing the source's files,
recording skipped ones, decoding in threads and writing the ``tiles.npy`` cache."""

from __future__ import annotations

import os
from contextlib import closing
from pathlib import Path
from typing import Any, Callable

import numpy as np

from harness.console import console, progress_bar
from harness.data.cache import CacheWriter
from harness.errors import DataError, one_line

DECODE_THREADS = 8  # threads decoding tiles (PIL and OpenSlide release the GIL)
PRINTED_SKIPS = 20  # skipped files printed one per line (all are recorded in READY)


def list_files(source: Path, extensions: tuple[str, ...]) -> tuple[list[tuple[str, Path]], int]:
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


def strip_ext(rel: str) -> str:
    return rel.rsplit(".", 1)[0] if "." in rel.rsplit("/", 1)[-1] else rel


def select(n: int, max_tiles: int | None, seed: int) -> np.ndarray:
    """Indices of the kept entries: all, or a seeded random subset kept in original order."""
    if max_tiles is None or n <= max_tiles:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=max_tiles, replace=False))


def decode_threads() -> int:
    return min(DECODE_THREADS, os.cpu_count() or 1)


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


class Preparation:
    """One ``prepare`` of a dataset whose cache is ``tiles.npy``: its settings (``config``), its
    cache folder (``root``) and the files it skipped so far (all go to READY)."""

    def __init__(self, name: str, version: str, root: Path, config: Any):
        self.name, self.version, self.root, self.config = name, version, root, config
        self.skipped: list[dict[str, Any]] = []

    def skip(self, entry: dict[str, Any]) -> None:
        """Record a skipped file and print it (the first few, as they come)."""
        self.skipped.append(entry)
        if len(self.skipped) <= PRINTED_SKIPS:
            console.print(f"{self.name}: skipped {entry['file']}: {entry['reason']}",
                          markup=False, highlight=False, soft_wrap=True)

    def corrupt(self, path: Path | str, what: str, rel: str) -> None:
        """An unreadable file: a DataError naming it, or skipped (``corrupt_policy``)."""
        if self.config.corrupt_policy == "error":
            raise DataError(f"{path}: {what}")
        self.skip({"file": rel, "reason": what})

    def write(self, source: Path, mode: str, items: list, decode: Callable, provenance: Callable,
              make_id: Callable, extra: dict[str, Any], decode_errors: tuple = ()) -> None:
        """Decode ``items`` (``(rel, path, ...)`` tuples; in threads, results in order) into
        ``tiles.npy``, atomically with READY last."""
        t, n = self.config.tile_size, len(items)
        ids: list[str] = []
        index: list[dict[str, Any]] = []
        with CacheWriter(self.root) as w:
            assert w.dir is not None
            staging = w.dir / "tiles.staging.npy"
            arr = np.lib.format.open_memmap(staging, mode="w+", dtype=np.uint8, shape=(n, t, t, 3))
            k = 0
            # closing(): on an error the decoding threads stop before the caller closes slides
            with progress_bar(f"{self.name}: decoding {n} tiles ({mode})", total=n) as advance, \
                    closing(_decode_all(items, decode, decode_threads())) as decoded:
                for item, (tile, exc) in decoded:
                    advance()
                    if exc is not None:
                        if isinstance(exc, decode_errors):
                            raise exc
                        self.corrupt(item[1], f"unreadable image ({one_line(exc, True)})", item[0])
                        continue
                    arr[k] = tile
                    ids.append(make_id(item))
                    index.append(provenance(item))
                    k += 1
            arr.flush()
            del arr
            if k == 0:
                raise DataError(f"{source}: every tile was unreadable (e.g. "
                                f"{self.skipped[-1]['file']}: {self.skipped[-1]['reason']})")
            _keep_decoded(w, staging, k, t, complete=k == n)
            w.json("tiles.json", {"ids": ids, "index": index})
            w.finish({"dataset": self.name, "version": self.version, "mode": mode,
                      "source": str(source), "tiles": k, "tile_size": t,
                      "complete_release": False, "skipped": self.skipped,
                      "config": self.config.model_dump(mode="json"), **extra})
        more = (f" ({len(self.skipped) - PRINTED_SKIPS} not printed; all listed in "
                f"{self.root / 'READY'})" if len(self.skipped) > PRINTED_SKIPS else "")
        console.print(f"{self.name}: {k} tiles of {t}x{t} ({mode}) from {source}; "
                      f"{len(self.skipped)} files skipped{more}", markup=False, highlight=False,
                      soft_wrap=True)


def _keep_decoded(w: CacheWriter, staging: Path, k: int, t: int, complete: bool) -> None:
    """The staging array as ``tiles.npy``: renamed when every tile decoded, else its first
    ``k`` tiles copied (some turned out unreadable under ``corrupt_policy: skip``)."""
    assert w.dir is not None
    if complete:
        os.replace(staging, w.dir / "tiles.npy")
        return
    src = np.load(staging, mmap_mode="r")
    dst = w.array("tiles", (k, t, t, 3), np.uint8)
    for start in range(0, k, 256):
        stop = min(start + 256, k)
        dst[start:stop] = src[start:stop]
    del src
    staging.unlink()
