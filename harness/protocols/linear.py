"""``linear``: the dense-SSL literature's linear segmentation probe. The encoder is frozen (as
in ``frozen``, ``finetune.frozen_bn`` included); a 1x1 convolution maps its last feature map to
class logits, bilinearly upsampled to the input size. Only the 1x1 convolution trains. On a ViT
the last feature map is its last block's patch tokens (after the final norm) as a grid."""

from __future__ import annotations

from typing import TYPE_CHECKING

from harness.hookspecs import hookimpl
from harness.protocols.base import TrainingProtocol

if TYPE_CHECKING:  # no torch at import: `harness validate` and `list` load every protocol
    from torch import nn

    from harness.spec.models import FinetuneSettings


class Linear(TrainingProtocol):
    name = "linear"
    description = "frozen encoder, 1x1-conv head on its last feature map, upsampled"
    frozen_encoder = True

    def build_model(self, encoder_name: str, num_classes: int,
                    settings: FinetuneSettings | None = None) -> nn.Module:
        from harness.engine.model import build_encoder, no_grad_when_frozen
        from harness.protocols.linear_probe import LinearProbe

        encoder = build_encoder(encoder_name, getattr(settings, "encoder_args", None))
        no_grad_when_frozen(encoder)  # a frozen encoder keeps no activations for backward
        return LinearProbe(encoder, num_classes)


@hookimpl
def harness_register_protocols():
    return [Linear]
