"""The driver of a run: plan from the spec's datasets, have an executor compute the stages the
store lacks (:mod:`harness.execute`), then write one record per cell from the store
(:mod:`harness.records`) and the run's report, calling the lifecycle hooks on the way."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.data.base import Dataset, LabeledArrays
from harness.data.open import Resources
from harness.engine.runtime import resolve_device
from harness.execute.base import Executor, StageOutcome
from harness.plan import Cell, Plan, Stage
from harness.planner import build_plan
from harness.plugins import Registry
from harness.preflight import check_inputs
from harness.records import build_record, cell_facts, read_metrics, upstream_summaries
from harness.spec import ResolvedSpec
from harness.stages.base import StageEnv
from harness.store import ArtifactStore, atomic_write_json


@dataclass
class RunResult:
    output_dir: Path
    records: list[dict[str, Any]]
    computed: list[str] = field(default_factory=list)  # stage keys computed in this run
    reused: list[str] = field(default_factory=list)  # stage keys found in the store


class Runner:
    def __init__(self, rspec: ResolvedSpec, registry: Registry, store: ArtifactStore,
                 output_dir: Path, quiet: bool | None = None):
        self.rspec = rspec
        self.registry = registry
        self.store = store
        self.output_dir = output_dir
        self.quiet = quiet
        self.hook = registry.hook
        self.resources: Resources | None = None

    # --- planning -----------------------------------------------------------------------------
    def plan(self, prepare: bool = True) -> tuple[Plan, Dataset, LabeledArrays]:
        # every missing weights file and dataset at once, before any work (exit 3)
        check_inputs(self.rspec, self.registry, self.store, prepare=prepare)
        self.resources = Resources(self.rspec, self.registry, self.store, prepare=prepare)
        plan = build_plan(self.rspec, self.registry, self.resources)
        return plan, self.resources.dataset, self.resources.arrays

    def describe(self, plan: Plan) -> list[dict[str, Any]]:
        rows = []
        for stage in plan.stages():
            rows.append({"kind": stage.kind, "label": stage.label, "key": stage.key,
                         "done": self.store.is_done(stage.kind, stage.key),
                         "checkpoint": self.store.has_checkpoint(stage.kind, stage.key)})
        return rows

    # --- the driver ----------------------------------------------------------------------------
    def run(self, plan: Plan, executor: Executor | None = None) -> RunResult:
        """Compute the plan's stages with ``executor`` (default: ``local``, this process) and
        write one record per cell (read from the store) as soon as its stages are finished, then
        the report, calling the lifecycle hooks: every stage's finished event once (``cached``
        for one the store held)."""
        from harness.execute.stage_events import EventForwarder

        executor = executor or self.registry.create("executor", "local")
        run_info = self._start(plan)
        cells = _CellRecords(self, plan)
        events = EventForwarder(self.hook, self.store, on_finished=cells.stage_finished)
        stages = plan.stages()
        todo = [s for s in stages if not self.store.is_done(s.kind, s.key)]
        outcomes = {s.key: StageOutcome(True) for s in stages}
        pending = {s.key for s in todo}
        for stage in stages:
            if stage.key not in pending:
                self._finished(stage, True, events)
        outcomes.update(executor.run(self, todo, events))
        for stage in todo:  # reused (another worker published it first), or its event was lost
            self._finished(stage, outcomes[stage.key].cached, events)
        result = RunResult(self.output_dir, cells.all_records())
        for stage in stages:
            (result.reused if outcomes[stage.key].cached else result.computed).append(stage.key)

        from harness.report.writer import write_report

        write_report(self.output_dir, result.records, run_info, registry=self.registry)
        self.hook.harness_run_finished(run=run_info, records=result.records)
        return result

    def _start(self, plan: Plan) -> dict[str, Any]:
        """The run folder, ``run.json`` and the run-started event."""
        from harness.engine import distributed
        from harness.execute.in_process import run_provenance

        self.output_dir.mkdir(parents=True, exist_ok=True)
        (self.output_dir / "records").mkdir(exist_ok=True)
        device = distributed.local_device(resolve_device(self.rspec.spec.finetune.device))
        self.provenance = run_provenance(self.registry, device)
        run_info = {"name": self.rspec.name, "spec": self.rspec.resolved(),
                    "source": self.rspec.source, "overrides": self.rspec.overrides,
                    "output_dir": str(self.output_dir), "store": str(self.store.root),
                    "cells": len(plan.cells),
                    # the spec's row order (the resolved spec's mapping is key-sorted), so a
                    # report rebuilt from the records lists rows as the run did
                    "rows": list(dict.fromkeys(c.method for c in plan.cells)),
                    "provenance": self.provenance}
        atomic_write_json(self.output_dir / "run.json", run_info)
        self.hook.harness_run_started(run=run_info)
        return run_info

    def _finished(self, stage: Stage, cached: bool, events: Any) -> None:
        """The stage's finished event, unless its own process's already reached the hooks."""
        if stage.key in events.finished:
            return
        meta = self.store.meta(stage.kind, stage.key)
        events.dispatch("harness_stage_finished", {"stage": {
            "kind": stage.kind, "key": stage.key, "label": stage.label, "cached": cached,
            "path": str(self.store.stage_dir(stage.kind, stage.key)),
            "seconds": meta.get("seconds"), "result": meta.get("result", {})}})

    def _timing(self, stage: Stage, cached: bool) -> dict[str, Any]:
        meta = self.store.meta(stage.kind, stage.key)
        return {"cached": cached, "seconds": meta.get("seconds"), "result": meta.get("result", {})}

    def _record(self, cell: Cell, timings: dict[str, dict[str, Any]]) -> dict[str, Any]:
        spec = self.rspec.spec
        metrics = read_metrics(self.store, cell.final)
        env = StageEnv(self.rspec, self.registry, self.resources)
        own = env.protocol(cell.protocol).headline_metric
        if own is not None:  # a protocol that scores itself (e.g. a probe): its own metric
            metric = {"name": own[0], "variant": own[1], "value": headline_value(self.registry, metrics, *own),
                      "protocol_metric": True}
        else:
            headline = headline_value(self.registry, metrics, spec.metric.name, spec.metric.pq_variant)
            metric = {"name": spec.metric.name,
                      "variant": None if spec.metric.name == "dice" else spec.metric.pq_variant,
                      "value": headline}
        upstream = upstream_summaries(cell, timings, self.store, env)
        return build_record(self.rspec, cell, timings, metrics, metric, upstream, self.provenance,
                            cell_facts(cell, env))


class _CellRecords:
    """Writes a cell's record (and fires its finished event) once the finished events of all its
    stages have reached the hooks, so a run that stops part-way leaves the records of the cells
    it finished."""

    def __init__(self, runner: Runner, plan: Plan):
        self.runner, self.cells = runner, plan.cells
        self.cached: dict[str, bool] = {}  # finished stages: whether the store already held them
        self.records: dict[str, dict[str, Any]] = {}
        # each cell's stage keys, walked once (not on every finished event)
        self.waiting = {cell.cell_id: {s.key for s in cell.stages()} for cell in plan.cells}

    def stage_finished(self, stage: dict[str, Any]) -> None:
        self.cached[stage["key"]] = bool(stage.get("cached"))
        for cell in self.cells:
            keys = self.waiting.get(cell.cell_id)
            if keys is not None:
                keys.discard(stage["key"])
                if not keys:
                    del self.waiting[cell.cell_id]
                    self._write(cell)

    def _write(self, cell: Cell) -> None:
        runner = self.runner
        timings = {s.key: runner._timing(s, self.cached[s.key]) for s in cell.stages()}
        record = runner._record(cell, timings)
        atomic_write_json(runner.output_dir / "records" / f"{cell.cell_id}.json", record)
        self.records[cell.cell_id] = record
        runner.hook.harness_cell_finished(cell=cell.coordinates, record=record)

    def all_records(self) -> list[dict[str, Any]]:
        """Every cell's record in the plan's order (a cell not written yet is written now)."""
        for cell in self.cells:
            if cell.cell_id not in self.records:
                for s in cell.stages():
                    self.cached.setdefault(s.key, True)
                self._write(cell)
        return [self.records[c.cell_id] for c in self.cells]


def headline_value(registry: Registry, metrics: dict[str, Any], name: str,
                   variant: str) -> float | None:
    return registry.family_of_metric(name).headline(metrics, name, variant)
