"""The one training loop of every training stage: fine-tuning, the labeler, pretraining and the
semi-supervised stage (one loop, behaviour in hooks, as mmengine's runner).

The stage supplies the model parts, the optimiser and schedule, a ``step_fn(batch, info) ->
(loss, logs)`` that computes one batch's loss (its own forward pass under autocast), a source
of batches (:class:`EpochSource`: per-epoch shuffled loaders; :class:`IterationSource`: batch
``t`` is a function of the iteration) and :class:`Hook` objects. The loop owns everything
else: zero_grad/backward/grad scaling/optimizer step/per-iteration schedule, optional gradient
clipping and accumulation, the finiteness check (losses and logs stay on the device and are
read in one transfer every ``read_every`` batches, at period ends and before checkpoints, so a
step never waits for the device; the first non-finite loss is reported with its step), means
over each period (an epoch, or a
logging interval), progress, checkpoints and bit-identical resume.

**Checkpoints** (:class:`~harness.engine.runtime.Checkpoint`, one file, atomically overwritten)
are written at optimizer-step boundaries only, where the whole state is captured (parts, RNG,
position in the source, the period's partial sums): when ``checkpoint_every_s`` seconds of
training have passed since the last write, at the end of training, and when SIGTERM, SIGUSR1
(a scheduler's pre-emption warning) or SIGINT arrives; then the loop raises :class:`Preempted`
(a ``KeyboardInterrupt``: the CLI exits with 130 and says to rerun). The runner deletes the
work folder once the stage's artifact is committed. A resumed epoch re-seeds its loader with the
epoch's seed and skips the batches already trained on without loading them.
"""

from __future__ import annotations

import copy
import math
import signal
import threading
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

import torch

from harness.engine import metering
from harness.engine import distributed as dist
from harness.console import console, progress_bar
from harness.engine.context import StageContext
from harness.engine.runtime import Checkpoint, set_rng_state

_SIGNALS = ("SIGTERM", "SIGUSR1", "SIGINT")
_pending: list[int] = []  # signals received while a loop runs


def interrupt_requested() -> bool:
    """Whether a stop signal arrived; the loop checkpoints and stops at the next step."""
    return bool(_pending)


class Preempted(KeyboardInterrupt):
    """Raised at a step boundary after a stop signal, once the checkpoint is written."""


@dataclass
class StepInfo:
    """Where a batch falls: ``step`` is the index (from 0) of the optimizer step it contributes
    to, of ``total_steps``; ``batch_index`` counts batches (iterations) from 0."""

    step: int
    total_steps: int
    batch_index: int
    period: int


class Hook:
    """Loop callbacks; every method is optional."""

    def after_step(self, step: int, total_steps: int) -> None:
        """After optimizer step ``step`` (from 0) and the schedule's step."""

    def after_period(self, loop: "TrainLoop", period: int, means: dict[str, float]) -> None:
        """After period ``period`` (from 0: an epoch, or a logging interval) ended at batch
        ``loop.position`` (a count), with the period's means of the step logs (weighted by
        ``loop.weight_of``); a hook may append an entry to ``loop.history``."""


class EpochSource:
    """Epochs of a shuffled DataLoader built by :func:`~harness.engine.loader.epoch_loader`.
    Epoch ``e`` seeds the loader's permutation and its workers' batches with
    ``seed * 100_003 + e`` and torch with ``seed * 100_019 + e`` (a resumed epoch keeps the
    checkpoint's torch RNG state instead), then calls ``begin(e)``."""

    def __init__(self, loader: torch.utils.data.DataLoader, epochs: int, seed: int,
                 begin: Callable[[int], None] = lambda epoch: None):
        self.loader, self.epochs, self.seed, self.begin = loader, epochs, seed, begin
        self.period = max(1, len(loader))
        self.total = self.period * epochs

    def close(self) -> None:
        """Shut the loader's persistent workers down now (they ignore SIGTERM, so a program
        still holding them at exit would wait in multiprocessing's join)."""
        iterator, self.loader._iterator = self.loader._iterator, None
        if hasattr(iterator, "_shutdown_workers"):  # what its __del__ does, now
            iterator._shutdown_workers()

    def batches(self, start: int) -> Iterator[Any]:
        first, skip = divmod(start, self.period)
        sampler = self.loader.batch_sampler
        rank = sampler.rank if getattr(sampler, "world", 1) > 1 else 0  # own augmentation draws
        for epoch in range(first, self.epochs):
            self.loader.batch_sampler.set_epoch_seed(self.seed * 100_003 + epoch)
            if not skip:
                torch.manual_seed(self.seed * 100_019 + epoch + rank * 1_000_003)
            self.begin(epoch)
            self.loader.batch_sampler.skip, skip = skip, 0
            yield from self.loader


