"""``scratch``: a randomly initialised encoder (the thesis's "Random" baseline)."""

from __future__ import annotations

from typing import Any, ClassVar

from torch import nn

from harness.hookspecs import hookimpl
from harness.methods import HALF_NORMALIZATION, InitMethod


class Scratch(InitMethod):
    name: ClassVar[str] = "scratch"
    description: ClassVar[str] = "random initialisation (torchvision's default init), no pretraining"
    seed_dependent: ClassVar[bool] = True

    def init_encoder(self, encoder: nn.Module, encoder_name: str, seed: int) -> dict[str, Any]:
        return HALF_NORMALIZATION  # the encoder arrives randomly initialised from the seed


@hookimpl
def harness_register_methods():
    return [Scratch]
