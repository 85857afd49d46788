"""``encoder``: an ``init`` method's encoder weights (random, ImageNet...), or the random
encoder that labelers start from (config ``init: random``)."""

from __future__ import annotations

from harness.hookspecs import hookimpl
from harness.stages.base import StageKind


class EncoderStage(StageKind):
    kind = "encoder"
    description = "encoder weights without training"

    def run(self, stage, inputs, ctx, env):
        from harness.engine.init_encoder import run_init_encoder, run_random_encoder

        cfg, params = stage.config, stage.params
        if cfg.get("init") == "random":
            return run_random_encoder(ctx, encoder_name=cfg["encoder"], seed=params["seed"])
        return run_init_encoder(ctx, method=env.method(params["method"]), encoder_name=cfg["encoder"],
                                seed=params["seed"])


@hookimpl
def harness_register_stage_kinds():
    return [EncoderStage]
