"""``semisup``: a semi-supervised method's whole U-Net (its EMA teacher) from a labeled split
and the unlabeled images."""

from __future__ import annotations

from harness.hookspecs import hookimpl
from harness.inputs import check_input_files
from harness.stages.base import StageKind


class SemisupStage(StageKind):
    kind = "semisup"
    description = "a semi-supervised method's U-Net"
    distributed = True  # the shared training loop: DDP over gpus_per_stage processes

    def run(self, stage, inputs, ctx, env):
        from harness.engine.semisup import train_semisupervised

        cfg, params = stage.config, stage.params
        files = check_input_files(stage, env.file_hash_cache)  # the bytes the key names
        dataset, arrays = env.labeled(params["dataset"])
        result = train_semisupervised(
            ctx, method=env.method(params["method"]), arrays=arrays, train_ids=params["train_ids"],
            unlabeled_images=env.resources.unlabeled_images(), num_classes=dataset.num_classes,
            settings=env.settings(params["settings"]), seed=cfg["seed"])
        return {**result, "input_files": files} if files else result


@hookimpl
def harness_register_stage_kinds():
    return [SemisupStage]
