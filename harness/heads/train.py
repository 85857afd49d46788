"""What fine-tuning does per head: the samples it draws and the loss of a batch."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as nnf

from harness.data.torchdata import SegmentationSamples

__all__ = ["train_samples", "batch_loss"]


def train_samples(head: str, arrays: Any, ids: Sequence[str], transform: Any
                  ) -> torch.utils.data.Dataset:
    """``(image, class map)`` samples; ``hover`` adds the HV targets of the augmented instance
    map (:class:`harness.heads.hover_targets.HoverSamples`)."""
    if head == "hover":
        from harness.heads.hover_targets import HoverSamples

        return HoverSamples(arrays, ids, transform)
    return SegmentationSamples(arrays, ids, transform)


def batch_loss(head: str, settings: Any) -> Callable[[torch.Tensor, tuple], torch.Tensor]:
    """``loss(logits, targets)`` for a batch's targets (everything after the images):
    unweighted pixel cross-entropy (``semantic``), HoVer-Net's loss (``hover``)."""
    if head == "hover":
        from harness.heads.hover_loss import hover_loss

        weights = settings.hover_loss.model_dump() if hasattr(settings, "hover_loss") else None

        def hover(logits: torch.Tensor, targets: tuple) -> torch.Tensor:
            classes, hv = targets
            return hover_loss(logits, classes, hv, weights)[0]

        return hover

    def semantic(logits: torch.Tensor, targets: tuple) -> torch.Tensor:
        return nnf.cross_entropy(logits.float(), targets[0])

    return semantic
