"""The training loop's per-epoch data loader: shuffled, resumable mid-epoch, shardable over DDP
ranks, and exact under resume whatever ``num_workers`` is.

Every random draw of an epoch is a pure function of (seed, epoch, batch index), or of state
the checkpoint restores, independent of worker processes and their persistence:

* the permutation (:class:`EpochPermutation`) is drawn from a generator seeded with the
  epoch's seed alone (PyTorch's ``RandomSampler`` shares the loader's generator with the
  workers' base seed, so a persistent iterator and a fresh one - a resumed run - see other
  permutations);
* in a worker process, batch ``b`` re-seeds torch, ``random`` and numpy from (epoch seed, rank,
  ``b``) before its items are loaded (:class:`SeededBatches`), so a worker's augmentations do
  not depend on which worker loads it, on what it loaded before or on whether it outlived an
  epoch. Without workers (``num_workers: 0``) items are loaded in the training process from
  its own random stream, seeded per epoch and restored by the checkpoint, exactly as before.

Workers keep their batches in shared memory (``/dev/shm``): before the first batch the loader's
worst case is checked against the free space and the prefetch depth, then the workers, are
lowered to fit (one warning): a full ``/dev/shm`` is a bus error, not a message.
"""

from __future__ import annotations

import os
import random
from typing import Any, Callable, Iterator

import numpy as np
import torch

from harness.engine import distributed as dist
from harness.console import console
from harness.engine.runtime import rng_state, set_rng_state

#: batches each worker keeps ready on CUDA (PyTorch's default, 2, elsewhere)
CUDA_PREFETCH = 4


def batch_seed(epoch_seed: int, rank: int, index: int) -> int:
    """A 63-bit seed from (epoch seed, rank, batch index)."""
    words = np.random.SeedSequence([epoch_seed % 2**32, epoch_seed // 2**32 % 2**32, rank,
                                    index]).generate_state(2, np.uint64)
    return int(words[0] >> np.uint64(1))


class EpochPermutation(torch.utils.data.Sampler):
    """A random permutation of ``range(n)`` drawn from a generator seeded with ``seed`` (set per
    epoch). The first 64-bit draw is skipped: the DataLoader's iterator took it (its workers'
    base seed) from the generator it shared with ``RandomSampler``, so the permutations are
    those of earlier versions of this harness without workers."""

    def __init__(self, n: int):
        self.n, self.seed = n, 0

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed)
        torch.empty((), dtype=torch.int64).random_(generator=generator)
        return iter(torch.randperm(self.n, generator=generator).tolist())


class Batch(list):
    """A batch's indices and the seed its worker draws its augmentations from."""

    seed: int | None = None


class _SkippingBatches(torch.utils.data.Sampler):
    """A batch sampler whose next pass draws (without loading) and drops ``skip`` batches.

    Under DDP (``world`` > 1) every rank draws the same global batches (one generator, re-seeded
    per epoch: the role of ``DistributedSampler.set_epoch``) and keeps its contiguous slice
    (rank ``r`` of ``W``: ``np.array_split``'s ``r``-th piece). Unlike ``DistributedSampler``,
    the global batches are the single-process ones whatever the world size, so a run on 4 GPUs
    trains on the same batches as on 1 (and nothing is padded). Each batch carries its seed
    (:func:`batch_seed` of the epoch's seed, the rank and its index in the epoch)."""

    def __init__(self, inner: torch.utils.data.BatchSampler, rank: int = 0, world: int = 1):
        self.inner, self.skip, self.rank, self.world = inner, 0, rank, world
        self.epoch_seed = 0

    def set_epoch_seed(self, seed: int) -> None:
        """The epoch's seed: its permutation and its batches' seeds."""
        self.epoch_seed = seed
        if isinstance(self.inner.sampler, EpochPermutation):
            self.inner.sampler.seed = seed

    def __len__(self) -> int:
        return len(self.inner)

    def _bounds(self, n: int) -> tuple[int, int]:
        base, extra = divmod(n, self.world)
        lo = self.rank * base + min(self.rank, extra)
        return lo, lo + base + (self.rank < extra)

    def share(self, n: int) -> float:
        """``W * n_rank / n`` for a global batch of ``n``: the factor that makes DDP's mean of
        per-rank mean losses the global mean when the last batch does not split evenly."""
        lo, hi = self._bounds(n)
        return self.world * (hi - lo) / n

    def __iter__(self) -> Iterator[list[int]]:
        batches = iter(self.inner)
        for _ in range(self.skip):
            next(batches, None)
        for index, batch in enumerate(batches, start=self.skip):
            lo, hi = self._bounds(len(batch)) if self.world > 1 else (0, len(batch))
            piece = Batch(batch[lo:hi])
            piece.seed = batch_seed(self.epoch_seed, self.rank, index)
            yield piece


class SeededBatches(torch.utils.data.Dataset):
    """``data`` whose batches, when loaded in a worker process, first re-seed torch, ``random``
    and numpy from the batch's seed; in the training process nothing is re-seeded."""

    def __init__(self, data: torch.utils.data.Dataset):
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> Any:
        return self.data[index]

    def __getitems__(self, batch: list[int]) -> list[Any]:
        seed = getattr(batch, "seed", None)
        if seed is not None and torch.utils.data.get_worker_info() is not None:
            torch.default_generator.manual_seed(seed)
            random.seed(seed)
            np.random.seed(seed % 2**32)
        return [self.data[i] for i in batch]


