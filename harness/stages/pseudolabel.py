"""``pseudolabel``: the labeler's (input ``labeler``) argmax over every unlabeled image."""

from __future__ import annotations

from harness.hookspecs import hookimpl
from harness.stages.base import StageKind


class PseudolabelStage(StageKind):
    kind = "pseudolabel"
    description = "pseudo-label masks of the unlabeled images"

    def run(self, stage, inputs, ctx, env):
        from harness.engine.pseudolabel import pseudolabel

        settings = env.settings(stage.params["settings"])
        return pseudolabel(ctx, images=env.resources.unlabeled_images(), encoder_name=settings.encoder,
                           num_classes=stage.config["num_classes"], batch_size=settings.eval_batch_size,
                           amp=settings.pseudolabel_amp)


@hookimpl
def harness_register_stage_kinds():
    return [PseudolabelStage]
