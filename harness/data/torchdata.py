"""Torch datasets over the arrays a dataset plugin loads, and input normalisation."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from harness.data.base import LabeledArrays


class SegmentationSamples(torch.utils.data.Dataset):
    """Image/class-map pairs of the given sample ids (aligned by id, never by order)."""

    def __init__(self, arrays: LabeledArrays, ids: Sequence[str], transform: v2.Transform):
        index = arrays.index_of()
        missing = [sid for sid in ids if sid not in index]
        if missing:
            raise KeyError(f"unknown sample ids: {missing[:3]}")
        self.arrays = arrays
        self.rows = np.array([index[sid] for sid in ids], dtype=np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        row = int(self.rows[i])
        image = tv_tensors.Image(torch.from_numpy(np.array(self.arrays.images[row]))
                                 .permute(2, 0, 1))
        mask = tv_tensors.Mask(torch.from_numpy(np.asarray(self.arrays.classes[row], dtype=np.int64)))
        image, mask = self.transform(image, mask)
        return image.as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor)


class Normalizer:
    """Maps float images in [0, 1] to network inputs.

    ``encoder``: ``(x - mean) / std`` with the normalisation recorded with the encoder weights.
    ``thesis_quirk``: the thesis's fine-tuning code normalised with mean = std = 0.5 *and then*
    divided by 255 again, so its inputs lay in [-1/255, 1/255] (``pricon:segmentation/`` data
    pipeline, github.com/bwconrad/pricon).
    """

    def __init__(self, normalization: dict[str, Any], mode: str = "encoder"):
        self.mode = mode
        if mode == "thesis_quirk":
            mean, std, self.extra = [0.5] * 3, [0.5] * 3, 1.0 / 255.0
        else:
            mean, std, self.extra = normalization["mean"], normalization["std"], 1.0
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        self._on: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def constants(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std on ``device``, copied there once (a host-to-device copy per call
        would make every training step wait for it)."""
        if device not in self._on:
            self._on[device] = self.mean.to(device), self.std.to(device)
        return self._on[device]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        mean, std = self.constants(x.device)
        out = (x - mean) / std
        return out * self.extra if self.extra != 1.0 else out

    def describe(self) -> dict[str, Any]:
        return {"mode": self.mode, "mean": self.mean.flatten().tolist(),
                "std": self.std.flatten().tolist(), "scale": self.extra}
