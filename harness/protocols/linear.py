"""``linear``: the dense-SSL literature's linear segmentation probe. The encoder is frozen (as
in ``frozen``, ``finetune.frozen_bn`` included); a 1x1 convolution maps its last feature map to
class logits, bilinearly upsampled to the input size. Only the 1x1 convolution trains."""

from __future__ import annotations

import torch
import torch.nn.functional as nnf
from torch import nn

from harness.hookspecs import hookimpl
from harness.protocols.base import TrainingProtocol


class LinearProbe(nn.Module):
    def __init__(self, encoder: nn.Module, num_classes: int):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Conv2d(encoder.out_channels[-1], num_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.head(self.encoder(x)[-1])
        return nnf.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


class Linear(TrainingProtocol):
    name = "linear"
    description = "frozen encoder, 1x1-conv head on its last feature map, upsampled"
    frozen_encoder = True

    def build_model(self, encoder_name: str, num_classes: int) -> nn.Module:
        from harness.engine.model import build_encoder

        return LinearProbe(build_encoder(encoder_name), num_classes)


@hookimpl
def harness_register_protocols():
    return [Linear]
