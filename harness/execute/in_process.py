"""One stage in this process: reuse it when the store holds it, else run its kind in a temporary
folder and publish it atomically (the work folder keeps checkpoints for a resume), writing its
lifecycle events on the way (:mod:`harness.execute.stage_events`). A stage is computed under a
claim in the store (:mod:`harness.claims`): a worker that finds another computing it waits and
reuses it."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.console import console
from harness.engine import distributed as dist
from harness.engine.context import StageContext
from harness.execute.base import StageOutcome
from harness.execute.stage_events import Dispatch, StageEvents
from harness.plan import Stage
from harness.environment import provenance
from harness.stages.base import StageEnv

if TYPE_CHECKING:
    from harness.execute.base import RunView
    from harness.plan import Plan
    from harness.plugins import Registry
    from harness.spec.models import Spec
    from harness.store import ArtifactStore


def run_provenance(registry: Registry, device: Any) -> dict[str, Any]:
    """Provenance of what this process computes: versions, commit, device, plugins."""
    from harness.engine.runtime import describe_device

    plugins = {f"{c}:{n}": i.version for c, t in (("method", registry.methods),
                                                 ("dataset", registry.datasets))
               for n, i in t.items()}
    return provenance(describe_device(device), plugins)


def checkpoint_every_s(spec: Spec) -> float:
    """Seconds between a stage's checkpoints: ``$HARNESS_CHECKPOINT_EVERY_S`` when set (one
    invocation's override, e.g. a test or a cluster job), else the spec's
    ``execution.checkpoint_every_s``, else 300 s. A runtime setting: in no stage key."""
    import os

    from harness.engine.context import DEFAULT_CHECKPOINT_EVERY_S

    env = os.environ.get("HARNESS_CHECKPOINT_EVERY_S")
    if env is not None:
        try:
            seconds = float(env)
        except ValueError:
            seconds = -1.0
        if not 0 <= seconds < float("inf"):
            from harness.errors import UsageError

            raise UsageError(f"$HARNESS_CHECKPOINT_EVERY_S={env!r}: not a number of seconds "
                             f">= 0; unset it or set e.g. 300 (or the spec's "
                             f"execution.checkpoint_every_s)")
        return seconds
    value = spec.execution.checkpoint_every_s
    return DEFAULT_CHECKPOINT_EVERY_S if value is None else float(value)


class InProcessStage:
    """Runs one stage in this process: reuses it when the store holds it, else computes its
    kind under a claim and publishes it. The one place a stage kind runs: the ``local``
    executor, ``harness stage run`` and a pool worker's child all call :meth:`execute`.
    Its events go to the stage's ``events.jsonl`` (:mod:`harness.execute.stage_events`) and,
    with ``dispatch`` (the driver's own process), straight to the driver."""

    def __init__(self, env: StageEnv, store: ArtifactStore, device: Any, provenance: dict[str, Any],
                 quiet: bool | None = None, dispatch: Dispatch | None = None):
        self.env, self.store, self.device = env, store, device
        self.provenance, self.quiet, self.dispatch = provenance, quiet, dispatch

    def execute(self, stage: Stage) -> StageOutcome:
        """Reuse or compute ``stage``: whether it was cached, its seconds and its summary."""
        if dist.is_distributed() or not self.store.is_done(stage.kind, stage.key):
            # under DDP rank 0 claims and decides for every rank
            with dist.on_rank_zero(self.store.claim(stage.kind, stage.key, stage.label)) as claim:
                if claim is not None:  # else another worker published it while we waited
                    return self._compute(stage)
        meta = self.store.meta(stage.kind, stage.key)
        return StageOutcome(True, meta.get("seconds"), meta.get("result", {}))

    def _compute(self, stage: Stage) -> StageOutcome:
        device, lead = self.device, dist.rank() == 0
        info = {"kind": stage.kind, "key": stage.key, "label": stage.label}
        work = self.store.work_dir(stage.kind, stage.key)
        events = StageEvents(work, self.dispatch)
        emit = events.emit if lead else (lambda hook, **kwargs: None)  # rank 0 speaks for all
        # under DDP every rank runs the stage; rank 0 alone writes its artifact and logs
        tmp = self.store.new_tmp(stage.kind, stage.key) if lead else Path(tempfile.mkdtemp())
        ctx = StageContext(
            out=tmp, work=work,
            inputs={name: self.store.stage_dir(dep.kind, dep.key) for name, dep in stage.deps.items()},
            device=device, label=stage.label, quiet=self.quiet if lead else True,
            checkpoint_every_s=checkpoint_every_s(self.env.spec),
            log_metrics=lambda step, metrics: emit("harness_metrics_logged", stage=info,
                                                   step=step, metrics=metrics))
        emit("harness_stage_started", stage=info)
        started = time.time()
        try:
            kind = self.env.registry.create("stage kind", stage.kind)
            stage_result = kind.run(stage, ctx.inputs, ctx, self.env) or {}
            dist.barrier()
        except BaseException as exc:
            self.store.discard(tmp)  # the work folder (checkpoints) stays for a resume
            if isinstance(exc, FloatingPointError):  # a non-finite loss: one line, exit 4
                from harness.divergence import loss_not_finite

                raise loss_not_finite(stage, exc, self.env.registry) from exc
            raise
        seconds = time.time() - started
        if not lead:
            self.store.discard(tmp)
            dist.barrier()  # rank 0 has published it
            return StageOutcome(False, seconds, stage_result)
        path = self.store.stage_dir(stage.kind, stage.key)
        finished = events.write("harness_stage_finished", stage={
            **info, "cached": False, "path": str(path), "seconds": seconds, "result": stage_result})
        events.publish(tmp)
        self.store.commit(stage.kind, stage.key, tmp, {
            "label": stage.label, "config": stage.config, "version": stage.version,
            "deps": {n: d.key for n, d in stage.deps.items()}, "result": stage_result,
            "seconds": seconds, "device": str(device),
            # the processes that computed it (torchrun's world): not part of its key
            "provenance": {**self.provenance, "world_size": dist.world_size()}})
        dist.barrier()
        console.log(f"  done {stage.kind} {stage.label} ({seconds:.1f} s)")
        events.send(finished)  # once it is in the store
        return StageOutcome(False, seconds, stage_result)


def in_process(runner: RunView, dispatch: Dispatch | None = None) -> InProcessStage:
    """The :class:`InProcessStage` of ``runner``'s spec, on the spec's device (under torchrun:
    this rank's, its process group joined); ``dispatch``: see :class:`InProcessStage`."""
    from harness.data.open import Resources
    from harness.engine.runtime import resolve_device

    if runner.resources is None:
        runner.resources = Resources(runner.rspec, runner.registry, runner.store)
    device = dist.local_device(resolve_device(runner.rspec.spec.finetune.device))
    dist.init_from_env(device)  # under torchrun: one stage over its processes
    env = StageEnv(runner.rspec, runner.registry, runner.resources)
    return InProcessStage(env, runner.store, device, run_provenance(runner.registry, device),
                          runner.quiet, dispatch)


# --- one stage by its key: `harness stage run` and a pool worker's child ----------------------

def find_stage(plan: Plan, key: str, spec: str) -> Stage:
    """The one stage of ``plan`` that ``key`` (a key, a prefix, or ``KIND/PREFIX``) names."""
    from harness.errors import UsageError

    found = plan.find(key) if key else []
    if len(found) == 1:
        return found[0]
    if not found:
        raise UsageError(f"KEY {key!r}: no stage of {spec}'s plan ({len(plan.stages())} stages) has "
                         f"a key starting with it; list them with `harness run {spec} --dry-run`")
    names = ", ".join(f"{s.kind}/{s.key[:12]}" for s in found[:4])
    raise UsageError(f"KEY {key!r}: {len(found)} stages match ({names}"
                     f"{', ...' if len(found) > 4 else ''}); give more of the key")


def stage_to_compute(runner: RunView, plan: Plan, key: str, spec: str, again: str = "") -> Stage | None:
    """The stage ``key`` names, its upstream stages in the store (else a data error, exit 3,
    with ``again``: how to compute them); None, said on stdout, when the store holds it (not
    under torchrun, where rank 0 decides for every rank)."""
    import os

    from harness.cli.common import out
    from harness.errors import DataError

    stage, store = find_stage(plan, key, spec), runner.store
    if store.is_done(stage.kind, stage.key) and "LOCAL_RANK" not in os.environ:
        out.print(f"{stage.kind}/{stage.key} ({stage.label}): already done "
                  f"({store.stage_dir(stage.kind, stage.key)})", markup=False)
        return None
    missing = [s for s in stage.upstream()[:-1] if not store.is_done(s.kind, s.key)]
    if missing:
        hint = f"; compute them in this order with `{again}` (or all with `harness run`)" if again else ""
        raise DataError(f"{stage.kind}/{stage.key} ({stage.label}): {len(missing)} upstream "
                        f"stage(s) not in the store: "
                        f"{' '.join(f'{s.kind}/{s.key}' for s in missing)}{hint}")
    return stage


def compute_stage(runner: RunView, stage: Stage) -> StageOutcome:
    """Compute (or reuse) ``stage`` in this process, its events to its ``events.jsonl``; rank 0
    says where it is."""
    from harness.cli.common import out

    outcome = in_process(runner).execute(stage)
    if dist.rank() == 0:
        out.print(f"{stage.kind}/{stage.key} ({stage.label}): done "
                  f"({runner.store.stage_dir(stage.kind, stage.key)})", markup=False)
    return outcome
