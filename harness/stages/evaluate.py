"""``evaluate``: a trained model (input ``model``) on the complete test fold; predictions are
the argmax of the logits of the model its protocol builds."""

from __future__ import annotations

from functools import partial

from harness.hookspecs import hookimpl
from harness.stages.base import StageKind


class EvaluateStage(StageKind):
    kind = "evaluate"
    description = "metrics of a model on a test fold"

    def run(self, stage, inputs, ctx, env):
        from harness.engine.evaluate import evaluate

        cfg, params = stage.config, stage.params
        dataset, arrays = env.labeled(params["dataset"])
        settings = env.settings(params["settings"])
        return evaluate(ctx, arrays=arrays, test_ids=params["test_ids"], num_classes=dataset.num_classes,
                        class_names=dataset.class_names, metric_family=cfg["metric_family"],
                        settings=settings,
                        build=partial(env.protocol(params["protocol"]).build_model, settings=settings),
                        head=cfg.get("head", "semantic"))


@hookimpl
def harness_register_stage_kinds():
    return [EvaluateStage]
