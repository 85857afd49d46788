"""``full``: encoder and decoder train."""

from __future__ import annotations

from harness.hookspecs import hookimpl
from harness.protocols.base import TrainingProtocol


class Full(TrainingProtocol):
    name = "full"
    description = "U-Net, encoder and decoder train"


@hookimpl
def harness_register_protocols():
    return [Full]
