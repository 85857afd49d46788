"""The encoder stage of ``init`` methods: weights without training (random, ImageNet...)."""

from __future__ import annotations

import json
from typing import Any

from harness.engine.context import StageContext
from harness.engine.model import build_encoder
from harness.engine.runtime import seed_everything
from harness.methods import InitMethod
from harness.store import atomic_torch_save


def run_init_encoder(ctx: StageContext, *, method: InitMethod, encoder_name: str, seed: int,
                     encoder_args: dict[str, Any] | None = None) -> dict[str, Any]:
    seed_everything(seed)
    encoder = build_encoder(encoder_name, encoder_args)
    normalization = method.init_encoder(encoder, encoder_name, seed)
    save_encoder_artifact(ctx, encoder.state_dict(), encoder_name, normalization, method.name)
    return {"normalization": normalization}


def save_encoder_artifact(ctx: StageContext, state_dict: dict[str, Any], encoder_name: str,
                          normalization: dict[str, Any], method_name: str) -> None:
    """``encoder.pt`` (state dict with the U-Net encoder's key names) + ``encoder.json``."""
    atomic_torch_save(state_dict, ctx.out / "encoder.pt")
    (ctx.out / "encoder.json").write_text(json.dumps(
        {"encoder": encoder_name, "normalization": normalization, "method": method_name}, indent=2))


def run_random_encoder(ctx: StageContext, *, encoder_name: str, seed: int,
                       encoder_args: dict[str, Any] | None = None) -> dict[str, Any]:
    """A randomly initialised encoder that names no method (labelers start from it)."""
    from harness.methods import HALF_NORMALIZATION

    seed_everything(seed)
    encoder = build_encoder(encoder_name, encoder_args)
    save_encoder_artifact(ctx, encoder.state_dict(), encoder_name, HALF_NORMALIZATION, "random")
    return {"normalization": HALF_NORMALIZATION}
