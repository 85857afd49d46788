"""What enters stage keys: the versions of the shared loops and which settings a key hashes.

Stage kinds (:mod:`harness.stages`) build their stages' configs with these helpers, so that every
kind keys fine-tuning settings, method references and encoder arguments alike. A change here
changes stage keys (``tests/test_stage_keys.py`` pins them).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

from harness.spec.models import FinetuneSettings, HoverLossWeights

if TYPE_CHECKING:
    from harness.plugins import Registry

#: Bump when the shared loops change results: part of the keys of the stages they compute.
ENGINE_VERSION = "1"

#: Version of the fine-tuning stages (kind ``finetune`` and the kinds derived from it). 2: an
#: epoch keeps its last partial batch (``finetune.drop_last``) and the blur is the reference's
#: (kernel 3/5/7 with p 0.2/0.4/0.4, OpenCV's sigma-0 kernels; harness/data/augment.py).
FINETUNE_VERSION = "2"

#: Settings that do not change a result (where or how fast it is computed): not in stage keys.
RUNTIME_ONLY = {"device", "num_workers", "eval_batch_size", "eval_workers", "channels_last",
                "view_pipeline", "compile", "eval_precision", "augment_pipeline"}

#: Fine-tuning settings added after stage keys were pinned: in a key only when set to another
#: value than this default, so adding them changed no key.
ADDED_SETTINGS = {"drop_last": False, "pseudolabel_amp": False, "encoder_args": {},
                  "unfreeze_epochs": 25, "lora_rank": 16, "lora_alpha": 16.0, "head": "semantic",
                  "hover_loss": HoverLossWeights().model_dump(mode="json"),
                  "grad_accumulation": 1, "grad_clip_norm": None}

#: Settings of pretraining and semi-supervised methods' configs declared on their shared bases
#: (:mod:`harness.training_settings`) after stage keys were pinned; the engine read them from a
#: method's config with these defaults before. In a key only when set to another value.
ADDED_METHOD_SETTINGS = {"amp": True, "grad_accumulation": 1, "grad_clip_norm": None}

#: Fine-tuning settings a protocol reads (its ``reads``): in the keys of its stages only.
PROTOCOL_SETTINGS = ("unfreeze_epochs", "lora_rank", "lora_alpha")


class MethodRef(BaseModel):
    """A method object as data: its plugin name and its whole config (runtime keys too)."""

    model_config = ConfigDict(extra="forbid")
    plugin: str
    config: dict[str, Any]

    @classmethod
    def of(cls, method: Any) -> "MethodRef":
        return cls(plugin=method.name, config=method.config.model_dump(mode="json"))


def method_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """A training method's settings (a dump of its config) as they enter its stages' keys:
    without the runtime-only ones and the added ones left at their default."""
    return {k: v for k, v in settings.items() if k not in RUNTIME_ONLY
            and not (k in ADDED_METHOD_SETTINGS and v == ADDED_METHOD_SETTINGS[k])}


def result_settings(model: Any, unread: tuple[str, ...] = ()) -> dict[str, Any]:
    """``model``'s settings as they enter a key: without the runtime-only ones, the ones the
    stage does not read (``unread``) and the added ones left at their default."""
    return {k: v for k, v in model.model_dump(mode="json").items()
            if k not in RUNTIME_ONLY and k not in unread
            and not (k in ADDED_SETTINGS and v == ADDED_SETTINGS[k])}


def encoder_args(settings: FinetuneSettings, registry: Registry) -> dict[str, Any]:
    """``{"encoder_args": ...}`` for an encoder stage's config: only when some are set (they
    change the encoder's shapes), so that no existing key changed; for a foundation model
    (``fm:NAME``) also its registry entry's architecture (``fm_architecture``), so that a
    corrected entry gets new stages."""
    args = settings.encoder_args
    out: dict[str, Any] = {"encoder_args": dict(args)} if args else {}
    if settings.encoder.startswith("fm:"):
        from harness.models.foundation import foundation_model

        entry = foundation_model(settings.encoder[3:], registry)
        out["fm_architecture"] = {"timm": entry.timm, "kwargs": entry.kwargs}
    return out


def flat(chosen: dict[str, list[str]]) -> list[str]:
    """Ids chosen by group, as one list (group order)."""
    return [sid for ids in chosen.values() for sid in ids]
