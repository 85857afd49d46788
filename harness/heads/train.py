"""What fine-tuning does per head: the samples it draws and the loss of a batch."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as nnf
from torchvision import tv_tensors

from harness.data.torchdata import SegmentationSamples
from harness.heads.hover_targets import HV_MIN_AREA, hv_maps

if TYPE_CHECKING:
    from harness.spec.models import FinetuneSettings

__all__ = ["HoverSamples", "train_samples", "batch_loss"]


class HoverSamples(SegmentationSamples):
    """Fine-tuning samples ``(image, class map, HV targets)``: the image, class map and instance
    map pass through the transform together (geometric ops move all three), then the HV targets
    are made from the augmented instance map (:func:`harness.heads.hover_targets.hv_maps`)."""

    def __init__(self, arrays: Any, ids: Sequence[str], transform: Any,
                 min_area: int = HV_MIN_AREA):
        super().__init__(arrays, ids, transform)
        self.min_area = min_area

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        row = int(self.rows[i])
        image = tv_tensors.Image(torch.from_numpy(np.array(self.arrays.images[row])).permute(2, 0, 1))
        mask, inst = (tv_tensors.Mask(torch.from_numpy(np.asarray(a[row], dtype=np.int64)))
                      for a in (self.arrays.classes, self.arrays.instances))
        image, mask, inst = self.transform(image, mask, inst)
        hv = torch.from_numpy(hv_maps(inst.as_subclass(torch.Tensor).numpy(), self.min_area))
        return image.as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor), hv


def train_samples(head: str, arrays: Any, ids: Sequence[str], transform: Any
                  ) -> torch.utils.data.Dataset:
    """``(image, class map)`` samples; ``hover`` adds the HV targets of the augmented instance
    map (:class:`HoverSamples`)."""
    if head == "hover":
        return HoverSamples(arrays, ids, transform)
    return SegmentationSamples(arrays, ids, transform)


def batch_loss(head: str, settings: FinetuneSettings) -> Callable[[torch.Tensor, tuple], torch.Tensor]:
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
