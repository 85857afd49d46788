"""``pricon``: pseudo-label guided joint point, region and image-level contrastive learning
(thesis §3, §4.1.2; ``pricon:src/``).

ResNet-18 -> dense projection head of 1x1 convolutions (512 -> 2048 -> ReLU -> 128) on the
un-pooled encoder map (7x7 for a 224 crop, optionally bilinearly upsampled to 14/28/56 as in
Table 4.6c). With the labeler's pseudo-label masks pooled to the same grid:

* point loss: N = 32 point pairs per image, same class in both views, supervised contrastive
  over all points of the batch (both views);
* region loss: soft mask-pooled class regions of every image and view;
* image loss: NT-Xent of the globally pooled projected maps.

``alpha`` weights (0.7, 0.75, 0.15), tau = 0.1, LARS lr 0.2, wd 1e-4, batch 256, 100 epochs.
``loss_form: code`` (default) is the reference code's semantics, ``pairs`` the per-pair form of
the thesis equations. A term with alpha 0 is skipped (Table 4.6a). The labeler is a U-Net
trained with the shared fine-tuning engine (default: the spec's dataset, folds 1+2); the chain
labeler -> pseudo-labels -> pretraining (cycles) is composed in :mod:`.chain`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, ClassVar, Literal

from pydantic import Field

from harness.data.view_config import ViewAugmentConfig
from harness.hookspecs import hookimpl
from harness.inputs import InputFile
from harness.methods import PretrainMethod, PretrainSettings
from harness.plan import EncoderChain

from .chain import LabelerEvalStage, LabelerSettings, LabelerStage, labeler_problems, pricon_chains

if TYPE_CHECKING:  # no torch at import: `harness validate` and `list` import this module
    import torch
    from torch import nn


class PRIConConfig(PretrainSettings):
    temperature: float = Field(0.1, gt=0, description="tau of all three losses")
    n_points: int = Field(32, ge=1, description="point pairs per image (Table 4.6b)")
    alpha_point: float = Field(0.7, ge=0)
    alpha_region: float = Field(0.75, ge=0)
    alpha_image: float = Field(0.15, ge=0)
    resolution: int | None = Field(
        None, ge=1, description="upsample the dense map to RxR before the loss (Table 4.6c: "
        "14/28/56); None keeps the encoder's own grid (7x7 for 224 crops)")
    loss_form: Literal["code", "pairs"] = Field(
        "code", description="'code': all same-class points in the numerator, denominator over "
        "all others (the reference code, which produced the thesis's numbers); 'pairs': one "
        "term per positive pair (the thesis equations)")
    hidden_dim: int = Field(2048, ge=1)
    proj_dim: int = Field(128, ge=1)
    init: Literal["random", "imagenet"] = Field(
        "random", description="'imagenet' starts from torchvision ImageNet weights (Table 4.8)")
    imagenet_weights: InputFile | None = Field(
        None, description="weights file for init: imagenet (keyed by its content)")
    labeler: LabelerSettings = Field(default_factory=LabelerSettings)
    cycles: int = Field(1, ge=1, description="cyclic training (Table 4.5): K rounds of pretrain "
                        "`epochs` -> fine-tune on the labeler data -> relabel, continuing the same "
                        "encoder; each cycle is reported as its own row (method@cycleK)")
    augment: ViewAugmentConfig = Field(default_factory=ViewAugmentConfig)


class PRICon(PretrainMethod):
    name: ClassVar[str] = "pricon"
    encoder_families: ClassVar[tuple[str, ...]] = ("cnn", "vit")  # a ViT: its last block's patch tokens
    description: ClassVar[str] = "PRICon: pseudo-label guided point/region/image contrastive learning"
    needs_masks: ClassVar[bool] = True
    Config: ClassVar[type] = PRIConConfig
    # global BN as SimCLR: its image-level NT-Xent term has the same per-device BN shortcut,
    # and the thesis's region/point terms were trained with one GPU's batch statistics
    sync_batchnorm: ClassVar[bool] = True

    def preflight(self, spec: Any) -> None:
        if self.config.init == "imagenet":
            self._imagenet().weights_path(spec.finetune.encoder)

    def needed_datasets(self, spec: Any) -> list[tuple[str, str]]:
        name = self.config.labeler.dataset
        return [] if name is None else [(name, f"labeler dataset of {self.name}")]

    @classmethod
    def spec_problems(cls, row: str, config: Any, spec: Any, registry: Any,
                      locate: Callable[[tuple[Any, ...]], str]) -> list[str]:
        return labeler_problems(config, row, spec, registry, locate)

    def key_settings(self) -> dict[str, Any]:
        """Not ``cycles`` (cycle k computes the same whatever their number; k is keyed) nor the
        labeler protocol (which labeler a chain uses is in its masks' key, so a thesis chain
        keeps the key it had before the setting existed)."""
        settings = {k: v for k, v in super().key_settings().items() if k != "cycles"}
        settings["labeler"].pop("protocol", None)
        return settings

    def encoder_chains(self, plan: Any, *, version: str, seed: int, splits: list[Any],
                       settings: Any) -> list[EncoderChain]:
        """labeler -> pseudo-labels -> pretraining, ``cycles`` times (:mod:`.chain`)."""
        return pricon_chains(self, plan, version=version, seed=seed, splits=splits, settings=settings)

    def _imagenet(self):
        from harness_builtin.methods.supervised import Supervised

        return Supervised(Supervised.Config(weights=self.config.imagenet_weights))

    def init_encoder(self, encoder: nn.Module, encoder_name: str, seed: int) -> None:
        if self.config.init == "imagenet":
            self._imagenet().init_encoder(encoder, encoder_name, seed)

    def build_model(self, encoder: nn.Module, encoder_channels: list[int]) -> nn.Module:
        from .model import PRIConModel

        c = self.config
        return PRIConModel(encoder, encoder_channels[-1], c.hidden_dim, c.proj_dim)

    def training_step(self, model: nn.Module, batch: dict[str, torch.Tensor],
                      num_classes: int | None) -> tuple[torch.Tensor, dict[str, float]]:
        from ..simclr.loss import nt_xent
        from ..supcon import supcon_loss
        from .ops import (image_pool, one_hot_masks, pool_masks, region_pool, sample_points,
                                 upsample_dense, valid_classes, valid_pairs)

        c = self.config
        z1, z2 = model(batch["view1"]).float(), model(batch["view2"]).float()
        if c.resolution is not None:
            z1, z2 = upsample_dense(z1, c.resolution), upsample_dense(z2, c.resolution)
        grid = z1.shape[-1]
        pooled1 = pool_masks(one_hot_masks(batch["mask1"], num_classes), grid)
        pooled2 = pool_masks(one_hot_masks(batch["mask2"], num_classes), grid)
        valid = valid_classes(pooled1, pooled2)
        pairs = valid_pairs(valid)  # read on the host once: it decides how many points and regions

        total = z1.new_zeros(())
        # logs as detached tensors: the loop reads them with the losses (no host sync per step)
        logs: dict[str, torch.Tensor] = {"valid_classes": valid.sum(1).float().mean()}
        if c.alpha_point > 0:
            feats, labels = sample_points(z1, z2, pooled1, pooled2, c.n_points, valid, pairs=pairs)
            point = supcon_loss(feats, labels, c.temperature, form=c.loss_form)
            total = total + c.alpha_point * point
            logs["point"] = point.detach()
        if c.alpha_region > 0:
            feats, labels = region_pool(z1, z2, pooled1, pooled2, valid, pairs=pairs)
            region = supcon_loss(feats, labels, c.temperature, form=c.loss_form)
            total = total + c.alpha_region * region
            logs["region"] = region.detach()
        if c.alpha_image > 0:
            image = nt_xent(image_pool(z1), image_pool(z2), c.temperature)
            total = total + c.alpha_image * image
            logs["image"] = image.detach()
        return total, logs


@hookimpl
def harness_register_methods() -> list[type[Any]]:
    return [PRICon]


@hookimpl
def harness_register_stage_kinds() -> list[type[Any]]:
    return [LabelerStage, LabelerEvalStage]
