"""The segmentation model and its encoder: an smp U-Net over an smp (or ``tu-`` timm) CNN
encoder, or a ViT encoder (:mod:`harness.models`) under a dense head (``dpt``, ``unetr``).
Every architecture maps ``(B, 3, H, W)`` to logits ``(B, out_channels, H, W)``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import segmentation_models_pytorch as smp
import torch
from torch import nn

from harness.errors import DataError

if TYPE_CHECKING:
    from harness.spec.models import FinetuneSettings

#: Dense heads for ViT encoders; ``unet`` takes CNN pyramids (harness.models.names).
VIT_ARCHITECTURES = ("dpt", "unetr")


def is_vit_name(encoder_name: str) -> bool:
    from harness.models.names import encoder_family
    from harness.spec.encoders import encoder_names

    return encoder_family(encoder_name, encoder_names()) == "vit"


def build_encoder(encoder_name: str, encoder_args: dict[str, Any] | None = None) -> nn.Module:
    """An encoder exactly as the segmentation model builds it, randomly initialised: an smp
    encoder (as the U-Net builds it), or a :class:`harness.models.vit.ViTEncoder`."""
    if is_vit_name(encoder_name):
        from harness.models.vit import build_vit_encoder

        return build_vit_encoder(encoder_name, encoder_args)
    return smp.encoders.get_encoder(encoder_name, in_channels=3, depth=5, weights=None,
                                    **(encoder_args or {}))


def build_unet(encoder_name: str, num_classes: int) -> nn.Module:
    model = smp.Unet(encoder_name=encoder_name, encoder_weights=None, in_channels=3,
                     classes=num_classes)
    no_grad_when_frozen(model.encoder)
    return model


def build_model(encoder_name: str, num_classes: int, architecture: str = "unet",
                encoder_args: dict[str, Any] | None = None) -> nn.Module:
    """The network of ``architecture`` with ``num_classes`` output channels (the head decides
    how many), randomly initialised; its ``.encoder`` takes the encoder artifact."""
    if architecture == "unet" and not encoder_args:
        return build_unet(encoder_name, num_classes)
    if architecture == "unet":
        model = smp.Unet(encoder_name=encoder_name, encoder_weights=None, in_channels=3,
                         classes=num_classes, **encoder_args)
        no_grad_when_frozen(model.encoder)
        return model
    from harness.models.vit import build_vit_encoder

    encoder = build_vit_encoder(encoder_name, encoder_args)
    if architecture == "dpt":
        from harness.models.dpt import DPT

        return DPT(encoder, num_classes)
    from harness.models.unetr import UNETR

    return UNETR(encoder, num_classes)


def describe_network(model: nn.Module, settings: FinetuneSettings) -> dict[str, Any]:
    """What the report shows of a row's network: architecture, encoder, parameter counts (all,
    the encoder's, the trained ones) and a ViT's patch size."""
    count = lambda ps: sum(p.numel() for p in ps)  # noqa: E731
    return {"architecture": getattr(model, "architecture", None) or settings.architecture,
            "encoder": settings.encoder,
            "params": count(model.parameters()), "encoder_params": count(model.encoder.parameters()),
            "patch_size": getattr(model.encoder, "patch_size", None)}


def no_grad_when_frozen(encoder: nn.Module) -> None:
    """The encoder's forward keeps no activations for backward while none of its parameters
    trains (``frozen``, the first epochs of ``unfreeze``): same outputs, less memory. Hooks
    (not a wrapped ``forward``) so that a deep copy (an EMA teacher) hooks itself."""
    encoder.register_forward_pre_hook(_grad_off_if_frozen)
    encoder.register_forward_hook(_grad_restore, always_call=True)


def _grad_off_if_frozen(module: nn.Module, args: Any) -> None:
    from harness.models.vit import trainable

    module.__dict__["_grad_before"] = torch.is_grad_enabled()
    if torch.is_grad_enabled() and not trainable(module):
        torch.set_grad_enabled(False)


def _grad_restore(module: nn.Module, args: Any, output: Any) -> None:
    torch.set_grad_enabled(module.__dict__.pop("_grad_before", torch.is_grad_enabled()))


def load_encoder_weights(model: nn.Module, state_dict: dict[str, Any], source: str) -> None:
    """Load encoder weights with strict key matching; a mismatch names the missing and
    unexpected keys (e.g. weights of another encoder architecture)."""
    try:
        model.encoder.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        result = key_diff(model.encoder, state_dict)
        raise DataError(f"encoder weights {source} do not fit the model's encoder: {result or exc}; "
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


def freeze_encoder(model: nn.Module, frozen: bool = True) -> None:
    """Frozen protocol: encoder parameters get no gradient (and are left out of the optimiser);
    ``frozen=False`` lets them train again (``unfreeze``)."""
    for p in model.encoder.parameters():
        p.requires_grad_(not frozen)


def set_train_mode(model: nn.Module, frozen: bool, frozen_bn: str) -> None:
    """``model.train()``, except that a frozen encoder with ``frozen_bn='fixed'`` keeps its
    batch-norm running statistics (eval mode); with ``'adapt'`` they keep updating, as in the
    thesis's code."""
    model.train()
    if frozen and frozen_bn == "fixed":
        model.encoder.eval()
