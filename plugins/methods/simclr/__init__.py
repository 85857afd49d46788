"""``simclr``: SimCLR (thesis §A.2): ResNet-18 -> global average pool -> MLP
512-2048-128 (no BN), NT-Xent with tau = 0.5, LARS lr 0.2, wd 1e-4, batch 256, 100 epochs,
Table A.1 augmentations."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import Field

from harness.data.view_config import ViewAugmentConfig
from harness.hookspecs import hookimpl
from harness.methods import PretrainMethod, PretrainSettings

if TYPE_CHECKING:  # no torch at import: `harness validate` and `list` import this module
    import torch
    from torch import nn


class SimCLRConfig(PretrainSettings):
    temperature: float = Field(0.5, gt=0, description="NT-Xent temperature tau")
    hidden_dim: int = Field(2048, ge=1, description="projection MLP hidden width")
    proj_dim: int = Field(128, ge=1, description="projection output dimension")
    augment: ViewAugmentConfig = Field(default_factory=ViewAugmentConfig,
                                       description="two-view augmentations (Table A.1)")


class SimCLR(PretrainMethod):
    name: ClassVar[str] = "simclr"
    encoder_families: ClassVar[tuple[str, ...]] = ("cnn", "vit")  # a ViT: its last block's patch tokens
    description: ClassVar[str] = "SimCLR contrastive pretraining (NT-Xent, LARS)"
    Config: ClassVar[type] = SimCLRConfig
    # SimCLR (Chen et al. 2020, §2.3 "global BN"): per-device BN statistics let the contrastive
    # task be solved through them ("leak" which images share a device), so BN is global
    sync_batchnorm: ClassVar[bool] = True

    def build_model(self, encoder: nn.Module, encoder_channels: list[int]) -> nn.Module:
        from .model import SimCLRModel

        c = self.config
        return SimCLRModel(encoder, encoder_channels[-1], c.hidden_dim, c.proj_dim)

    def training_step(self, model: nn.Module, batch: dict[str, torch.Tensor],
                      num_classes: int | None) -> tuple[torch.Tensor, dict[str, float]]:
        from .loss import nt_xent

        z1, z2 = model(batch["view1"]), model(batch["view2"])
        return nt_xent(z1.float(), z2.float(), self.config.temperature), {}


@hookimpl
def harness_register_methods() -> list[type[Any]]:
    return [SimCLR]
