"""``labeler``: the U-Net that pseudo-labels unlabeled images for mask-guided pretraining,
fine-tuned (``full``) on the labeler dataset's training groups."""

from __future__ import annotations

from harness.hookspecs import hookimpl
from harness.stages.finetune import FinetuneStage


class LabelerStage(FinetuneStage):
    kind = "labeler"
    description = "the pseudo-labelling U-Net"


@hookimpl
def harness_register_stage_kinds():
    return [LabelerStage]
