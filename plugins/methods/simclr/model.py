"""SimCLR's network: the encoder, global average pooling and an MLP projection head."""

from __future__ import annotations

import torch
from torch import nn


class SimCLRModel(nn.Module):
    def __init__(self, encoder: nn.Module, in_dim: int, hidden: int, out: int):
        super().__init__()
        self.encoder = encoder
        self.projector = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(inplace=True),
                                       nn.Linear(hidden, out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.encoder(x)[-1].mean(dim=(2, 3)))
