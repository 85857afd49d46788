"""PRICon's network: the encoder with its point, region and image projection heads."""

from __future__ import annotations

import torch
from torch import nn


class PRIConModel(nn.Module):
    def __init__(self, encoder: nn.Module, in_dim: int, hidden: int, out: int):
        super().__init__()
        self.encoder = encoder
        self.projector = nn.Sequential(nn.Conv2d(in_dim, hidden, 1), nn.ReLU(inplace=True),
                                       nn.Conv2d(hidden, out, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.encoder(x)[-1])
