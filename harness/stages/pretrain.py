"""``pretrain``: an encoder trained on unlabeled images (and pseudo-label masks, input
``masks``), continuing a previous cycle's model (input ``previous``) in cyclic training."""

from __future__ import annotations

from harness.hookspecs import hookimpl
from harness.inputs import check_input_files
from harness.stages.base import StageKind


class PretrainStage(StageKind):
    kind = "pretrain"
    description = "a pretraining method's encoder"
    distributed = True  # the shared training loop: DDP over gpus_per_stage processes

    def run(self, stage, inputs, ctx, env):
        import numpy as np

        from harness.engine.pretrain import pretrain
        from harness.safeload import STAGE_FIX, load_state_dict_file

        cfg, params = stage.config, stage.params
        files = check_input_files(stage, env.file_hash_cache)  # the bytes the key names
        masks = np.load(inputs["masks"] / "masks.npy", mmap_mode="r") if "masks" in inputs else None
        start = (load_state_dict_file(inputs["previous"] / "model.pt", fix=STAGE_FIX)
                 if "previous" in inputs else None)
        result = pretrain(ctx, method=env.method(params["method"]), images=env.resources.unlabeled_images(),
                          masks=masks, encoder_name=cfg["encoder"], seed=cfg["seed"],
                          num_classes=params["num_classes"], start_from=start,
                          encoder_args=cfg.get("encoder_args"))
        return {**result, "input_files": files} if files else result


@hookimpl
def harness_register_stage_kinds():
    return [PretrainStage]
