"""The networks and the loss of ``example_byol`` (imported by :mod:`harness_example.byol` only
where it builds or trains a model, so that `harness list` and `validate`, which import every
registered module, import no torch)."""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                         nn.Linear(hidden, out_dim))


class BYOLModel(nn.Module):
    def __init__(self, encoder: nn.Module, in_dim: int, cfg: Any):
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
