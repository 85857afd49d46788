"""The data of the semi-supervised stage (:mod:`harness.engine.semisup`): batch t of every
iteration, a function of (seed, t) alone."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from harness.data.torchdata import SegmentationSamples
from harness.data.memmap import MemmapRef

#: Random streams derived from (seed, iteration).
_LABELED, _UNLABELED, _LABELED_AUG, _STEP = 1, 2, 3, 4


def derived_seed(*parts: int) -> int:
    """A 32-bit seed from integers (the spec seed may be any int)."""
    return int(np.random.SeedSequence([p % (2**32) for p in parts]).generate_state(1)[0])



class _Order:
    """Position p of an endless sequence of per-epoch permutations of range(n)."""

    def __init__(self, n: int, seed: int, stream: int):
        self.n, self.seed, self.stream = n, seed, stream
        self._cache: dict[int, np.ndarray] = {}

    def __call__(self, start: int, count: int) -> list[int]:
        out = []
        for p in range(start, start + count):
            epoch, k = divmod(p, self.n)
            if epoch not in self._cache:
                if len(self._cache) > 4:
                    self._cache.clear()
                rng = np.random.default_rng(derived_seed(self.stream, self.seed, epoch))
                self._cache[epoch] = rng.permutation(self.n)
            out.append(int(self._cache[epoch][k]))
        return out


class IterationBatches(torch.utils.data.Dataset):
    """Item t: the labeled batch (augmented) and the unlabeled batch (random crops, float in
    [0, 1], not augmented) of iteration t, a function of (seed, t) alone, whichever process
    loads it and whatever was loaded before."""

    def __init__(self, labeled: SegmentationSamples, unlabeled: np.ndarray, crop: tuple[int, int],
                 batch_size: int, unlabeled_batch_size: int, seed: int):
        self.labeled, self.unlabeled = labeled, unlabeled
        self.crop = crop
        self.batch_size, self.unlabeled_batch_size = batch_size, unlabeled_batch_size
        self.seed = seed
        self._order_l = _Order(len(labeled), seed, _LABELED)
        self._order_u = _Order(len(unlabeled), seed, _UNLABELED)

    def __len__(self) -> int:  # not used by the sampler; any iteration index is valid
        return 2**62

    def __getstate__(self) -> dict[str, Any]:  # spawned workers re-open the memory map
        return {**self.__dict__, "unlabeled": MemmapRef.wrap(self.unlabeled)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        if isinstance(state["unlabeled"], MemmapRef):
            state["unlabeled"] = state["unlabeled"].open()
        self.__dict__.update(state)

    def __getitem__(self, t: int) -> dict[str, torch.Tensor]:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derived_seed(_LABELED_AUG, self.seed, t))
            pairs = [self.labeled[i] for i in self._order_l(t * self.batch_size, self.batch_size)]
        rows = self._order_u(t * self.unlabeled_batch_size, self.unlabeled_batch_size)
        rng = np.random.default_rng(derived_seed(_UNLABELED, self.seed, t))
        ch, cw = self.crop
        crops = []
        for row in rows:
            th, tw = self.unlabeled.shape[1:3]
            y, x = int(rng.integers(0, th - ch + 1)), int(rng.integers(0, tw - cw + 1))
            crops.append(torch.from_numpy(np.array(self.unlabeled[row, y:y + ch, x:x + cw])))
        return {
            "image_l": torch.stack([p[0] for p in pairs]),
            "label_l": torch.stack([p[1] for p in pairs]),
            "image_u": torch.stack(crops).permute(0, 3, 1, 2).float().div_(255.0),
        }
