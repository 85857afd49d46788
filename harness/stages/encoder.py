"""``encoder``: an ``init`` method's encoder weights (random, ImageNet...), or the random
encoder that labelers start from (config ``init: random``)."""

from __future__ import annotations

from harness.hookspecs import hookimpl
from harness.inputs import check_input_files
from harness.stages.base import StageKind


class EncoderStage(StageKind):
    kind = "encoder"
    description = "encoder weights without training"

    def run(self, stage, inputs, ctx, env):
        from harness.engine.init_encoder import run_init_encoder, run_random_encoder

        cfg, params = stage.config, stage.params
        if cfg.get("init") == "random":
            return run_random_encoder(ctx, encoder_name=cfg["encoder"], seed=params["seed"],
                                      encoder_args=cfg.get("encoder_args"))
        files = check_input_files(stage, env.file_hash_cache)  # the bytes the key names
        result = run_init_encoder(ctx, method=env.method(params["method"]), encoder_name=cfg["encoder"],
                                  seed=params["seed"], encoder_args=cfg.get("encoder_args"))
        return {**result, "input_files": files} if files else result


@hookimpl
def harness_register_stage_kinds():
    return [EncoderStage]
