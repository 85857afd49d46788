"""``lora``: low-rank adapters (Hu et al. 2021, arXiv 2106.09685) on the attention's qkv
projections of a ViT encoder, through ``peft`` (its ``inject_adapter_in_model`` adds
``lora_A``/``lora_B`` beside each frozen projection). The encoder's own weights stay fixed; the
adapters (rank ``finetune.lora_rank``, scale ``lora_alpha / rank``) and the dense head train.
THUNDER adapts pathology foundation models this way with rank 16 (its
``config/adaptation/lora.yaml``). The stored model has the adapters merged into the projections
(``W + (alpha/r) B A``), so evaluation rebuilds the plain network."""

from __future__ import annotations

from typing import TYPE_CHECKING

from harness.hookspecs import hookimpl
from harness.protocols.base import TrainingProtocol

if TYPE_CHECKING:  # no torch at import: `harness validate` and `list` load every protocol
    from torch import nn

    from harness.spec.models import FinetuneSettings

#: The attention projections adapted (timm ViTs' fused qkv Linear).
TARGET_MODULES = ["qkv"]


class LoRA(TrainingProtocol):
    name = "lora"
    description = "ViT encoder fixed, low-rank adapters on its qkv projections and the head train"
    reads = ("lora_rank", "lora_alpha")
    encoder_families = ("vit",)

    def prepare(self, model: nn.Module, settings: FinetuneSettings | None = None) -> None:
        from peft import LoraConfig, inject_adapter_in_model

        from harness.engine.model import freeze_encoder

        freeze_encoder(model)
        rank = getattr(settings, "lora_rank", 16)
        alpha = getattr(settings, "lora_alpha", 16.0)
        inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0,
                                           target_modules=TARGET_MODULES), model.encoder.model)

    def finalize(self, model: nn.Module) -> nn.Module:
        from peft.tuners.tuners_utils import BaseTunerLayer

        for parent in list(model.encoder.modules()):
            for child_name, child in list(parent.named_children()):
                if isinstance(child, BaseTunerLayer):
                    child.merge()
                    setattr(parent, child_name, child.get_base_layer())
        return model


@hookimpl
def harness_register_protocols():
    return [LoRA]
