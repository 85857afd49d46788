"""The network of the ``linear`` protocol (:mod:`harness.protocols.linear`), apart from it so
that the protocol's module imports without torch."""

from __future__ import annotations

import torch
import torch.nn.functional as nnf
from torch import nn


class LinearProbe(nn.Module):
    """A 1x1 convolution on the encoder's last feature map (a ViT's: its last block's patch
    tokens as a grid), upsampled bilinearly to the input (a ViT's padded input, then cropped)."""

    architecture = "linear probe"  # what the report names (harness.engine.model.describe_network)

    def __init__(self, encoder: nn.Module, num_classes: int):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Conv2d(encoder.out_channels[-1], num_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        size = self.encoder.pad(x).shape[-2:] if hasattr(self.encoder, "pad") else (h, w)
        logits = self.head(self.encoder(x)[-1])
        return nnf.interpolate(logits, size=size, mode="bilinear", align_corners=False)[..., :h, :w]
