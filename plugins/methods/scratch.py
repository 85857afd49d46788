"""``scratch``: a randomly initialised encoder (the thesis's "Random" baseline)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from harness.hookspecs import hookimpl
from harness.methods import HALF_NORMALIZATION, InitMethod

if TYPE_CHECKING:  # no torch at import: `harness validate` and `list` import this module
    from torch import nn


class Scratch(InitMethod):
    name: ClassVar[str] = "scratch"
    encoder_families: ClassVar[tuple[str, ...]] = ("cnn", "vit")  # a ViT: its last block's patch tokens
    description: ClassVar[str] = "random initialisation (torchvision's default init), no pretraining"
    seed_dependent: ClassVar[bool] = True

    def init_encoder(self, encoder: nn.Module, encoder_name: str, seed: int) -> dict[str, Any]:
        return HALF_NORMALIZATION  # the encoder arrives randomly initialised from the seed


@hookimpl
def harness_register_methods():
    return [Scratch]
