"""Counting what makes the host wait for the device in a piece of code, on any device.

On CUDA, ``torch.cuda.set_sync_debug_mode`` reports synchronising calls; on the CPU nothing
synchronises, so :class:`SyncCounter` (a ``TorchDispatchMode``) counts the ATen ops that would:
``_local_scalar_dense`` (behind ``item``/``float``/``bool``/``tolist``), ops whose output shape
depends on the data (``nonzero``, ``unique``, ``masked_select``, ``bincount``,
``repeat_interleave`` without ``output_size``...) and indexing with a boolean mask. Code that
must read device data on the host (a loss whose block structure depends on its labels) reads it
once through :func:`to_host`, which the counter records as ``host copy`` (on CUDA the copy is
the sync the debug mode reports); what it computes from the copy is host work. Used by
``tests/test_host_syncs.py`` and ``benchmarks/gpu_check.py``.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable

import numpy as np

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten
SYNCING = {aten._local_scalar_dense, aten.nonzero, aten.masked_select, aten.is_nonzero,
           aten.equal, aten._unique, aten._unique2, aten.unique_dim, aten.unique_consecutive,
           aten.unique_dim_consecutive, aten.bincount, aten.histc, aten.repeat_interleave}


def _bool_index(func: Any, args: tuple) -> bool:
    if func.overloadpacket not in (aten.index, aten.index_put, aten.index_put_) or len(args) < 2:
        return False
    indices = args[1] if isinstance(args[1], (list, tuple)) else ()
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices)


class SyncCounter(TorchDispatchMode):
    """Inside: the names of the syncing ops run, in ``seen``."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket in SYNCING or _bool_index(func, args):
            self.seen.append(str(func))
        return func(*args, **(kwargs or {}))

    def __enter__(self):
        _ACTIVE.append(self)
        return super().__enter__()

    def __exit__(self, *exc: Any) -> Any:
        _ACTIVE.remove(self)
        return super().__exit__(*exc)


_ACTIVE: list[SyncCounter] = []


def to_host(t: torch.Tensor) -> np.ndarray:
    """``t`` as a numpy array on the host: one device-to-host copy, which waits for the device;
    an active :class:`SyncCounter` records it as ``host copy``, so a count on the CPU shows the
    syncs CUDA would make."""
    for counter in _ACTIVE:
        counter.seen.append("host copy")
    return t.detach().cpu().numpy()


def count_syncs(step: Callable[[], Any], device: torch.device) -> list[str]:
    """What ``step()`` does that waits for the device: CUDA's own sync warnings on CUDA,
    :class:`SyncCounter`'s ops elsewhere. ``step`` runs once before, to set up caches."""
    step()
    if device.type != "cuda":
        with SyncCounter() as counter:
            step()
        return counter.seen
    torch.cuda.synchronize(device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return [str(w.message).splitlines()[0] for w in caught if "synchroniz" in str(w.message)]
