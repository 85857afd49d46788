"""``pseudolabel``: the labeler's (input ``labeler``) argmax over every unlabeled image."""

from __future__ import annotations

from harness.hookspecs import hookimpl
from harness.stages.base import StageKind


class PseudolabelStage(StageKind):
    kind = "pseudolabel"
    description = "pseudo-label masks of the unlabeled images"

    def run(self, stage, inputs, ctx, env):
        from functools import partial

        from harness.engine.model import build_model
        from harness.engine.pseudolabel import pseudolabel

        settings = env.settings(stage.params["settings"])
        build = partial(build_model, architecture=settings.architecture,
                        encoder_args=settings.encoder_args)
        return pseudolabel(ctx, images=env.resources.unlabeled_images(), encoder_name=settings.encoder,
                           num_classes=stage.config["num_classes"], batch_size=settings.eval_batch_size,
                           amp=settings.pseudolabel_amp, build=build)


@hookimpl
def harness_register_stage_kinds():
    return [PseudolabelStage]