class IterationSource:
    """Iterations ``start..total-1`` of ``make_loader(start)`` (batch ``t`` depends on ``t``
    alone); periods of ``period`` iterations (the last one may be shorter)."""

    def __init__(self, make_loader: Callable[[int], Iterable[Any]], total: int, period: int):
        self.make_loader, self.total, self.period = make_loader, total, max(1, period)

    def batches(self, start: int) -> Iterator[Any]:
        return iter(self.make_loader(start))


def optimizer_steps(total: int, period: int, accumulation: int = 1) -> int:
    """Optimizer steps over ``total`` batches: one per ``accumulation`` batches, and one at the
    end of every period (an epoch's last, partial group still steps)."""
    full, rest = divmod(total, period)
    return full * math.ceil(period / accumulation) + math.ceil(rest / accumulation)


class MethodHook(Hook):
    """The method's ``after_step(model, step, total_steps)`` after every optimizer step."""

    def __init__(self, method: Any, model: torch.nn.Module):
        self.method, self.model = method, model

    def after_step(self, step: int, total_steps: int) -> None:
        self.method.after_step(self.model, step, total_steps)


class EpochLog(Hook):
    """Per-epoch history entry ``{epoch, loss, lr, ...means}`` and lifecycle metrics under
    ``prefix/`` (fine-tuning: ``train/loss``, ``train/lr``, ``epoch``)."""

    def __init__(self, ctx: StageContext, scheduler: Any, prefix: str, per_image: bool = False):
        self.ctx, self.scheduler, self.prefix, self.per_image = ctx, scheduler, prefix, per_image

    def after_period(self, loop: TrainLoop, period: int, means: dict[str, float]) -> None:
        lr = self.scheduler.get_last_lr()[0]
        entry = {"epoch": period + 1, "loss": means.get("loss", 0.0), "lr": lr,
                 **{k: v for k, v in means.items() if k != "loss"}}
        loop.history.append(entry)
        if self.per_image:  # fine-tuning's metric names
            metrics = {"train/loss": entry["loss"], "train/lr": lr, "epoch": period + 1}
        else:
            metrics = {f"{self.prefix}/{k}": v for k, v in entry.items()}
        self.ctx.log_metrics(loop.position, metrics)


