"""Memory-mapped samples in datasets that loader workers receive: a sample as a tensor without a
copy, and memory maps pickled as references to their files (re-opened read-only)."""

from __future__ import annotations

import mmap
import warnings
from typing import Any

import numpy as np
import torch


def tensor_view(arr: Any) -> torch.Tensor:
    """A tensor sharing memory with one sample of a (possibly read-only) array: no copy, so a
    memory-mapped sample is only paged in where a crop reads it. Nothing writes through it (every
    transform is out of place), hence the non-writable warning is silenced."""
    a = np.asarray(arr)
    if a.flags.writeable:
        return torch.from_numpy(a)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(a)


class MemmapRef:
    """Pickled stand-in for a memory map of a whole file: re-opened read-only on unpickling
    (numpy would otherwise pickle the full contents)."""

    def __init__(self, arr: np.memmap):
        self.filename, self.offset = str(arr.filename), int(arr.offset)
        self.dtype, self.shape = arr.dtype, tuple(arr.shape)

    @staticmethod
    def wrap(arr: Any) -> Any:
        if (isinstance(arr, np.memmap) and arr.filename is not None
                and isinstance(arr.base, mmap.mmap) and arr.flags.c_contiguous):
            return MemmapRef(arr)
        return arr  # slices of a map, plain arrays, other array types: pickled as they are

    def open(self) -> np.memmap:
        return np.memmap(self.filename, dtype=self.dtype, mode="r", offset=self.offset,
                         shape=self.shape)


class MemmapPickling:
    """Pickles a dataset's ``images`` and ``masks`` memory maps as references to their files
    (spawned loader workers re-open them read-only instead of receiving a copy)."""

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["images"] = MemmapRef.wrap(self.images)
        state["masks"] = MemmapRef.wrap(self.masks)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        for key in ("images", "masks"):
            if isinstance(state[key], MemmapRef):
                state[key] = state[key].open()
        self.__dict__.update(state)
