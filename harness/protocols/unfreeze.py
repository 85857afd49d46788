"""``unfreeze``: the encoder is frozen for the first ``finetune.unfreeze_epochs`` epochs (only
the decoder trains, the encoder runs without keeping activations), then every parameter trains:
CellViT's schedule (Hörst et al. 2024, ``unfreeze_epoch: 25`` in TIO-IKIM/CellViT's PanNuke
configs), and HoVer-Net's two phases. Works for CNN and ViT encoders. The optimiser holds every
parameter from the start (a frozen one gets no gradient, so Adam leaves it and its moments
alone); the learning-rate schedule runs over all epochs."""

from __future__ import annotations

from typing import TYPE_CHECKING

from harness.hookspecs import hookimpl
from harness.protocols.base import TrainingProtocol

if TYPE_CHECKING:  # no torch at import: `harness validate` and `list` load every protocol
    from torch import nn


class Unfreeze(TrainingProtocol):
    name = "unfreeze"
    description = "encoder frozen for finetune.unfreeze_epochs epochs, then everything trains"
    reads = ("unfreeze_epochs",)

    unfreeze_epochs = 25

    @classmethod
    def settings_problem(cls, settings) -> str | None:
        if settings.unfreeze_epochs >= settings.epochs:
            return (f"finetune.unfreeze_epochs {settings.unfreeze_epochs} >= finetune.epochs "
                    f"{settings.epochs}: the encoder would never train (that is `frozen`); "
                    f"lower unfreeze_epochs")
        return None

    def set_train_mode(self, model: nn.Module, frozen_bn: str, epoch: int = 0) -> None:
        from harness.engine.model import freeze_encoder, set_train_mode

        frozen = epoch < self.unfreeze_epochs
        freeze_encoder(model, frozen)
        set_train_mode(model, frozen, frozen_bn)

    def prepare(self, model: nn.Module, settings=None) -> None:
        self.unfreeze_epochs = int(getattr(settings, "unfreeze_epochs", self.unfreeze_epochs))


@hookimpl
def harness_register_protocols():
    return [Unfreeze]
