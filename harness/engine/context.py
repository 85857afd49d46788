"""What a stage's run function receives."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch


@dataclass
class StageContext:
    out: Path  # temporary folder: write the artifact here; it is renamed into the store on success
    work: Path  # persistent folder for checkpoints; survives a crash, removed after commit
    inputs: dict[str, Path]  # dependency name -> committed artifact folder
    device: torch.device
    label: str = ""
    log_metrics: Callable[[int, dict[str, float]], None] = field(default=lambda step, m: None)
    quiet: bool | None = None

    def __post_init__(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
