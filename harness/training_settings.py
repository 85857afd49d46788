"""The settings the shared training loop reads, declared once for every setting block that trains.

:class:`harness.engine.loop.TrainLoop` clips and accumulates gradients; the stages' engines
(:mod:`harness.engine.pretrain`, :mod:`harness.engine.finetune`, :mod:`harness.engine.semisup`)
pick the precision and memory format. Each block of settings that trains with them inherits them
from here, so the engines read them as attributes:

* :class:`TrainingSettings`: fine-tuning (``finetune:``, :class:`harness.spec.models.FinetuneSettings`)
  and pretraining methods (:class:`harness.methods.PretrainSettings`);
* :class:`GradClipSettings`: semi-supervised methods (:class:`harness.methods.SemiSupervisedSettings`),
  whose loop takes its precision and memory format from ``finetune:`` and accumulates no gradients.

Settings declared here after stage keys were pinned enter a key only when set to another value
than their default (:data:`harness.keying.ADDED_SETTINGS`, :data:`harness.keying.ADDED_METHOD_SETTINGS`).
Nothing here imports torch.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class GradClipSettings(BaseModel):
    """Gradient clipping of the shared loop."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    grad_clip_norm: float | None = Field(
        None, gt=0, description="clip the gradients' global L2 norm to this before each optimizer "
        "step (torch.nn.utils.clip_grad_norm_ over the optimizer's parameters, after unscaling "
        "under fp16); None: no clipping")


class TrainingSettings(GradClipSettings):
    """Gradient accumulation, precision and memory format of a training stage."""

    grad_accumulation: int = Field(
        1, ge=1, le=4096, description="batches whose gradients (each loss divided by this) are "
        "summed into one optimizer step; an epoch's last, partial group still steps")
    amp: bool = Field(True, description="mixed precision on CUDA for training (bf16 where the GPU "
                      "has it natively, else fp16 with a grad scaler)")
    channels_last: bool = Field(True, description="channels_last memory format on CUDA")
