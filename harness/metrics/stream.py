"""Scoring a test fold's predictions while they are still being made.

The evaluate stage predicts in batches on the training device. A metric family whose images score
independently (PQ) scores each batch as it arrives, in worker processes, so the CPU-side scoring
overlaps the inference instead of following it; on a GPU node that CPU side, not the GPU, bounds
a short evaluation. The values are those of scoring everything at the end: chunk results are
collected in submission order and summarised in the calling process.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import os
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["ChunkScorer", "StreamingScorer", "auto_workers", "available_cpus"]

#: At most this many scoring processes, whatever the node has: eight keep ahead of one GPU's
#: inference on PanNuke-size images (a few ms of PQ per image).
MAX_WORKERS = 8


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask, e.g. a SLURM or cgroup allotment)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def auto_workers(n_images: int, chunk: int) -> int:
    """Scoring processes for ``n_images``: none when they fit in two chunks (starting processes
    would cost more than it saves), else one per spare CPU (the calling process keeps
    predicting), at least one, at most :data:`MAX_WORKERS`."""
    if n_images <= 2 * chunk:
        return 0
    return max(1, min(MAX_WORKERS, available_cpus() - 1))


def _context() -> Any:
    # fork, as PyTorch's DataLoader workers on Linux: the children only run NumPy/SciPy, never
    # torch or CUDA, and start in milliseconds; spawn would re-import the harness in each.
    methods = mp.get_all_start_methods()
    return mp.get_context("fork" if "fork" in methods else "spawn")


class ChunkScorer:
    """``fn(*args)`` for each submitted chunk, inline (``workers=0``) or in worker processes.

    At most ``2 * workers`` chunks wait at a time (a submit past that waits for the oldest), so a
    fast producer never holds a whole test fold in the queue."""

    def __init__(self, fn: Callable[..., Any], workers: int):
        self._fn = fn
        self._results: list[Any] = []
        self._pool = (cf.ProcessPoolExecutor(workers, mp_context=_context()) if workers > 0
                      else None)
        self._max_pending = 2 * max(workers, 1)

    def submit(self, *args: Any) -> None:
        if self._pool is None:
            self._results.append(self._fn(*args))
            return
        self._results.append(self._pool.submit(self._fn, *args))
        pending = [f for f in self._results if isinstance(f, cf.Future) and not f.done()]
        if len(pending) > self._max_pending:
            pending[0].result()

    def results(self) -> list[Any]:
        """Every chunk's result, in submission order (re-raises a worker's exception)."""
        try:
            return [r.result() if isinstance(r, cf.Future) else r for r in self._results]
        finally:
            self.close()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


class StreamingScorer:
    """A metric family's scorer (:meth:`harness.metrics.family.MetricFamily.scorer`) for families
    whose images score independently.

    ``score(pred, *truth)`` scores one chunk of predictions given ``truth(start, stop)``, the
    ground truth of the chunk's rows; ``summarise(list of chunk scores)`` gives the metrics."""

    def __init__(self, score: Callable[..., Any], truth: Callable[[int, int], Sequence[Any]],
                 summarise: Callable[[list[Any]], dict[str, Any]], workers: int):
        self._chunks = ChunkScorer(score, workers)
        self._truth, self._summarise = truth, summarise
        self._n = 0

    def add(self, pred: Any) -> None:
        """The next predictions, in row order."""
        start, self._n = self._n, self._n + len(pred)
        self._chunks.submit(pred, *self._truth(start, self._n))

    def finish(self) -> dict[str, Any]:
        #: every chunk's score, in order (a decoded chunk's maps ride along: the evaluate stage
        #: saves them)
        self.chunk_results = self._chunks.results()
        return self._summarise(self.chunk_results)

    def close(self) -> None:
        self._chunks.close()
