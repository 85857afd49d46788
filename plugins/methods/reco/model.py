"""ReCo's network: the U-Net with a representation head beside its classifier."""

from __future__ import annotations

import torch
from torch import nn


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
