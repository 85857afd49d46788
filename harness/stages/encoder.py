"""``encoder``: an ``init`` method's encoder weights (random, ImageNet...), or a randomly
initialised encoder that names no method (config ``init: random``; e.g. a model trained from
scratch inside a method's chain starts from it)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from harness.hookspecs import hookimpl
from harness.inputs import check_input_files
from harness.keying import ENGINE_VERSION, MethodRef, encoder_args
from harness.stages.base import StageKind, StageParams

if TYPE_CHECKING:
    from harness.methods import Method
    from harness.plan import Planning, Stage
    from harness.spec.models import FinetuneSettings


class EncoderParams(StageParams):
    method: MethodRef | None = None  # None: a random encoder (config ``init: random``)
    seed: int


class EncoderStage(StageKind):
    kind = "encoder"
    description = "encoder weights without training"
    Params = EncoderParams

    @classmethod
    def create(cls, plan: Planning, *, seed: int, method: Method | None = None, version: str = "",
               settings: FinetuneSettings | None = None) -> Stage:
        """``method``'s encoder (an ``init`` method) for fine-tuning ``settings`` (the row's,
        default the spec's), or without ``method`` a random one for the spec's encoder."""
        settings = settings or plan.spec.finetune
        if method is None:
            return cls.make(label=f"random encoder seed {seed}",
                            config={"init": "random", "encoder": settings.encoder, "seed": seed,
                                    **encoder_args(settings, plan.registry)},
                            version=ENGINE_VERSION, params=EncoderParams(seed=seed))
        enc_seed = seed if method.seed_dependent else None
        keyed, info = plan.keyed(method, method.config.model_dump(mode="json"))
        return cls.make(
            label=f"{method.name} encoder" + (f" seed {seed}" if enc_seed is not None else ""),
            config={"method": method.name, "settings": keyed, "encoder": settings.encoder,
                    "seed": enc_seed, **encoder_args(settings, plan.registry)},
            version=version, info=info, params=EncoderParams(method=MethodRef.of(method), seed=seed))

    def run(self, stage, inputs, ctx, env):
        from harness.engine.init_encoder import run_init_encoder, run_random_encoder

        cfg, params = stage.config, self.params_of(stage)
        if cfg.get("init") == "random":
            return run_random_encoder(ctx, encoder_name=cfg["encoder"], seed=params.seed,
                                      encoder_args=cfg.get("encoder_args"))
        files = check_input_files(stage, env.file_hash_cache)  # the bytes the key names
        result = run_init_encoder(ctx, method=env.method(params.method), encoder_name=cfg["encoder"],
                                  seed=params.seed, encoder_args=cfg.get("encoder_args"))
        return {**result, "input_files": files} if files else result


@hookimpl
def harness_register_stage_kinds():
    return [EncoderStage]
