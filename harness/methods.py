"""The method contract.

A method is a small class with a ``name``, a ``kind`` and a pydantic ``Config`` whose defaults
are the thesis values. Loops, optimisers, AMP, checkpoints and progress live in
:mod:`harness.engine`; a method file holds only what is specific to the method.

Kinds:

``init``            produces encoder weights without training (random init, ImageNet weights).
``pretrain``        trains an encoder on unlabeled images and returns its weights.
``semisupervised``  trains a whole segmentation model from labeled + unlabeled data; it has no
                    separate encoder stage, so the ``frozen`` protocol does not apply to it.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict

KINDS = ("init", "pretrain", "semisupervised")

#: Normalisation used by most of the thesis's code: mean = std = 0.5 (inputs in [-1, 1]).
HALF_NORMALIZATION = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}


class MethodConfig(BaseModel):
    """Base of every method's settings; unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


class Method:
    name: ClassVar[str]
    kind: ClassVar[str]
    #: Bump when a change alters results: it is part of every stage key built on this method.
    version: ClassVar[str] = "1"
    #: Whether the method's encoder depends on the cell's seed (random init does; a fixed
    #: weights file does not, so one artifact serves every seed).
    seed_dependent: ClassVar[bool] = True
    Config: ClassVar[type[MethodConfig]] = MethodConfig
    description: ClassVar[str] = ""

    def __init__(self, config: MethodConfig | None = None):
        self.config = config if config is not None else self.Config()

    @property
    def has_encoder_stage(self) -> bool:
        return self.kind != "semisupervised"

    def preflight(self, spec: Any) -> None:
        """Raise :class:`harness.errors.DataError` if something the method needs (a weights
        file, a dataset) is missing. Called before any work starts."""


class InitMethod(Method):
    """Produces an encoder's weights without training."""

    kind: ClassVar[str] = "init"

    def init_encoder(self, encoder: torch.nn.Module, encoder_name: str, seed: int) -> dict[str, Any]:
        """Set ``encoder``'s weights in place (it arrives randomly initialised from ``seed``).

        Returns the input normalisation the weights expect, ``{"mean": [...], "std": [...]}``.
        """
        raise NotImplementedError