@dataclass
class TrainLoop:
    """See the module docstring. ``models``: name -> module (the model; a teacher...),
    checkpointed with the optimizer, scheduler and scaler; ``weight_of(batch)`` weighs a
    batch's logs in the period means (default 1)."""

    label: str
    models: dict[str, torch.nn.Module]
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    step_fn: Callable[[Any, StepInfo], tuple[torch.Tensor, dict[str, float]]]
    source: Any
    checkpoint: Checkpoint
    checkpoint_every_s: float = 300.0
    hooks: list[Hook] = field(default_factory=list)
    weight_of: Callable[[Any], float] = lambda batch: 1
    grad_clip_norm: float | None = None
    accumulation: int = 1
    quiet: bool | None = None
    progress_fields: Callable[[int, int], dict[str, Any]] = lambda period, step: {}
    history: list[dict[str, Any]] = field(default_factory=list)
    start: int = 0
    position: int = 0
    #: losses and logs stay on the device and are read (one host sync) every ``read_every``
    #: batches, at period ends and at checkpoints
    read_every: int = 50
    #: the DistributedDataParallel wrapper the step function calls, if any (``no_sync`` while
    #: accumulating gradients)
    ddp: Any = None

    def __post_init__(self) -> None:
        self.parts = {**self.models, "optimizer": self.optimizer, "scheduler": self.scheduler,
                      "scaler": self.scaler}
        self.total_steps = optimizer_steps(self.source.total, self.source.period, self.accumulation)
        self._sums: dict[str, float] = {}
        self._count = 0.0
        self._last_write = 0.0
        self._unread: list[tuple[int, torch.Tensor, dict[str, Any], float]] = []
        self._last_loss = float("nan")

    # --- state ------------------------------------------------------------------------------
    def resume(self) -> int:
        """Load the checkpoint if there is one; the number of batches already trained on."""
        state = self.checkpoint.load(required=(*self.parts, "position", "history", "sums", "count"),
                                     apply=self._apply)
        if state is None:  # none, or one that does not apply (set aside: the stage starts over)
            return 0
        self.start = self.position = state["position"]
        self.history, self._sums, self._count = state["history"], state["sums"], state["count"]
        if isinstance(self.source, EpochSource):
            epoch, rest = divmod(self.position, self.source.period)
            where = f"epoch {epoch}" + (f" batch {rest}" if rest else "")
            console.log(f"{self.label}: resuming from {where} (batch {self.position}/{self.source.total})")
        else:
            console.log(f"{self.label}: resuming from iteration {self.position}/{self.source.total}")
        return self.position

    def _apply(self, state: dict[str, Any]) -> None:
        """Load the parts (and this rank's RNG state under DDP); all as they were on failure."""
        before = {name: copy.deepcopy(part.state_dict()) for name, part in self.parts.items()}
        try:
            for name, part in self.parts.items():
                part.load_state_dict(state[name])
            ranks = state.get("rng_ranks")
            if ranks is not None and len(ranks) == dist.world_size() > 1:
                set_rng_state(ranks[dist.rank()])  # every rank resumes its own random stream
        except Exception:
            for name, part in self.parts.items():
                part.load_state_dict(before[name])
            raise

    def save(self) -> None:
        """Write the checkpoint; under DDP (every rank calls it at the same step) rank 0 alone
        writes it, with every rank's RNG state, after a barrier."""
        self._read()
        extra = {}
        if dist.world_size() > 1:
            from harness.engine.runtime import rng_state

            extra["rng_ranks"] = dist.gather_objects(rng_state())
            dist.barrier()
        if dist.rank() == 0:
            self.checkpoint.save({**{k: v.state_dict() for k, v in self.parts.items()},
                                  "position": self.position, "epoch": self.position // self.source.period,
                                  "history": self.history, "sums": self._sums, "count": self._count,
                                  **extra})
        self._last_write = time.monotonic()

    # --- the loop ---------------------------------------------------------------------------
    def run(self) -> list[dict[str, Any]]:
        """Train from the checkpoint (if any) to the end; returns the history."""
        self.resume()
        step = optimizer_steps(self.position, self.source.period, self.accumulation)
        self._last_write = time.monotonic()
        meter = metering.meter(self.label, "train", self.source.total - self.position)
        try:
            self._train(step, meter)
        finally:
            getattr(self.source, "close", lambda: None)()
        dist.barrier()
        return self.history

    def _train(self, step: int, meter: Any) -> None:
        with progress_bar(self.label, self.source.total, self.quiet) as advance, _stop_signals():
            advance(self.position)
            for batch in self.source.batches(self.position):
                period, offset = divmod(self.position, self.source.period)
                after = self.position + 1
                ends_period = after % self.source.period == 0 or after == self.source.total
                boundary = ends_period or (offset + 1) % self.accumulation == 0
                info = StepInfo(step, self.total_steps, self.position, period)
                loss, logs = self._forward_backward(batch, info, sync=boundary)
                self.position += 1
                if boundary:
                    self._optimizer_step(step)
                    step += 1
                logs = {k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in logs.items()}
                self._unread.append((self.position - 1, loss.detach(), logs, self.weight_of(batch)))
                if ends_period or len(self._unread) >= self.read_every:
                    self._read()
                shown = {} if math.isnan(self._last_loss) else {"loss": self._last_loss}
                advance(1, **self.progress_fields(period, step), **shown)
                if ends_period:
                    self._end_period(period)
                if boundary:
                    self._maybe_checkpoint()
                if meter is not None and meter.tick() and boundary:
                    break  # a calibration run: timed enough steps (harness.engine.metering)
            if self.position > self.start or dist.world_size() > 1 or not self.checkpoint.exists():
                self.save()  # the end state: a crash before the commit does not retrain

    def _forward_backward(self, batch: Any, info: StepInfo,
                          sync: bool = True) -> tuple[torch.Tensor, dict[str, Any]]:
        """Forward and backward of one batch; under DDP with gradient accumulation, a batch that
        does not end its group (``sync`` false) keeps its gradients local (``no_sync``: one
        all-reduce per optimizer step, not per batch)."""
        local = not sync and self.accumulation > 1 and hasattr(self.ddp, "no_sync")
        with self.ddp.no_sync() if local else nullcontext():
            loss, logs = self.step_fn(batch, info)
            if self.accumulation == 1 or info.batch_index % self.source.period % self.accumulation == 0:
                self.optimizer.zero_grad(set_to_none=True)  # after the forward pass, as always
            share = self._share(info.batch_index)
            scaled = loss * share if share != 1 else loss
            self.scaler.scale(scaled if self.accumulation == 1 else scaled / self.accumulation).backward()
        if dist.world_size() > 1:  # the logged loss is the global batch's (local ones differ)
            loss = dist.mean_over_ranks(scaled)
        return loss, logs

    def _share(self, batch_index: int) -> float:
        """Under DDP with a sharded loader, this rank's weight for an unevenly split batch."""
        sampler = getattr(getattr(self.source, "loader", None), "batch_sampler", None)
        if getattr(sampler, "world", 1) == 1:
            return 1.0
        offset, n = batch_index % self.source.period, len(sampler.inner.sampler)
        size = sampler.inner.batch_size
        return sampler.share(size if (offset + 1) * size <= n else n - offset * size)

    def _read(self) -> None:
        """Bring the unread batches' losses and logs to the host in one transfer, check that
        every loss is finite (naming the first batch whose loss is not) and add them to the
        period's sums in batch order, in float64 as when they were read one by one."""
        if not self._unread:
            return
        batches, self._unread = self._unread, []
        tensors = [t for _, loss, logs, _ in batches
                   for t in (loss, *logs.values()) if isinstance(t, torch.Tensor)]
        # float64 holds every float32/bf16 value exactly: the sums equal per-step float(v)
        device = tensors[0].device if tensors else None
        host = iter(torch.stack([t.double().reshape(()).to(device) for t in tensors]).cpu().tolist()
                    if tensors else [])
        for position, loss, logs, weight in batches:
            value = next(host) if isinstance(loss, torch.Tensor) else float(loss)
            if not math.isfinite(value):
                raise FloatingPointError(f"{self.label}: loss is {value} at step {position + 1}")
            values = {k: next(host) if isinstance(v, torch.Tensor) else float(v)
                      for k, v in logs.items()}
            for k, v in {"loss": value, **values}.items():
                self._sums[k] = self._sums.get(k, 0.0) + v * weight
            self._count += weight
            self._last_loss = value

    def _optimizer_step(self, step: int) -> None:
        if self.grad_clip_norm is not None:
            self.scaler.unscale_(self.optimizer)
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            torch.nn.utils.clip_grad_norm_(params, self.grad_clip_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        for hook in self.hooks:
            hook.after_step(step, self.total_steps)

    def _end_period(self, period: int) -> None:
        means = {k: v / max(self._count, 1) for k, v in self._sums.items()}
        self._sums, self._count = {}, 0.0
        for hook in self.hooks:
            hook.after_period(self, period, means)

    def _maybe_checkpoint(self) -> None:
        due = self.position < self.source.total and time.monotonic() - self._last_write >= self.checkpoint_every_s
        if dist.world_size() > 1:  # every rank saves (a collective) at the same step
            stop, due = dist.agree(bool(_pending), due)
            if stop and not _pending:
                _pending.append(signal.SIGTERM)  # another rank was told to stop
        if _pending:
            self.save()
            name = signal.Signals(_pending[0]).name
            console.log(f"{self.label}: {name}: checkpoint written at batch {self.position}/"
                        f"{self.source.total}; rerun the same command to resume")
            raise Preempted(name)
        if due:
            self.save()


@contextmanager
def _stop_signals() -> Iterator[None]:
    """While training: SIGTERM/SIGUSR1/SIGINT set a flag (a second SIGINT interrupts at once);
    the previous handlers come back afterwards. Only the main thread can install handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _pending.clear()
    previous = {}

    def on_signal(signum: int, frame: Any) -> None:
        if signum == signal.SIGINT and _pending:
            raise KeyboardInterrupt
        _pending.append(signum)

    for name in _SIGNALS:
        if hasattr(signal, name):
            sig = getattr(signal, name)
            previous[sig] = signal.signal(sig, on_signal)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _pending.clear()
