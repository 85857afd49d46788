"""``simsiam``: SimSiam (thesis §A.2; github.com/facebookresearch/simsiam
``simsiam/builder.py``): projector of 3 linear layers of 2048 with
BN (ReLU after the first two, a non-affine BN last, as the official code), predictor
2048-512-2048, symmetric negative cosine with stop-gradient; SGD (momentum 0.9) lr 0.075,
wd 1e-4, batch 256, cosine decay except the predictor, which keeps its initial lr
(``--fix_pred_lr``); weak colour jitter 0.4/0.4/0.4/0.1."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field

from harness.data.view_config import ViewAugmentConfig
from harness.hookspecs import hookimpl
from harness.methods import PretrainMethod, PretrainSettings, decay_groups

if TYPE_CHECKING:  # no torch at import: `harness validate` and `list` import this module
    import torch
    from torch import nn


class SimSiamConfig(PretrainSettings):
    # Official SimSiam: SGD at lr 0.075 (0.05 x batch / 256), not the shared LARS at 0.2.
    overrides: ClassVar[frozenset[str]] = frozenset({"lr", "optimizer"})
    lr: float = Field(0.075, gt=0)
    optimizer: Literal["lars", "sgd"] = "sgd"
    proj_dim: int = Field(2048, ge=1, description="projector width and output dimension")
    pred_dim: int = Field(512, ge=1, description="predictor bottleneck")
    fix_pred_lr: bool = Field(True, description="predictor keeps its initial learning rate")
    augment: ViewAugmentConfig = Field(
        default_factory=lambda: ViewAugmentConfig(jitter=(0.4, 0.4, 0.4, 0.1)),
        description="two-view augmentations (Table A.1 with weak colour jitter)")


class SimSiam(PretrainMethod):
    name: ClassVar[str] = "simsiam"
    encoder_families: ClassVar[tuple[str, ...]] = ("cnn", "vit")  # a ViT: its last block's patch tokens
    description: ClassVar[str] = "SimSiam (stop-gradient, no negatives)"
    Config: ClassVar[type] = SimSiamConfig

    def build_model(self, encoder: nn.Module, encoder_channels: list[int]) -> nn.Module:
        from .model import SimSiamModel

        c = self.config
        return SimSiamModel(encoder, encoder_channels[-1], c.proj_dim, c.pred_dim)

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        from torch import nn

        c = self.config
        rest = nn.ModuleDict({"encoder": model.encoder, "projector": model.projector})
        predictor = [{**g, "fixed_lr": c.fix_pred_lr}
                     for g in decay_groups(model.predictor, c.weight_decay, c.optimizer == "lars")]
        return decay_groups(rest, c.weight_decay, c.optimizer == "lars") + predictor

    def training_step(self, model: nn.Module, batch: dict[str, torch.Tensor],
                      num_classes: int | None) -> tuple[torch.Tensor, dict[str, float]]:
        import torch.nn.functional as F

        from .loss import simsiam_loss

        p1, z1 = model(batch["view1"])
        p2, z2 = model(batch["view2"])
        loss = simsiam_loss(p1.float(), p2.float(), z1.float(), z2.float())
        # collapse monitor: per-dimension std of the L2-normalised outputs (collapse -> 0,
        # healthy -> about 1/sqrt(dim))
        z_std = F.normalize(z1.detach().float(), dim=1).std(dim=0).mean()
        return loss, {"z_std": z_std}  # a tensor: read with the losses, no host sync per step


@hookimpl
def harness_register_methods() -> list[type[Any]]:
    return [SimSiam]
