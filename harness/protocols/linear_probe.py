"""The network of the ``linear`` protocol (:mod:`harness.protocols.linear`), apart from it so
that the protocol's module imports without torch."""

from __future__ import annotations

import torch
import torch.nn.functional as nnf
from torch import nn


class LinearProbe(nn.Module):
    def __init__(self, encoder: nn.Module, num_classes: int):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Conv2d(encoder.out_channels[-1], num_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.head(self.encoder(x)[-1])
        return nnf.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
