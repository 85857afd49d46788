"""Which family an encoder name belongs to, without importing torch (``harness validate``).

``finetune.encoder`` takes:

- an segmentation-models-pytorch encoder name (``resnet18``): a CNN pyramid;
- ``tu-NAME`` for any timm model: smp's timm-universal CNN encoder, or a ViT when NAME is one;
- a timm ViT-style name (``vit_small_patch16_224``, ``vit_giant_patch14_reg4_dinov2``...);
- ``local-dir:DIR``: a downloaded Hugging Face snapshot folder (timm reads its config.json);
- ``fm:NAME``: a pathology foundation model of the registry (:mod:`harness.models.foundation`).

The timm names (every model, and the ViT-style ones: the modules below, whose models have one
stride and ``forward_intermediates``) are cached per timm version in the user cache folder, as
:mod:`harness.spec.encoders` caches smp's list.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import sys
from pathlib import Path

import platformdirs

from harness.name_cache import write_name_list

#: timm modules whose models are plain (single-stride) transformers with forward_intermediates.
VIT_MODULES = ("vision_transformer", "deit", "eva", "beit", "vision_transformer_relpos")
#: Architectures by family (the first is the family's default).
ARCHITECTURES = {"cnn": ("unet",), "vit": ("unetr", "dpt")}
FM_PREFIX, LOCAL_PREFIX, TIMM_PREFIX = "fm:", "local-dir:", "tu-"


def _cache_file() -> Path:
    try:
        version = md.version("timm")
    except md.PackageNotFoundError:
        version = "unknown"
    return Path(platformdirs.user_cache_dir("harness")) / f"timm-{version}-models.json"


def timm_names() -> dict[str, list[str]]:
    """``{"all": [...], "vit": [...]}``: timm's model names (without pretrained tags)."""
    path = _cache_file()
    if "timm" not in sys.modules and "unknown" not in path.name:
        try:
            data = json.loads(path.read_text())
            if isinstance(data, dict) and data.get("all") and data.get("vit"):
                return data
        except (OSError, ValueError):
            pass
    import timm

    data = {"all": sorted(timm.list_models()),
            "vit": sorted({n for m in VIT_MODULES for n in timm.list_models(module=m)})}
    if "unknown" not in path.name:
        write_name_list(path, data)
    return data


def timm_name(encoder: str) -> str:
    """The timm model of a ``tu-`` or plain timm name (pretrained tag dropped)."""
    name = encoder[len(TIMM_PREFIX):] if encoder.startswith(TIMM_PREFIX) else encoder
    return name.split(".")[0]


def encoder_family(encoder: str, smp_names: list[str]) -> str | None:
    """``"cnn"``, ``"vit"``, or None for a name nothing knows."""
    if encoder.startswith((FM_PREFIX, LOCAL_PREFIX)):
        return "vit"
    if encoder in smp_names:
        return "cnn"
    names = timm_names()
    base = timm_name(encoder)
    if base in names["vit"]:
        return "vit"
    if encoder.startswith(TIMM_PREFIX) and base in names["all"]:
        return "cnn"
    return None


def architecture_problem(encoder: str, architecture: str, family: str) -> str | None:
    """Why ``architecture`` cannot take an encoder of ``family``, or None."""
    fits = ARCHITECTURES[family]
    if architecture in fits:
        return None
    kind = "a plain ViT (one stride, no feature pyramid)" if family == "vit" else "a CNN"
    return (f"finetune.architecture '{architecture}' cannot take encoder '{encoder}', {kind}; "
            f"architectures that fit it: {', '.join(fits)}")
