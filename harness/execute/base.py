"""The executor contract and how a run picks its executor.

An executor is a class with a ``name``, a ``description``, a pydantic ``Config`` (its settings,
read from the spec's ``execution:`` section beside ``executor: NAME``) and
``run(runner, stages, events)``, returned by a ``harness_register_executors`` hook. Where a
stage runs changes nothing it computes, so ``execution:`` is part of no stage key and of no
record.

An executor only computes: ``run`` gets the stages the store does not hold (dependencies
first), puts each in the store and returns one :class:`StageOutcome` per stage. The driver
(:meth:`harness.runner.Runner.run`) plans, calls it, then writes records (read from the store)
and the report. Executors that spread stages over processes or machines walk the stages' graph
(:mod:`harness.execute.graph`) and compute each ready stage with ``harness stage run SPEC KEY``
against the shared store; the stage's process writes its events to its work folder, and the
executor has the driver's ``events`` (:class:`harness.execute.stage_events.EventForwarder`)
``watch`` a stage when it starts, ``poll`` while it waits and call ``done`` when it ends, so
loggers get them as they arrive.

Settings common to every executor live in :class:`ExecutorConfig`, which each executor's
``Config`` derives from: ``gpus_per_stage`` (``harness run --nproc N``) runs each training stage
(a stage kind with ``distributed = True``) as ``harness stage run --nproc N``: N processes on
one node under torchrun, one per GPU, or gloo processes on the CPU; other stages run in one.
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from pydantic import BaseModel, ConfigDict, Field

from harness.errors import PluginError, SpecError

if TYPE_CHECKING:
    from harness.data.open import Resources
    from harness.execute.stage_events import EventForwarder
    from harness.plan import Stage
    from harness.plugins import Registry
    from harness.spec.models import ResolvedSpec
    from harness.spec.models import Spec
    from harness.store import ArtifactStore


class RunView(Protocol):
    """What an executor reads of the run it computes for (:class:`harness.runner.Runner`,
    which this module cannot import: the runner imports the executor contract): the resolved
    spec, the registry, the store, the output folder and, once planned, the opened datasets."""

    rspec: ResolvedSpec
    registry: Registry
    store: ArtifactStore
    output_dir: Path
    quiet: bool | None
    resources: Resources | None


class ExecutorConfig(BaseModel):
    """Settings every executor has (kept when ``--executor`` picks another than the spec's)."""

    model_config = ConfigDict(extra="forbid")
    gpus_per_stage: int = Field(1, ge=1, le=256, description="processes that train each training "
                                "stage together (DDP under torchrun, on one node): its GPUs, or "
                                "gloo processes on the CPU; stages that only predict run in one "
                                "(`harness run --nproc N`)")


@dataclass
class StageOutcome:
    """What computing a stage came to: reused (``cached``: the store held it, or another worker
    published it first) or computed; its seconds and its kind's summary."""

    cached: bool
    seconds: float | None = None
    result: dict[str, Any] = field(default_factory=dict)


def outcomes_from_store(store: ArtifactStore, stages: list[Stage], computed: Any
                        ) -> dict[str, StageOutcome]:
    """The outcome of ``stages`` that the store holds: computed for the keys in ``computed`` (by
    this run's workers or jobs), cached for the others; seconds and summary from its meta."""
    computed, found = set(computed), {}
    for stage in stages:
        meta = store.meta(stage.kind, stage.key)
        found[stage.key] = StageOutcome(stage.key not in computed, meta.get("seconds"),
                                        meta.get("result", {}))
    return found


class Executor:
    name: ClassVar[str]
    description: ClassVar[str] = ""
    Config: ClassVar[type[BaseModel]] = ExecutorConfig

    def __init__(self, config: BaseModel):
        self.config = config

    def run(self, runner: RunView, stages: list[Stage], events: EventForwarder
            ) -> dict[str, StageOutcome]:
        """Put every one of ``stages`` (dependencies first) in the store; stage key -> its
        outcome. ``events`` forwards the events of stages computed in other processes."""
        raise NotImplementedError

    def slots(self, runner: RunView) -> list[str]:
        """Where stages run side by side (for ``--dry-run``): one name per slot. Also called
        before any work, to check settings against this machine (its GPUs)."""
        return ["this process"]

    @property
    def nproc(self) -> int:
        """``gpus_per_stage`` (1 for a Config that does not derive from ExecutorConfig)."""
        return int(getattr(self.config, "gpus_per_stage", 1))

    def processes(self, runner: RunView, stage: Stage) -> int:
        """Processes that compute ``stage``: ``gpus_per_stage`` for a training stage, else 1."""
        return stage_processes(runner, stage, self.nproc)

    def where(self, runner: RunView, stage: Stage, slot: str) -> str:
        """The dry run's ``where`` of ``stage`` placed on ``slot``: with its processes."""
        n = self.processes(runner, stage)
        return slot if n == 1 else f"{slot}, {n} processes"


def stage_processes(runner: RunView, stage: Stage, nproc: int) -> int:
    """``nproc`` for a stage whose kind trains with the shared loop (``distributed``), else 1."""
    if nproc <= 1:
        return 1
    kind = runner.registry.stage_kind(stage.kind).cls
    return nproc if getattr(kind, "distributed", False) else 1


def executor_config(spec: Spec, registry: Registry, name: str | None, source: str = "",
                    lines: dict | None = None, nproc: int | None = None
                    ) -> tuple[str, BaseModel]:
    """The executor's name and its validated settings: ``name`` (``--executor``) or the spec's
    ``execution.executor``; the section's other keys are that executor's settings. Where the
    section names an executor and ``--executor`` another, its settings are dropped (they belong
    to the spec's one) except the common ones (:class:`ExecutorConfig`'s); where it names none,
    they are the chosen executor's. ``nproc`` (``--nproc``) replaces ``gpus_per_stage``."""
    section = spec.execution
    chosen = name or section.executor
    info = registry.executors.get(chosen)
    if info is None:
        raise PluginError(registry.missing_message(chosen, "executor"))
    named = "executor" in section.model_fields_set
    config_cls = info.cls.Config
    settings = section.options if chosen == section.executor or not named else {
        k: v for k, v in section.options.items()
        if k in ExecutorConfig.model_fields and k in config_cls.model_fields}
    if nproc is not None:
        if "gpus_per_stage" not in config_cls.model_fields:
            raise SpecError(f"--nproc: executor {chosen!r} has no gpus_per_stage setting (its "
                            f"Config does not derive from harness.execute.base.ExecutorConfig)")
        settings = {**settings, "gpus_per_stage": nproc}
    return chosen, registry.config("executor", chosen, settings, source=source, lines=lines,
                                   prefix=("execution",))


def execution_problems(spec: Spec, registry: Registry, source: str, lines: dict) -> list[str]:
    """Spec-load check of the ``execution:`` section (unknown executor, bad settings); settings
    without ``executor:`` are checked when ``--executor`` has chosen one."""
    if "executor" not in spec.execution.model_fields_set:
        return []
    try:
        executor_config(spec, registry, None, source, lines)
    except SpecError as exc:
        return exc.problems
    except PluginError as exc:
        return [f"{source}: execution.executor: {exc}"]
    return []


def stage_command(runner: RunView, stage: Stage, absolute: bool = False, nproc: int = 1) -> list[str]:
    """``harness stage run SPEC KEY --store S --quiet [--set ...] [--nproc N]`` for one stage,
    with this interpreter (so a worker runs the very installation the driver runs)."""
    spec = Path(runner.rspec.source)
    if absolute:
        spec = spec.resolve()
    store = Path(runner.store.root).resolve() if absolute else Path(runner.store.root)
    cmd = [sys.executable, "-m", "harness.cli", "stage", "run", str(spec),
           f"{stage.kind}/{stage.key}", "--store", str(store), "--quiet"]
    for override in runner.rspec.overrides:
        cmd += ["--set", override]
    if nproc > 1:
        cmd += ["--nproc", str(nproc)]
    return cmd


def shown(cmd: list[str]) -> str:
    return " ".join(shlex.quote(c) for c in cmd)
