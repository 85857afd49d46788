"""Process-group helpers shared by losses and loops.

Everything here degrades to the single-process case when :mod:`torch.distributed` is not
available or not initialised: :func:`world_size` is 1, :func:`rank` is 0 and
:func:`gather_with_grad` is the identity.

Gradient semantics of :func:`gather_with_grad`
----------------------------------------------
The gather is ``torch.distributed.nn.functional.all_gather``: its backward sums, over all
processes, the gradient that each process's loss sends to the gathered slice of this process
(reduce-scatter with SUM). If every process computes the *same* global loss ``L`` from the
gathered tensor, the gradient arriving at a process's local input is therefore
``world_size * dL/d(local slice)``; DDP's gradient *averaging* over processes then yields exactly
the gradient of ``L`` for the whole global batch, as on one device.
"""

from __future__ import annotations

import warnings

import torch
import torch.distributed as dist

__all__ = ["is_distributed", "world_size", "rank", "gather_sizes", "gather_with_grad"]


def is_distributed() -> bool:
    """True when a default process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def gather_sizes(n: int, device: torch.device | str = "cpu") -> list[int]:
    """Every process's value of ``n`` (e.g. its local batch size), in rank order."""
    if not is_distributed():
        return [int(n)]
    if dist.get_backend() == "nccl" and torch.cuda.is_available():
        device = torch.device("cuda", torch.cuda.current_device())
    local = torch.tensor([int(n)], dtype=torch.long, device=device)
    out = [torch.zeros_like(local) for _ in range(world_size())]
    dist.all_gather(out, local)
    return [int(t.item()) for t in out]


def gather_with_grad(tensor: torch.Tensor, sizes: list[int] | None = None) -> torch.Tensor:
    """Concatenate ``tensor`` from all processes along dim 0, in rank order.

    The local slice keeps its gradient (see the module docstring for what arrives in backward).
    The processes may hold different numbers of rows (the other dims must agree): sizes are
    exchanged first and the slices padded to the largest for the collective, then trimmed.
    ``sizes`` (every process's row count, from :func:`gather_sizes`) skips that exchange when
    the caller already has it. Tensors that do not require grad (e.g. labels) are gathered
    without autograd. Identity when not distributed.
    """
    if not is_distributed():
        return tensor
    ws = world_size()
    if sizes is None:
        sizes = gather_sizes(tensor.shape[0], tensor.device)
    max_n = max(sizes)
    padded = tensor
    if tensor.shape[0] < max_n:
        pad = tensor.new_zeros((max_n - tensor.shape[0], *tensor.shape[1:]))
        padded = torch.cat([tensor, pad], dim=0)
    padded = padded.contiguous()
    if tensor.requires_grad:
        from torch.distributed.nn.functional import all_gather

        with warnings.catch_warnings():  # deprecated in favour of a private API (torch 2.x)
            warnings.filterwarnings("ignore", message=".*all_gather is deprecated",
                                    category=FutureWarning)
            parts = list(all_gather(padded))
    else:
        parts = [torch.empty_like(padded) for _ in range(ws)]
        dist.all_gather(parts, padded)
    if any(s != max_n for s in sizes):
        parts = [p[:s] for p, s in zip(parts, sizes)]
    return torch.cat(parts, dim=0)
