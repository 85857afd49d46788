"""Loader workers keep their batches in /dev/shm: where it is too small for the prefetch depth
and workers asked for, both are lowered before the first batch with one warning saying how to
raise it, instead of a bus error mid-run (free space faked here)."""

from __future__ import annotations

import torch

from harness.engine import loader as loader_mod
from harness.engine.loader import epoch_loader

ITEM = 4 * 32 * 32 * 3  # bytes of one float32 3x32x32 item


class Images(torch.utils.data.Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, i):
        return torch.rand(3, 32, 32)  # a draw, which sizing the batch must not consume


def _build(monkeypatch, free: int | None, workers: int, device: str = "cpu"):
    said: list[str] = []
    monkeypatch.setattr(loader_mod, "shm_free_bytes", lambda: free)
    monkeypatch.setattr(loader_mod.console, "log", lambda msg, *a, **k: said.append(str(msg)))
    before = torch.get_rng_state()
    loader = epoch_loader(Images(), batch_size=4, drop_last=True, num_workers=workers,
                          device=torch.device(device), worker_init_fn=None)
    assert torch.equal(torch.get_rng_state(), before)
    return loader, said


def test_enough_shared_memory_changes_nothing(monkeypatch):
    loader, said = _build(monkeypatch, 2**30, workers=2)
    assert (loader.num_workers, loader.prefetch_factor) == (2, 2) and not said


def test_small_shared_memory_lowers_prefetch_then_workers_with_one_warning(monkeypatch):
    batch = 4 * ITEM
    # half of the free space holds 4 batches: 2 workers x 2 in flight + 1 in use is 5, 2 x 1 + 1 fits
    loader, said = _build(monkeypatch, 2 * 4 * batch, workers=2)
    assert (loader.num_workers, loader.prefetch_factor) == (2, 1)
    assert len(said) == 1 and "--shm-size" in said[0] and "using 2 worker(s) x 1" in said[0]
    loader, said = _build(monkeypatch, 2 * 2 * batch, workers=3)  # room for 1 x 1 + 1
    assert (loader.num_workers, loader.prefetch_factor) == (1, 1) and len(said) == 1
    loader, said = _build(monkeypatch, batch, workers=2)  # not even one: load in this process
    assert loader.num_workers == 0 and len(said) == 1 and "using 0 worker(s) instead" in said[0]
    assert sum(len(b) for b in loader) == 8


def test_no_workers_or_no_dev_shm_skips_the_check(monkeypatch):
    loader, said = _build(monkeypatch, 0, workers=0)
    assert loader.num_workers == 0 and not said
    loader, said = _build(monkeypatch, None, workers=2)
    assert loader.num_workers == 2 and not said
