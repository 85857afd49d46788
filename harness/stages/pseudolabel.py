"""``pseudolabel``: a segmentation model's (input ``labeler``, scored by input ``labeler_eval``)
argmax over every unlabeled image: the masks a mask-guided pretraining learns from."""

from __future__ import annotations

from typing import TYPE_CHECKING

from harness.hookspecs import hookimpl
from harness.keying import ENGINE_VERSION
from harness.spec.models import FinetuneSettings
from harness.stages.base import StageKind, StageParams

if TYPE_CHECKING:
    from harness.plan import Planning, Stage


class PseudolabelParams(StageParams):
    settings: FinetuneSettings  # the model's network (encoder, architecture) and batch size


class PseudolabelStage(StageKind):
    kind = "pseudolabel"
    description = "pseudo-label masks of the unlabeled images"
    Params = PseudolabelParams

    @classmethod
    def create(cls, plan: Planning, *, labeler: Stage, labeler_eval: Stage, num_classes: int
               ) -> Stage:
        """The masks the ``labeler`` stage's model predicts (``labeler_eval``: its score, a
        dependency so that it is computed first), with ``num_classes`` classes."""
        finetune = plan.spec.finetune
        # fp32 by default (the reference's); mixed precision enters the key only when chosen
        precision = {"amp": True} if finetune.pseudolabel_amp else {}
        return cls.make(
            label=f"pseudo-labels from {labeler.label}",
            config={"unlabeled": plan.resources.unlabeled_dataset().fingerprint(),
                    "num_classes": num_classes, **precision},
            version=ENGINE_VERSION, deps={"labeler": labeler, "labeler_eval": labeler_eval},
            params=PseudolabelParams(settings=finetune))

    def run(self, stage, inputs, ctx, env):
        from functools import partial

        from harness.engine.model import build_model
        from harness.engine.pseudolabel import pseudolabel

        settings = self.params_of(stage).settings
        build = partial(build_model, architecture=settings.architecture,
                        encoder_args=settings.encoder_args)
        return pseudolabel(ctx, images=env.resources.unlabeled_images(), encoder_name=settings.encoder,
                           num_classes=stage.config["num_classes"], batch_size=settings.eval_batch_size,
                           amp=settings.pseudolabel_amp, build=build)


@hookimpl
def harness_register_stage_kinds():
    return [PseudolabelStage]
