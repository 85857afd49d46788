"""The protocol contract: what fine-tuning does with the encoder of a cell.

A protocol is a class with a ``name`` that builds the model to train around the encoder
artifact, says which parameters train, and how the model is put in training mode each epoch.
The ``finetune`` stage trains what it builds and the ``evaluate`` stage rebuilds the same
model to load the trained weights; predictions are the argmax of its logits at input size.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:  # no torch at import: `harness validate` and `list` load every protocol
    from torch import nn


class TrainingProtocol:
    name: ClassVar[str]
    description: ClassVar[str] = ""
    #: Bump when a change alters results (stage keys of existing protocols do not include it).
    version: ClassVar[str] = "1"
    #: Whether the encoder's parameters stay fixed (then ``finetune.frozen_bn`` applies).
    frozen_encoder: ClassVar[bool] = False

    def build_model(self, encoder_name: str, num_classes: int) -> nn.Module:
        """A randomly initialised model whose ``.encoder`` takes the encoder artifact's weights
        and whose forward returns logits ``(B, num_classes, H, W)`` at the input's size."""
        from harness.engine.model import build_unet

        return build_unet(encoder_name, num_classes)

    def prepare(self, model: nn.Module) -> None:
        """After the encoder weights are loaded: e.g. freeze them."""
        if self.frozen_encoder:
            from harness.engine.model import freeze_encoder

            freeze_encoder(model)

    def set_train_mode(self, model: nn.Module, frozen_bn: str) -> None:
        """Called at the start of every epoch."""
        from harness.engine.model import set_train_mode

        set_train_mode(model, self.frozen_encoder, frozen_bn)
