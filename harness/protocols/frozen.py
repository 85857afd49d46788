"""``frozen``: the encoder's parameters stay fixed (its batch-norm statistics adapt, as in the
thesis's code, or stay fixed with ``finetune.frozen_bn: fixed``); only the decoder trains."""

from __future__ import annotations

from harness.hookspecs import hookimpl
from harness.protocols.base import TrainingProtocol


class Frozen(TrainingProtocol):
    name = "frozen"
    description = "U-Net, encoder parameters fixed; only the decoder trains"
    frozen_encoder = True


@hookimpl
def harness_register_protocols():
    return [Frozen]
