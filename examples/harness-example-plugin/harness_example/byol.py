"""``example_byol``: a BYOL-like pretraining method with a momentum (EMA) target network.

The online network (encoder -> projector -> predictor) predicts the target network's projection
of the other view (Grill et al., 2020, "Bootstrap your own latent"); the target (a copy of the
encoder and projector) gets no gradient and follows the online weights by an exponential moving
average in ``after_step``, with BYOL's schedule tau_k = 1 - (1 - tau_0) (cos(pi k / K) + 1) / 2.
The target lives inside the model (``model.target``), so checkpoints carry it.
"""

from __future__ import annotations

import copy
import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from harness.data.views import ViewAugmentConfig
from harness.hookspecs import hookimpl
from harness.methods import MethodConfig, PretrainMethod, PretrainSettings


class BYOLConfig(PretrainSettings):
    # `momentum` is the optimizer's (inherited); the target's EMA needs a name of its own.
    target_momentum: float = Field(0.996, ge=0, lt=1, description="tau_0 of the target's EMA "
                                   "(BYOL: 0.996, raised to 1 by a cosine schedule)")
    hidden_dim: int = Field(1024, ge=1, description="projector/predictor hidden width")
    proj_dim: int = Field(128, ge=1, description="projection dimension")
    # Declaring a ViewAugmentConfig field is what gives the method an `augment:` setting.
    augment: ViewAugmentConfig = Field(default_factory=ViewAugmentConfig,
                                       description="the two views (thesis Table A.1 defaults)")


def mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                         nn.Linear(hidden, out_dim))


class BYOLModel(nn.Module):
    def __init__(self, encoder: nn.Module, in_dim: int, cfg: BYOLConfig):
        super().__init__()
        self.encoder = encoder  # must stay `.encoder`: the harness saves model.encoder
        self.projector = mlp(in_dim, cfg.hidden_dim, cfg.proj_dim)
        self.predictor = mlp(cfg.proj_dim, cfg.hidden_dim, cfg.proj_dim)
        self.target = nn.ModuleDict({"encoder": copy.deepcopy(encoder),
                                     "projector": copy.deepcopy(self.projector)})
        self.target.requires_grad_(False)

    def online(self, x: torch.Tensor) -> torch.Tensor:
        return self.predictor(self.projector(self.encoder(x)[-1].mean(dim=(2, 3))))

    @torch.no_grad()
    def target_projection(self, x: torch.Tensor) -> torch.Tensor:
        return self.target["projector"](self.target["encoder"](x)[-1].mean(dim=(2, 3)))


def byol_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """2 - 2 cos(p, z), averaged over the batch (BYOL eq. 2)."""
    return (2 - 2 * F.cosine_similarity(p, z.detach(), dim=-1)).mean()


def target_tau(step: int, total_steps: int, tau0: float) -> float:
    return 1.0 - (1.0 - tau0) * (math.cos(math.pi * step / max(1, total_steps)) + 1.0) / 2.0


class ExampleBYOL(PretrainMethod):
    name: ClassVar[str] = "example_byol"
    description: ClassVar[str] = "BYOL-like: predictor + momentum target (example plugin)"
    version: ClassVar[str] = "1"
    Config: ClassVar[type[MethodConfig]] = BYOLConfig

    config: BYOLConfig

    def build_model(self, encoder: nn.Module, encoder_channels: list[int]) -> nn.Module:
        return BYOLModel(encoder, encoder_channels[-1], self.config)

    def training_step(self, model, batch, num_classes):
        v1, v2 = batch["view1"], batch["view2"]  # float32 (B, 3, C, C), normalised to [-1, 1]
        loss = byol_loss(model.online(v1), model.target_projection(v2)) + \
            byol_loss(model.online(v2), model.target_projection(v1))
        return loss, {}

    @torch.no_grad()
    def after_step(self, model, step: int, total_steps: int) -> None:
        tau = target_tau(step, total_steps, self.config.target_momentum)
        online = [*model.encoder.parameters(), *model.projector.parameters()]
        target = [*model.target["encoder"].parameters(), *model.target["projector"].parameters()]
        for t, o in zip(target, online):
            t.mul_(tau).add_(o.detach(), alpha=1.0 - tau)


@hookimpl
def harness_register_methods():
    return [ExampleBYOL]
