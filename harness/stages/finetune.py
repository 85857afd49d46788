"""``finetune``: the cell's protocol's model trained on a labeled split from an encoder
(input ``encoder``)."""

from __future__ import annotations

from harness.hookspecs import hookimpl
from harness.stages.base import StageKind


class FinetuneStage(StageKind):
    kind = "finetune"
    description = "a model fine-tuned from an encoder, as its protocol says"
    distributed = True  # the shared training loop: DDP over gpus_per_stage processes

    def run(self, stage, inputs, ctx, env):
        from harness.engine.finetune import finetune

        cfg, params = stage.config, stage.params
        dataset, arrays = env.labeled(params["dataset"])
        return finetune(ctx, arrays=arrays, train_ids=params["train_ids"], num_classes=dataset.num_classes,
                        settings=env.settings(params["settings"]), protocol=env.protocol(cfg["protocol"]),
                        seed=cfg["seed"])


@hookimpl
def harness_register_stage_kinds():
    return [FinetuneStage]
