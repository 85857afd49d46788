"""The semi-supervised step over N processes (``harness stage run --nproc N``, DDP): what
changes so that N processes compute the one-process step on the same global batches.

``batch_size`` and the unlabeled batch size stay the *global* batches; each must split evenly
over the processes (:func:`check_split`, the loop's one-line error). Per iteration:

- every rank loads the whole global batch of iteration t (:class:`IterationBatches`: an
  image's augmentation draws follow those of the images before it, so a slice cannot be drawn
  alone; a few images next to the forward passes) and keeps its contiguous slice (rank r of W:
  the r-th of W equal pieces, as the loop's sharding of epoch sources);
- the teacher predicts this rank's slice of the unlabeled batch; the pseudo-labels and
  confidences are gathered, and every rank mixes and strong-augments the *global* batch with the
  same draws as one process (image i mixes with image (i+1) mod B of the global batch, the
  random masks and augmentations are the one-process ones), then keeps its slice. So the global
  torch RNG of every rank is the one-process one, also for the method's extra loss;
- the student (DDP) sees its slices; the losses are this rank's sums divided by the global
  counts, times W: DDP averages the gradients over the ranks, so the mean of the ranks' losses
  and their averaged gradients are the one-process ones (the loop logs that mean);
- a method's :meth:`extra_loss` receives the student's outputs gathered over the ranks (with
  gradients, :func:`~harness.engine.distributed.gather_with_grad`) and the global targets: every
  rank computes the global-batch loss (ReCo: prototypes and negatives over the global batch);
- the logged ``sup_loss``/``unsup_loss`` are averaged over the ranks (one small all-reduce).

DDP requires every trainable parameter to receive a gradient at every step. An output that a
step's loss does not use (ReCo's representation head when no class has a hard query) would
leave the reduction waiting, so under DDP the loss adds ``0 * sum`` of every student output: those
parameters then get a zero gradient (Adam's weight decay and moments still move them) where one
process leaves their gradient None and skips them. Single-process runs never take this path.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as nnf

from harness.engine import distributed as dist


def check_split(batch_size: int, unlabeled_batch_size: int, world: int) -> None:
    """The loop's one-line SpecError when a global batch does not split over ``world``."""
    from harness.engine.loader import _check_split
    from harness.errors import SpecError

    _check_split(batch_size, batch_size, True, world)
    if unlabeled_batch_size % world:
        raise SpecError(f"unlabeled_batch_size {unlabeled_batch_size} is the global batch and does "
                        f"not split over {world} processes; use a multiple of {world} (or another "
                        f"--nproc)")


class Shard:
    """This rank's contiguous, equal slice of a global batch, and the collectives of the step."""

    def __init__(self, rank: int, world: int):
        self.rank, self.world = rank, world

    def take(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0] // self.world
        return x[self.rank * n:(self.rank + 1) * n]

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """The global batch from every rank's slice (gradients flow back to the local slice)."""
        return dist.gather_with_grad(x, [x.shape[0]] * self.world)

    def total(self, x: torch.Tensor) -> torch.Tensor:
        """The sum of ``x`` over the ranks (no gradient)."""
        x = x.detach().clone()
        torch.distributed.all_reduce(x)
        return x


def supervised_ce(logits: torch.Tensor, target: torch.Tensor, global_target: torch.Tensor,
                  shard: Shard) -> torch.Tensor:
    """This rank's share of the global batch's mean cross-entropy (-1 ignored)."""
    count = (global_target >= 0).sum()
    total = nnf.cross_entropy(logits, target, ignore_index=-1, reduction="sum")
    return total * shard.world / count


def confidence_weighted_ce(logits: torch.Tensor, target: torch.Tensor, confidence: torch.Tensor,
                           strong_threshold: float, shard: Shard) -> torch.Tensor:
    """This rank's share of :func:`harness.engine.semisup.confidence_weighted_ce` over the
    global batch: the per-image weights are local, the mean is over the global batch's pixels
    with a positive loss (their count is summed over the ranks)."""
    b = logits.shape[0]
    valid = (target >= 0).reshape(b, -1).sum(-1).clamp(min=1)
    weight = confidence.reshape(b, -1).ge(strong_threshold).sum(-1) / valid
    loss = nnf.cross_entropy(logits, target, reduction="none", ignore_index=-1)
    positive = loss > 0
    count = int(shard.total(positive.sum()))
    if count == 0:
        return loss.sum() * 0.0
    return (weight[:, None, None] * loss)[positive].sum() * shard.world / count


def gathered(shard: Shard, *outputs: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """Each dict of per-image tensors (the student's outputs) gathered over the ranks in *one*
    collective: the tensors flattened per image and concatenated, gathered, split back. (Two
    gathers with gradients in one step gave wrong gradients under gloo, measured: their
    backward all-to-alls paired up across the ranks in another order.)"""
    keys = [(i, k) for i, out in enumerate(outputs) for k in out]
    flat = [outputs[i][k] for i, k in keys]
    widths = [t[0].numel() for t in flat]
    rows = shard.gather(torch.cat([t.reshape(t.shape[0], -1) for t in flat], dim=1))
    result: list[dict[str, torch.Tensor]] = [{} for _ in outputs]
    for (i, k), t, part in zip(keys, flat, rows.split(widths, dim=1)):
        result[i][k] = part.reshape(-1, *t.shape[1:])
    return result


def every_output_used(loss: torch.Tensor, *outputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """``loss + 0 * sum(outputs)``: every parameter behind an output gets a gradient (see the
    module docstring)."""
    zero = sum(v.float().sum() * 0.0 for out in outputs for v in out.values() if v.requires_grad)
    return loss + zero


def mean_logs(shard: Shard, *values: torch.Tensor) -> list[torch.Tensor]:
    """Each scalar averaged over the ranks (one all-reduce)."""
    stacked = shard.total(torch.stack([v.detach().float() for v in values])) / shard.world
    return list(stacked.unbind())


def distribute(method: Any, student: torch.nn.Module, teacher: torch.nn.Module,
               device: torch.device) -> tuple[torch.nn.Module, Shard | None]:
    """Under torchrun: the student in DDP and this rank's :class:`Shard`; with the method's
    ``sync_batchnorm`` on CUDA, the student's and the teacher's BatchNorm layers normalise over
    the global batch (SyncBatchNorm, in place; the teacher predicts in train mode, so its
    statistics are batch statistics too). Alone: ``(student, None)``."""
    if dist.world_size() == 1:
        return student, None
    sync = getattr(method, "sync_batchnorm", True)
    if sync and device.type == "cuda":
        torch.nn.SyncBatchNorm.convert_sync_batchnorm(teacher)
    return dist.wrap_ddp(student, device, sync), Shard(dist.rank(), dist.world_size())


def overrides_extra_loss(method: Any) -> bool:
    """Whether the method adds a loss (its outputs are then gathered for it)."""
    from harness.methods import SemiSupervisedMethod

    return type(method).extra_loss is not SemiSupervisedMethod.extra_loss
