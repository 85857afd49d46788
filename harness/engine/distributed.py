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

import os
import warnings
from contextlib import contextmanager
from typing import Any, Iterator

import torch
import torch.distributed as dist

__all__ = ["is_distributed", "world_size", "rank", "gather_sizes", "gather_with_grad",
           "init_from_env", "local_device", "barrier", "agree", "gather_objects", "mean_over_ranks",
           "on_rank_zero", "wrap_ddp", "TrainableDDP"]

TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


def leave(code: int = 0) -> None:
    """End this process now with ``code``, after flushing its output, without the interpreter's
    teardown: a rank whose work is done (its stage published) must not turn into a failure
    there. Under load, torch's teardown of a finished gloo rank sometimes aborts ("terminate
    called without an active exception", SIGABRT, after the process group was destroyed; 3 of
    108 two-process runs at load 9 here), and torchrun or mp.spawn would report the whole job as
    failed."""
    import sys

    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


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


# --- one stage over several processes (torchrun) ---------------------------------------------

def init_from_env(device: torch.device) -> bool:
    """Join the process group torchrun describes (``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/
    ``MASTER_ADDR``); NCCL on CUDA, gloo on CPU. False (and nothing done) outside torchrun or
    when already joined."""
    if is_distributed() or not all(k in os.environ for k in TORCHRUN_ENV):
        return False
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return True


def local_device(device: torch.device) -> torch.device:
    """This process's device: under torchrun, CUDA device ``LOCAL_RANK``."""
    if device.type == "cuda" and "LOCAL_RANK" in os.environ:
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return device


_control: Any = None


def _control_group() -> Any:
    """A gloo group for small host-side agreements (works next to an NCCL default group)."""
    global _control
    if _control is None:
        _control = dist.new_group(backend="gloo") if dist.get_backend() != "gloo" else dist.group.WORLD
    return _control


def barrier() -> None:
    if is_distributed():
        dist.barrier(group=_control_group())


def agree(*flags: bool) -> tuple[bool, ...]:
    """Each flag true on any rank, on every rank (one small all-reduce); identity when alone."""
    if not is_distributed():
        return tuple(bool(f) for f in flags)
    t = torch.tensor([int(bool(f)) for f in flags], dtype=torch.int32)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=_control_group())
    return tuple(bool(v) for v in t.tolist())


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (tensors, numbers, lists, dicts), in rank order."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj, group=_control_group())
    return out


def mean_over_ranks(value: torch.Tensor) -> torch.Tensor:
    """The mean of a (detached) scalar over the ranks; the value itself when alone."""
    if not is_distributed():
        return value
    value = value.detach().float().clone()
    dist.all_reduce(value)
    return value / world_size()


@contextmanager
def on_rank_zero(cm: Any) -> Iterator[Any]:
    """Enter the context manager ``cm`` on rank 0 only (a store claim); every rank receives
    rank 0's value, or True on other ranks when rank 0's is not None."""
    if not is_distributed():
        with cm as value:
            yield value
        return
    if rank() == 0:
        with cm as value:
            agree(value is not None)
            yield value
    else:
        (held,) = agree(False)
        yield True if held else None


def wrap_ddp(model: torch.nn.Module, device: torch.device, sync_batchnorm: bool) -> torch.nn.Module:
    """``model`` in DistributedDataParallel when distributed (else ``model`` itself). With
    ``sync_batchnorm`` on CUDA its BatchNorm layers normalise over the global batch
    (SyncBatchNorm, in place: the returned wrapper shares the parameters); on CPU (gloo)
    SyncBatchNorm does not exist, so statistics stay per process. Every trainable parameter
    must take part in each step's loss (``find_unused_parameters=False``: no extra graph walk)."""
    if not is_distributed():
        return model
    if sync_batchnorm and device.type == "cuda":
        converted = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        if converted is not model:  # the model itself is a BatchNorm: nothing to share
            raise ValueError("wrap_ddp: the model itself is a BatchNorm layer")
    return _ddp(model, device)


def _ddp(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids,
                                                     find_unused_parameters=False)


def _trainable(model: torch.nn.Module) -> frozenset[int]:
    return frozenset(id(p) for p in model.parameters() if p.requires_grad)


class TrainableDDP:
    """:func:`wrap_ddp` for a model whose trainable parameters change between epochs (a
    protocol that unfreezes its encoder). DDP registers for all-reduce the parameters that
    require grad when it is built and, without ``find_unused_parameters``, expects a gradient
    for each of them in every backward: a frozen parameter it registered stalls the reduction,
    one it did not register never has its gradient averaged once it trains. :meth:`follow`
    (called after the protocol set the epoch's trainable parameters) therefore wraps the model
    again whenever that set changed; the new wrapper broadcasts rank 0's parameters and buffers,
    equal on every rank by then. Calling it wraps, :meth:`no_sync` defers to the wrapper;
    ``net`` is the model itself when not distributed."""

    def __init__(self, model: torch.nn.Module, device: torch.device, sync_batchnorm: bool):
        self.model, self.device = model, device
        self.net = wrap_ddp(model, device, sync_batchnorm)
        self._wrapped = _trainable(model)

    @property
    def distributed(self) -> bool:
        return self.net is not self.model

    def follow(self) -> None:
        now = _trainable(self.model)
        if not self.distributed or now == self._wrapped:
            return
        self.net = None  # the old reducer's hooks go with it (they are idle between steps)
        self.net, self._wrapped = _ddp(self.model, self.device), now

    def no_sync(self):
        return self.net.no_sync()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.net(*args, **kwargs)
