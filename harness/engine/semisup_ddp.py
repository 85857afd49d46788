"""The shard: all that the one mean-teacher step (:mod:`harness.engine.semisup`) needs to know
about the number of processes. One process holds the world-size-1 shard, which is the identity
(its slices are the batch, its gathers and sums return their input, no collective runs);
``harness stage run --nproc N`` (DDP) holds rank r's shard, and N processes then compute the
one-process step on the same global batches.

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
process leaves their gradient None and skips them. The world-size-1 shard adds nothing.
"""

from __future__ import annotations

from typing import Any

import torch

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
    """This rank's contiguous, equal slice of a global batch, and the collectives of the step;
    ``Shard()`` (rank 0 of 1) is the identity."""

    def __init__(self, rank: int = 0, world: int = 1):
        self.rank, self.world = rank, world

    def take(self, x: torch.Tensor) -> torch.Tensor:
        if self.world == 1:
            return x
        n = x.shape[0] // self.world
        return x[self.rank * n:(self.rank + 1) * n]

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """The global batch from every rank's slice (gradients flow back to the local slice)."""
        if self.world == 1:
            return x
        return dist.gather_with_grad(x, [x.shape[0]] * self.world)

    def total(self, x: torch.Tensor) -> torch.Tensor:
        """The sum of ``x`` over the ranks (no gradient)."""
        x = x.detach()
        if self.world == 1:
            return x
        x = x.clone()
        torch.distributed.all_reduce(x)
        return x

    def gathered(self, *outputs: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        """Each dict of per-image tensors (the student's outputs) gathered over the ranks in *one*
        collective: the tensors flattened per image and concatenated, gathered, split back. (Two
        gathers with gradients in one step gave wrong gradients under gloo, measured: their
        backward all-to-alls paired up across the ranks in another order.)"""
        if self.world == 1:
            return list(outputs)
        keys = [(i, k) for i, out in enumerate(outputs) for k in out]
        flat = [outputs[i][k] for i, k in keys]
        widths = [t[0].numel() for t in flat]
        rows = self.gather(torch.cat([t.reshape(t.shape[0], -1) for t in flat], dim=1))
        result: list[dict[str, torch.Tensor]] = [{} for _ in outputs]
        for (i, k), t, part in zip(keys, flat, rows.split(widths, dim=1)):
            result[i][k] = part.reshape(-1, *t.shape[1:])
        return result

    def every_output_used(self, loss: torch.Tensor, *outputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Under DDP ``loss + 0 * sum(outputs)``: every parameter behind an output gets a gradient
        (see the module docstring); alone ``loss``."""
        if self.world == 1:
            return loss
        zero = sum(v.float().sum() * 0.0 for out in outputs for v in out.values() if v.requires_grad)
        return loss + zero

    def mean_logs(self, *values: torch.Tensor) -> list[torch.Tensor]:
        """Each scalar (detached) averaged over the ranks (one all-reduce)."""
        if self.world == 1:
            return [v.detach() for v in values]
        stacked = self.total(torch.stack([v.detach().float() for v in values])) / self.world
        return list(stacked.unbind())


def distribute(method: Any, student: torch.nn.Module, teacher: torch.nn.Module,
               device: torch.device) -> tuple[torch.nn.Module, Shard]:
    """Under torchrun: the student in DDP and this rank's :class:`Shard`; with the method's
    ``sync_batchnorm`` on CUDA, the student's and the teacher's BatchNorm layers normalise over
    the global batch (SyncBatchNorm, in place; the teacher predicts in train mode, so its
    statistics are batch statistics too). Alone: ``(student, Shard())``."""
    if dist.world_size() == 1:
        return student, Shard()
    sync = getattr(method, "sync_batchnorm", True)
    if sync and device.type == "cuda":
        torch.nn.SyncBatchNorm.convert_sync_batchnorm(teacher)
    return dist.wrap_ddp(student, device, sync), Shard(dist.rank(), dist.world_size())


def overrides_extra_loss(method: Any) -> bool:
    """Whether the method adds a loss (its outputs are then gathered for it)."""
    from harness.methods import SemiSupervisedMethod

    return type(method).extra_loss is not SemiSupervisedMethod.extra_loss
