"""What a stage's run function receives."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch


DEFAULT_CHECKPOINT_EVERY_S = 300.0


@dataclass
class StageContext:
    out: Path  # temporary folder: write the artifact here; it is renamed into the store on success
    work: Path  # persistent folder for checkpoints; survives a crash, removed after commit
    inputs: dict[str, Path]  # dependency name -> committed artifact folder
    device: torch.device
    label: str = ""
    log_metrics: Callable[[int, dict[str, float]], None] = field(default=lambda step, m: None)
    quiet: bool | None = None
    #: Seconds of training between checkpoints (also written at the end and on SIGTERM/SIGUSR1/
    #: SIGINT); a runtime setting, in no stage key. ``HARNESS_CHECKPOINT_EVERY_S`` overrides it.
    checkpoint_every_s: float = field(default_factory=lambda: float(os.environ.get(
        "HARNESS_CHECKPOINT_EVERY_S", DEFAULT_CHECKPOINT_EVERY_S)))

    def __post_init__(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
