"""``classmix``: mean-teacher semi-supervised training with ClassMix (thesis §A.2;
github.com/lorenmt/reco ``train_semisup.py``).

The mask of unlabeled image i covers the pixels of ``len // 2`` classes picked at random among
the classes present in the teacher's prediction of image i, background included (ReCo's
``generate_class_mask``); those pixels keep image i, the rest come from image (i+1) mod B, and
the pseudo-labels and confidences are mixed alike. With a single class present (e.g. a
background-only tile) no class is picked and the mixed image is entirely image i+1, as in
ReCo's code. The loop is :mod:`harness.engine.semisup`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from harness.hookspecs import hookimpl
from harness.methods import SemiSupervisedMethod, SemiSupervisedSettings

if TYPE_CHECKING:  # no torch at import: `harness validate` and `list` import this module
    import torch


class ClassMix(SemiSupervisedMethod):
    name: ClassVar[str] = "classmix"
    description: ClassVar[str] = "mean teacher with ClassMix of the unlabeled images (semi-supervised)"
    Config: ClassVar[type] = SemiSupervisedSettings

    def mix(self, images: torch.Tensor, labels: torch.Tensor, confidence: torch.Tensor
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        import torch

        from .mixing import classmix_mask, mix

        masks = torch.stack([classmix_mask(lab) for lab in labels])
        return mix(images, labels, confidence, masks)


@hookimpl
def harness_register_methods() -> list[type[Any]]:
    return [ClassMix]
