"""``example_byol``: a BYOL-like pretraining method with a momentum (EMA) target network.

The online network (encoder -> projector -> predictor) predicts the target network's projection
of the other view (Grill et al., 2020, "Bootstrap your own latent"); the target (a copy of the
encoder and projector) gets no gradient and follows the online weights by an exponential moving
average in ``after_step``, with BYOL's schedule tau_k = 1 - (1 - tau_0) (cos(pi k / K) + 1) / 2.
The target lives inside the model (``model.target``), so checkpoints carry it.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, ClassVar

from pydantic import Field

from harness.data.view_config import ViewAugmentConfig  # light: harness.data.views imports torch
from harness.hookspecs import hookimpl
from harness.methods import MethodConfig, PretrainMethod, PretrainSettings

if TYPE_CHECKING:  # torch only where it runs: `harness list`/`validate` import this module
    from torch import nn


class BYOLConfig(PretrainSettings):
    # `momentum` is the optimizer's (inherited); the target's EMA needs a name of its own.
    target_momentum: float = Field(0.996, ge=0, lt=1, description="tau_0 of the target's EMA "
                                   "(BYOL: 0.996, raised to 1 by a cosine schedule)")
    hidden_dim: int = Field(1024, ge=1, description="projector/predictor hidden width")
    proj_dim: int = Field(128, ge=1, description="projection dimension")
    # Declaring a ViewAugmentConfig field is what gives the method an `augment:` setting.
    augment: ViewAugmentConfig = Field(default_factory=ViewAugmentConfig,
                                       description="the two views (thesis Table A.1 defaults)")


def target_tau(step: int, total_steps: int, tau0: float) -> float:
    return 1.0 - (1.0 - tau0) * (math.cos(math.pi * step / max(1, total_steps)) + 1.0) / 2.0


class ExampleBYOL(PretrainMethod):
    name: ClassVar[str] = "example_byol"
    description: ClassVar[str] = "BYOL-like: predictor + momentum target (example plugin)"
    version: ClassVar[str] = "1"
    Config: ClassVar[type[MethodConfig]] = BYOLConfig

    config: BYOLConfig

    def build_model(self, encoder: nn.Module, encoder_channels: list[int]) -> nn.Module:
        from .byol_model import BYOLModel  # the networks (torch) are imported when needed

        return BYOLModel(encoder, encoder_channels[-1], self.config)

    def training_step(self, model, batch, num_classes):
        from .byol_model import byol_loss

        v1, v2 = batch["view1"], batch["view2"]  # float32 (B, 3, C, C), normalised to [-1, 1]
        loss = byol_loss(model.online(v1), model.target_projection(v2)) + \
            byol_loss(model.online(v2), model.target_projection(v1))
        return loss, {}

    def after_step(self, model, step: int, total_steps: int) -> None:
        """After every optimizer step; ``step`` counts from 0 to ``total_steps - 1``."""
        import torch

        tau = target_tau(step, total_steps, self.config.target_momentum)
        online = [*model.encoder.parameters(), *model.projector.parameters()]
        target = [*model.target["encoder"].parameters(), *model.target["projector"].parameters()]
        with torch.no_grad():
            for t, o in zip(target, online):
                t.mul_(tau).add_(o.detach(), alpha=1.0 - tau)


@hookimpl
def harness_register_methods():
    return [ExampleBYOL]
