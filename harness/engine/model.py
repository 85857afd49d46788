"""The segmentation model (segmentation-models-pytorch U-Net) and its encoder."""

from __future__ import annotations

from typing import Any

import segmentation_models_pytorch as smp
import torch
from torch import nn

from harness.errors import DataError


def build_encoder(encoder_name: str) -> nn.Module:
    """An smp encoder exactly as the U-Net builds it, randomly initialised."""
    return smp.encoders.get_encoder(encoder_name, in_channels=3, depth=5, weights=None)


def build_unet(encoder_name: str, num_classes: int) -> nn.Module:
    return smp.Unet(encoder_name=encoder_name, encoder_weights=None, in_channels=3,
                    classes=num_classes)


def load_encoder_weights(model: nn.Module, state_dict: dict[str, Any], source: str) -> None:
    """Load encoder weights with strict key matching; a mismatch names the missing and
    unexpected keys (e.g. weights of another encoder architecture)."""
    try:
        model.encoder.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        result = key_diff(model.encoder, state_dict)
        raise DataError(f"encoder weights {source} do not fit the U-Net encoder: {result or exc}; "
                        f"check that finetune.encoder matches the encoder the weights were "
                        f"trained with") from None


def key_diff(module: nn.Module, state_dict: dict[str, Any]) -> str:
    expected = set(module.state_dict())
    given = set(state_dict) - {"fc.weight", "fc.bias"}
    missing, unexpected = sorted(expected - given), sorted(given - expected)
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})")
    if not parts:
        bad = [k for k in expected & given
               if tuple(module.state_dict()[k].shape) != tuple(state_dict[k].shape)]
        if bad:
            parts.append(f"shape mismatch in {', '.join(bad[:3])}")
    return "; ".join(parts)


def freeze_encoder(model: nn.Module) -> None:
    """Frozen protocol: encoder parameters get no gradient (and are left out of the optimiser)."""
    for p in model.encoder.parameters():
        p.requires_grad_(False)


def set_train_mode(model: nn.Module, frozen: bool, frozen_bn: str) -> None:
    """``model.train()``, except that a frozen encoder with ``frozen_bn='fixed'`` keeps its
    batch-norm running statistics (eval mode); with ``'adapt'`` they keep updating, as in the
    thesis's code."""
    model.train()
    if frozen and frozen_bn == "fixed":
        model.encoder.eval()
