"""``example_halves``: a semi-supervised method (mean teacher) whose mixing pastes a random
vertical strip of each unlabeled image onto its neighbour in the batch, a one-line cousin of
CutMix. The harness's loop (harness/engine/semisup.py) owns the teacher, its EMA, the
confidence-weighted unsupervised loss and the optimizer; the method supplies only ``mix``."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from pydantic import Field

from harness.hookspecs import hookimpl
from harness.methods import MethodConfig, SemiSupervisedMethod, SemiSupervisedSettings

if TYPE_CHECKING:  # torch only where it runs: `harness list`/`validate` import this module
    import torch


class HalvesConfig(SemiSupervisedSettings):
    min_share: float = Field(0.25, gt=0, lt=1, description="smallest share of the width kept "
                             "from each image (the rest comes from its neighbour)")


class ExampleHalves(SemiSupervisedMethod):
    name: ClassVar[str] = "example_halves"
    description: ClassVar[str] = "mean teacher, strips pasted between unlabeled images (example plugin)"
    version: ClassVar[str] = "1"
    Config: ClassVar[type[MethodConfig]] = HalvesConfig

    config: HalvesConfig

    def mix(self, images: torch.Tensor, labels: torch.Tensor, confidence: torch.Tensor):
        import torch

        b, _, h, w = images.shape
        partner = torch.roll(torch.arange(b, device=images.device), 1)
        low = max(1, int(w * self.config.min_share))
        # The global torch RNG: the engine seeds it per iteration, so a resumed run draws the same.
        cut = int(torch.randint(low, max(low + 1, w - low + 1), ()))
        keep = torch.zeros(h, w, dtype=torch.bool, device=images.device)
        keep[:, :cut] = True
        return (torch.where(keep, images, images[partner]), torch.where(keep, labels, labels[partner]),
                torch.where(keep, confidence, confidence[partner]))


@hookimpl
def harness_register_methods():
    return [ExampleHalves]