def epoch_loader(data: torch.utils.data.Dataset, *, batch_size: int, drop_last: bool,
                 num_workers: int, device: torch.device, worker_init_fn: Callable[[int], None],
                 shard: bool = False) -> torch.utils.data.DataLoader:
    """A shuffled DataLoader over ``data`` whose batch sampler can skip the first batches of a
    pass (the same draws as before, so results are unchanged); the epoch's seed is set with
    ``loader.batch_sampler.set_epoch_seed``. With ``shard`` under DDP, ``batch_size`` is the
    global batch and each rank loads its slice. On CUDA, batches are pinned and each worker
    keeps :data:`CUDA_PREFETCH` batches ready (fewer, or fewer workers, where ``/dev/shm`` is
    too small)."""
    world = dist.world_size() if shard else 1
    if world > 1:
        _check_split(len(data), batch_size, drop_last, world)
    batches = _SkippingBatches(torch.utils.data.BatchSampler(EpochPermutation(len(data)), batch_size,
                                                             drop_last),
                               dist.rank() if world > 1 else 0, world)
    prefetch = CUDA_PREFETCH if device.type == "cuda" else 2
    num_workers, prefetch = fit_shared_memory(data, -(-batch_size // world), num_workers, prefetch)
    return torch.utils.data.DataLoader(
        SeededBatches(data), batch_sampler=batches, num_workers=num_workers,
        worker_init_fn=worker_init_fn, generator=torch.Generator(), pin_memory=device.type == "cuda",
        persistent_workers=num_workers > 0, prefetch_factor=prefetch if num_workers > 0 else None)


def _check_split(n: int, batch_size: int, drop_last: bool, world: int) -> None:
    from harness.errors import SpecError

    if batch_size % world:
        raise SpecError(f"batch_size {batch_size} is the global batch and does not split over "
                        f"{world} processes; use a multiple of {world} (or another --nproc)")
    last = 0 if drop_last else n % batch_size
    if 0 < last < world:
        raise SpecError(f"the last batch has {last} image(s) ({n} images, batch_size "
                        f"{batch_size}), fewer than the {world} processes; use --nproc {last} "
                        f"or fewer, or another batch_size")


def rank_batch_sizes(n: int, batch_size: int, drop_last: bool, world: int) -> set[int]:
    """The local batch sizes the processes of a ``world``-process run see over an epoch."""
    sizes = {batch_size} if n >= batch_size else set()
    last = n % batch_size
    if last and not drop_last:
        sizes.add(last)
    out = set()
    for size in sizes:
        base, extra = divmod(size, world)
        out |= {base + 1} if extra else set()
        out |= {base} if extra < world else set()
    return out


# --- shared memory -----------------------------------------------------------------------------

def shm_free_bytes() -> int | None:
    """Free bytes of ``/dev/shm`` (where workers put their batches), None where there is none."""
    try:
        stat = os.statvfs("/dev/shm")
    except (OSError, AttributeError):
        return None
    return stat.f_bavail * stat.f_frsize


def _nbytes(item: Any) -> int:
    if isinstance(item, torch.Tensor):
        return item.numel() * item.element_size()
    if isinstance(item, np.ndarray):
        return item.nbytes
    if isinstance(item, dict):
        return sum(_nbytes(v) for v in item.values())
    if isinstance(item, (list, tuple)):
        return sum(_nbytes(v) for v in item)
    return 8


def fit_shared_memory(data: torch.utils.data.Dataset, batch_size: int, workers: int,
                      prefetch: int) -> tuple[int, int]:
    """``(workers, prefetch)`` lowered until the batches the loader can hold in ``/dev/shm``
    at once (``workers x prefetch`` in flight, one being used) fit in half its free space
    (shared by the local DDP ranks); one warning when lowered. One item is loaded to size a
    batch, with every RNG state kept as it was."""
    free = shm_free_bytes() if workers > 0 and len(data) else None
    if free is None:
        return workers, prefetch
    state = rng_state()
    try:
        batch = _nbytes(data[0]) * batch_size
    finally:
        set_rng_state(state)
    budget = free // 2 // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    fits = lambda w, p: batch * (w * p + 1) <= budget  # noqa: E731
    w, p = workers, prefetch
    while p > 1 and not fits(w, p):
        p -= 1
    while w > 0 and not fits(w, p):
        w -= 1
    if (w, p) != (workers, prefetch):
        mib = 2**20
        console.log(f"warning: /dev/shm has {free / mib:.0f} MiB free; {workers} loader workers x "
                    f"{prefetch} batches of {batch / mib:.1f} MiB need "
                    f"{batch * (workers * prefetch + 1) / mib:.0f} MiB: using {w} worker(s)"
                    f"{f' x {p}' if w else ''} instead (slower). Give the container more shared "
                    f"memory (docker run --shm-size=16g, or a larger /dev/shm)")
    return w, p
