"""The networks that PRICon and ReCo train around the encoder, one class per method (SimCLR's
and SimSiam's live in their packages). They live apart from the method files so that those
import without torch: ``harness validate`` and ``harness list`` import every method's settings;
a method imports its network here when it builds it."""

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


class UnetWithRepresentation(nn.Module):
    """An smp U-Net (``.unet``) plus ReCo's representation head on its decoder output."""

    def __init__(self, unet: nn.Module, rep_dim: int, hidden: int = 256):
        super().__init__()
        self.unet = unet
        channels = unet.segmentation_head[0].in_channels
        self.representation = nn.Sequential(
            nn.Conv2d(channels, hidden, 3, padding=1, bias=False), nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True), nn.Conv2d(hidden, rep_dim, 1))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        decoded = self.unet.decoder(self.unet.encoder(x))
        return {"logits": self.unet.segmentation_head(decoded), "rep": self.representation(decoded)}
