"""Running a plan: plan from the spec's datasets, execute stages once each (reusing the store,
:mod:`harness.execute.local`), write one record per cell (:mod:`harness.records`) and the run's
report, calling the lifecycle hooks on the way."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.data.base import Dataset, LabeledArrays, dataset_root  # noqa: F401 - re-exported
from harness.data.open import Resources, ensure_prepared, load_arrays, open_dataset  # noqa: F401
from harness.engine.runtime import console, resolve_device
from harness.execute.local import LocalExecutor, run_provenance
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

    # --- execution ----------------------------------------------------------------------------
    def executor(self) -> LocalExecutor:
        """The in-process executor of this runner's plan (``plan()`` first)."""
        if self.resources is None:
            self.resources = Resources(self.rspec, self.registry, self.store)
        from harness.engine import distributed

        device = distributed.local_device(resolve_device(self.rspec.spec.finetune.device))
        distributed.init_from_env(device)  # under torchrun: one stage over its processes
        self.device = device
        self.provenance = run_provenance(self.registry, device)
        self.env = StageEnv(self.rspec, self.registry, self.resources)
        return LocalExecutor(self.env, self.store, device, self.provenance, self.quiet)

    def run_stage(self, stage: Stage) -> RunResult:
        """Compute one stage whose dependencies the store holds (``harness stage run``)."""
        result = RunResult(self.output_dir, [])
        self.executor().execute(stage, result)
        return result

    def run(self, plan: Plan, computed_elsewhere: Any = (), delegate: Any = None) -> RunResult:
        """Compute (or reuse) every stage in this process and write records and report;
        ``computed_elsewhere``: keys an executor's workers computed for this run; ``delegate``:
        see :class:`LocalExecutor` (a stage it computes in other processes)."""
        executor = self.executor()
        executor.elsewhere = set(computed_elsewhere)
        executor.delegate = delegate
        self.output_dir.mkdir(parents=True, exist_ok=True)
        (self.output_dir / "records").mkdir(exist_ok=True)
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

        result = RunResult(self.output_dir, [])
        timings: dict[str, dict[str, Any]] = {}
        for i, cell in enumerate(plan.cells, 1):
            console.log(f"[{i}/{len(plan.cells)}] {cell.cell_id}")
            for stage in cell.stages():
                if stage.key not in timings:
                    timings[stage.key] = executor.execute(stage, result)
            record = self._record(cell, timings)
            atomic_write_json(self.output_dir / "records" / f"{cell.cell_id}.json", record)
            result.records.append(record)
            self.hook.harness_cell_finished(cell=cell.coordinates, record=record)

        from harness.report.writer import write_report

        write_report(self.output_dir, result.records, run_info)
        self.hook.harness_run_finished(run=run_info, records=result.records)
        return result

    def _record(self, cell: Cell, timings: dict[str, dict[str, Any]]) -> dict[str, Any]:
        spec = self.rspec.spec
        metrics = read_metrics(self.store, cell.final)
        headline = headline_value(metrics, spec.metric.name, spec.metric.pq_variant)
        metric = {"name": spec.metric.name,
                  "variant": None if spec.metric.name == "dice" else spec.metric.pq_variant,
                  "value": headline}
        upstream = upstream_summaries(cell, timings, self.store, self.env)
        return build_record(self.rspec, cell, timings, metrics, metric, upstream, self.provenance,
                            cell_facts(cell, self.env))


def headline_value(metrics: dict[str, Any], name: str, variant: str) -> float | None:
    from harness.plugins import get_registry

    return get_registry().family_of_metric(name).headline(metrics, name, variant)
