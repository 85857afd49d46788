"""``reco``: ClassMix mean teacher plus the ReCo regional contrastive loss (thesis §A.2,
Liu et al., ReCo, ``module_list.py compute_reco_loss``).

Representation head (the thesis does not say how it was attached to the U-Net): ReCo's
DeepLabv3+ head, Conv3x3(C -> 256, no bias) + BN + ReLU + Conv1x1(256 -> ``rep_dim``), on the
smp U-Net's decoder output (C = 16 channels at full resolution with smp's default decoder), in
parallel with the segmentation head. The head only serves the loss: the saved and evaluated
model is the teacher's plain U-Net.

Loss inputs per iteration: the representations and student softmax of the labeled batch and of
the mixed, augmented unlabeled batch; labeled pixels are valid with their ground-truth class,
unlabeled pixels are valid where the teacher's (mixed) confidence is at least
``weak_threshold`` 0.7, with their pseudo-label. Hard queries: student probability of the
pixel's class below ``strong_threshold`` 0.97; 256 queries and 512 negatives per class,
temperature 0.5, negatives' classes drawn by prototype similarity; 0 with fewer than two
classes. Weight 1 beside the supervised and unsupervised losses; lr 1e-4.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import Field

from harness.hookspecs import hookimpl
from harness.methods import SemiSupervisedSettings

from ..classmix import ClassMix

if TYPE_CHECKING:  # no torch at import: `harness validate` and `list` import this module
    import torch
    from torch import nn


class ReCoConfig(SemiSupervisedSettings):
    overrides: ClassVar[frozenset[str]] = frozenset({"lr"})  # ReCo's own 1e-4, not 5e-4
    lr: float = Field(1e-4, gt=0)
    weak_threshold: float = Field(0.7, gt=0, le=1, description="teacher confidence that makes an "
                                  "unlabeled pixel valid for the ReCo loss")
    temperature: float = Field(0.5, gt=0)
    num_queries: int = Field(256, ge=1, description="hard queries per class")
    num_negatives: int = Field(512, ge=1, description="negative keys per query")
    rep_dim: int = Field(256, ge=1, description="representation head output dimension")


class ReCo(ClassMix):
    name: ClassVar[str] = "reco"
    description: ClassVar[str] = ("ClassMix mean teacher + ReCo regional contrastive loss "
                                  "(semi-supervised)")
    Config: ClassVar[type] = ReCoConfig

    def build_model(self, unet: nn.Module) -> nn.Module:
        from .model import UnetWithRepresentation

        return UnetWithRepresentation(unet, self.config.rep_dim)

    def extra_loss(self, labeled: dict[str, torch.Tensor], unlabeled: dict[str, torch.Tensor],
                   targets: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        import torch

        from .loss import reco_loss

        c = self.config
        rep = torch.cat([labeled["rep"], unlabeled["rep"]])
        logits = torch.cat([labeled["logits"], unlabeled["logits"]]).detach().float()
        labels = torch.cat([targets["labels"], targets["pseudo_labels"]])
        valid = torch.cat([targets["labels"] >= 0, targets["confidence"] >= c.weak_threshold])
        loss = reco_loss(rep, labels, valid, torch.softmax(logits, dim=1),
                         strong_threshold=c.strong_threshold, temperature=c.temperature,
                         num_queries=c.num_queries, num_negatives=c.num_negatives)
        return loss, {"unlabeled_valid_fraction": float(valid[len(targets["labels"]):].float().mean())}


@hookimpl
def harness_register_methods() -> list[type[Any]]:
    return [ReCo]
