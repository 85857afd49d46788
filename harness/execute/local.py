"""In-process execution of stages: reuse a stage the store holds, else run its kind in a
temporary folder and publish it atomically (the work folder keeps checkpoints for a resume),
calling the lifecycle hooks on the way. A stage is computed under a claim in the store
(:mod:`harness.claims`): a worker that finds another computing it waits and reuses it."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any, Callable

from harness.console import console
from harness.engine import distributed as dist
from harness.engine.context import StageContext
from harness.plan import Stage
from harness.provenance import provenance
from harness.stages.base import StageEnv


@dataclass
class Executed:
    computed: list[str] = field(default_factory=list)  # stage keys computed
    reused: list[str] = field(default_factory=list)  # stage keys found in the store


def run_provenance(registry: Any, device: Any) -> dict[str, Any]:
    """Provenance of what this process computes: versions, commit, device, plugins."""
    from harness.engine.runtime import describe_device

    plugins = {f"{c}:{n}": i.version for c, t in (("method", registry.methods),
                                                 ("dataset", registry.datasets))
               for n, i in t.items()}
    return provenance(describe_device(device), plugins)


def checkpoint_every_s(spec: Any) -> float:
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


class LocalExecutor:
    def __init__(self, env: StageEnv, store: Any, device: Any, provenance: dict[str, Any],
                 quiet: bool | None = None):
        self.env, self.store, self.device = env, store, device
        self.provenance, self.quiet = provenance, quiet
        self.hook = env.registry.hook
        #: Keys that other processes (an executor's workers or jobs) computed for this run: a
        #: record says computed, not reused, for them, as if this process had computed them.
        self.elsewhere: set[str] = set()
        #: ``delegate(stage)``: computes a stage elsewhere (in other processes) and says True,
        #: or False to leave it to this process (the local executor's ``gpus_per_stage``).
        self.delegate: Callable[[Stage], bool] | None = None

    def missing(self, stage: Stage) -> list[Stage]:
        """The stages upstream of ``stage`` that the store does not hold, dependencies first."""
        return [s for s in stage.upstream()[:-1] if not self.store.is_done(s.kind, s.key)]

    def run_kind(self, stage: Stage, ctx: StageContext) -> dict[str, Any]:
        kind = self.env.registry.stage_kind(stage.kind).cls()
        return kind.run(stage, ctx.inputs, ctx, self.env)

    def execute(self, stage: Stage, result: Any) -> dict[str, Any]:
        """Reuse or compute ``stage``; its key goes to ``result.reused`` or ``result.computed``.
        Returns ``{cached, seconds, result}`` (the kind's summary)."""
        stage_info = {"kind": stage.kind, "key": stage.key, "label": stage.label}
        path = self.store.stage_dir(stage.kind, stage.key)
        if dist.is_distributed() or not self.store.is_done(stage.kind, stage.key):
            if self.delegate is not None and self.delegate(stage):  # published it
                self.elsewhere.add(stage.key)
            else:
                # under DDP rank 0 claims and decides for every rank
                with dist.on_rank_zero(self.store.claim(stage.kind, stage.key, stage.label)) as claim:
                    if claim is not None:  # else another worker published it while we waited
                        return self._compute(stage, result, stage_info, path)
        cached = stage.key not in self.elsewhere  # a pool worker or cluster job computed it
        (result.reused if cached else result.computed).append(stage.key)
        meta = self.store.meta(stage.kind, stage.key)
        self.hook.harness_stage_finished(stage={**stage_info, "cached": cached, "path": str(path),
                                                "seconds": meta.get("seconds"),
                                                "result": meta.get("result", {})})
        return {"cached": cached, "seconds": meta.get("seconds"), "result": meta.get("result", {})}

    def _compute(self, stage: Stage, result: Any, stage_info: dict[str, Any], path: Any
                 ) -> dict[str, Any]:
        device, lead = self.device, dist.rank() == 0
        # under DDP every rank runs the stage; rank 0 alone writes its artifact and logs
        tmp = self.store.new_tmp(stage.kind, stage.key) if lead else Path(tempfile.mkdtemp())
        ctx = StageContext(
            out=tmp, work=self.store.work_dir(stage.kind, stage.key),
            inputs={name: self.store.stage_dir(dep.kind, dep.key) for name, dep in stage.deps.items()},
            device=device, label=stage.label, quiet=self.quiet if lead else True,
            checkpoint_every_s=checkpoint_every_s(self.env.spec),
            log_metrics=lambda step, metrics: lead and self.hook.harness_metrics_logged(
                stage=stage_info, step=step, metrics=metrics))
        started = time.time()
        try:
            stage_result = self.run_kind(stage, ctx) or {}
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
            result.computed.append(stage.key)
            return {"cached": False, "seconds": seconds, "result": stage_result}
        self.store.commit(stage.kind, stage.key, tmp, {
            "label": stage.label, "config": stage.config, "version": stage.version,
            "deps": {n: d.key for n, d in stage.deps.items()}, "result": stage_result,
            "seconds": seconds, "device": str(device),
            # the processes that computed it (torchrun's world): not part of its key
            "provenance": {**self.provenance, "world_size": dist.world_size()}})
        dist.barrier()
        result.computed.append(stage.key)
        console.log(f"  done {stage.kind} {stage.label} ({seconds:.1f} s)")
        self.hook.harness_stage_finished(stage={**stage_info, "cached": False, "path": str(path),
                                                "seconds": seconds, "result": stage_result})
        return {"cached": False, "seconds": seconds, "result": stage_result}
