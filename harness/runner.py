"""Running a plan: prepare data, execute stages once each (reusing the store), write one
record per cell and the run's report, calling the lifecycle hooks on the way."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.data.base import Dataset, LabeledArrays, dataset_root
from harness.engine.context import StageContext
from harness.engine.runtime import console, describe_device, resolve_device
from harness.errors import DataError
from harness.plan import Cell, Plan, Stage, build_plan
from harness.plugins import Registry
from harness.provenance import provenance
from harness.spec import ResolvedSpec
from harness.store import ArtifactStore, atomic_write_json

from harness.report.schema import RECORD_SCHEMA  # noqa: E402 - one definition of the record schema


def open_dataset(rspec: ResolvedSpec, registry: Registry, store: ArtifactStore,
                 prepare: bool = True) -> Dataset:
    info = registry.dataset(rspec.spec.dataset.name)
    return _open(info.cls, rspec.dataset_config, store, prepare)


def _open(cls: type[Dataset], config: Any, store: ArtifactStore, prepare: bool) -> Dataset:
    """A dataset in the store, generated on first use if it can be; else a DataError with the
    command that prepares it."""
    return ensure_prepared(cls(config, root=dataset_root(cls, config, store)), prepare)


def ensure_prepared(dataset: Dataset, generate: bool = True, announce: bool = True) -> Dataset:
    """``dataset``, generated now if it is missing and can be (with ``generate``; logged with
    ``announce``); a DataError with the command that prepares it if it cannot."""
    if not dataset.is_prepared():
        if dataset.auto_prepare and generate:
            if announce:
                console.log(f"generating dataset '{dataset.name}' into {dataset.root}")
            dataset.prepare(None)
        elif not dataset.auto_prepare:
            hint = f" ({dataset.source_hint})" if dataset.source_hint else ""
            raise DataError(f"dataset '{dataset.name}' is not prepared (looked in {dataset.root}); "
                            f"run `{dataset.prepare_command()}`{hint}")
    return dataset


def _refuse_tampered(dataset: Dataset) -> None:
    """A DataError (exit 3) when a prepared cache no longer matches its manifest, as
    `harness data verify` would find (checksums only of files changed since they matched)."""
    from harness.data.cache import cache_problems_at_run

    problems = cache_problems_at_run(dataset.root)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise DataError(f"dataset '{dataset.name}' in {dataset.root} does not match its manifest: "
                        f"{problems[0]}{more}; prepare it again: `{dataset.prepare_command()} "
                        f"--force`")


def load_arrays(dataset: Dataset) -> LabeledArrays:
    _refuse_tampered(dataset)
    try:
        return dataset.load()
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"dataset '{dataset.name}' in {dataset.root} cannot be read "
                        f"({type(exc).__name__}: {exc}); run `harness data verify {dataset.name}` "
                        f"or prepare it again") from None


class Resources:
    """The datasets a plan needs, each opened once; unlabeled images only when a stage that
    needs them actually runs (a dry run never touches them)."""

    def __init__(self, rspec: ResolvedSpec, registry: Registry, store: ArtifactStore, prepare: bool = True):
        self.rspec, self.registry, self.store, self.prepare = rspec, registry, store, prepare
        self.dataset = open_dataset(rspec, registry, store, prepare=prepare)
        self.arrays = load_arrays(self.dataset)
        self._labeled: dict[str, tuple[Dataset, LabeledArrays]] = {}
        self._unlabeled: Dataset | None = None

    def labeled(self, name: str | None) -> tuple[Dataset, LabeledArrays]:
        """A labeled dataset by plugin name (default options); None = the spec's own."""
        if name is None or name == self.dataset.name:
            return self.dataset, self.arrays
        if name not in self._labeled:
            info = self.registry.dataset(name)
            ds = _open(info.cls, None, self.store, self.prepare)
            self._labeled[name] = (ds, load_arrays(ds))
        return self._labeled[name]

    def unlabeled_dataset(self) -> Dataset:
        if self._unlabeled is None:
            ref = self.rspec.spec.unlabeled
            if ref is None:
                self._unlabeled = self.dataset
            else:
                info = self.registry.dataset(ref.name)
                self._unlabeled = _open(info.cls, self.rspec.unlabeled_config, self.store, self.prepare)
        return self._unlabeled

    def unlabeled_images(self):
        ds = self.unlabeled_dataset()
        if ds is not self.dataset:
            _refuse_tampered(ds)
        try:
            return ds.unlabeled_images()
        except (OSError, ValueError) as exc:
            raise DataError(f"unlabeled images of dataset '{ds.name}' in {ds.root} cannot be read "
                            f"({type(exc).__name__}: {exc})") from None


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

    # --- planning -----------------------------------------------------------------------------
    def plan(self, prepare: bool = True) -> tuple[Plan, Dataset, LabeledArrays]:
        for name, config in self.rspec.method_configs.items():
            self.registry.method(self.rspec.spec.plugin_of(name)).cls(config).preflight(self.rspec.spec)
        resources = Resources(self.rspec, self.registry, self.store, prepare=prepare)
        return build_plan(self.rspec, self.registry, resources), resources.dataset, resources.arrays

    def describe(self, plan: Plan) -> list[dict[str, Any]]:
        rows = []
        for stage in plan.stages():
            rows.append({"kind": stage.kind, "label": stage.label, "key": stage.key,
                         "done": self.store.is_done(stage.kind, stage.key),
                         "checkpoint": self.store.has_checkpoint(stage.kind, stage.key)})
        return rows

    # --- execution ----------------------------------------------------------------------------
    def run(self, plan: Plan) -> RunResult:
        device = resolve_device(self.rspec.spec.finetune.device)
        self.device = device
        plugins = {f"{c}:{n}": i.version for c, t in (("method", self.registry.methods),
                                                     ("dataset", self.registry.datasets))
                   for n, i in t.items()}
        self.provenance = provenance(describe_device(device), plugins)
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
                    timings[stage.key] = self._execute(stage, device, result)
            record = self._record(cell, timings)
            atomic_write_json(self.output_dir / "records" / f"{cell.cell_id}.json", record)
            result.records.append(record)
            self.hook.harness_cell_finished(cell=cell.coordinates, record=record)

        from harness.report.tables import write_report

        write_report(self.output_dir, result.records, run_info)
        self.hook.harness_run_finished(run=run_info, records=result.records)
        return result

    def _execute(self, stage: Stage, device: Any, result: RunResult) -> dict[str, Any]:
        stage_info = {"kind": stage.kind, "key": stage.key, "label": stage.label}
        path = self.store.stage_dir(stage.kind, stage.key)
        if self.store.is_done(stage.kind, stage.key):
            result.reused.append(stage.key)
            meta = self.store.meta(stage.kind, stage.key)
            self.hook.harness_stage_finished(stage={**stage_info, "cached": True, "path": str(path),
                                                    "seconds": meta.get("seconds")})
            return {"cached": True, "seconds": meta.get("seconds"), "result": meta.get("result", {})}

        tmp = self.store.new_tmp(stage.kind, stage.key)
        ctx = StageContext(
            out=tmp, work=self.store.work_dir(stage.kind, stage.key),
            inputs={name: self.store.stage_dir(dep.kind, dep.key) for name, dep in stage.deps.items()},
            device=device, label=stage.label, quiet=self.quiet,
            log_metrics=lambda step, metrics: self.hook.harness_metrics_logged(
                stage=stage_info, step=step, metrics=metrics))
        started = time.time()
        try:
            stage_result = stage.run(ctx) or {}
        except BaseException:
            self.store.discard(tmp)  # the work folder (checkpoints) stays for a resume
            raise
        seconds = time.time() - started
        self.store.commit(stage.kind, stage.key, tmp, {
            "label": stage.label, "config": stage.config, "version": stage.version,
            "deps": {n: d.key for n, d in stage.deps.items()}, "result": stage_result,
            "seconds": seconds, "device": str(device), "provenance": self.provenance})
        result.computed.append(stage.key)
        console.log(f"  done {stage.kind} {stage.label} ({seconds:.1f} s)")
        self.hook.harness_stage_finished(stage={**stage_info, "cached": False, "path": str(path),
                                                "seconds": seconds})
        return {"cached": False, "seconds": seconds, "result": stage_result}

    def _upstream(self, cell: Cell, timings: dict[str, dict[str, Any]]) -> dict[str, Any]:
        """Summaries of the stages before fine-tuning (pretraining losses, the labeler's score,
        pseudo-label class fractions), keyed by stage kind."""
        spec = self.rspec.spec
        out: dict[str, Any] = {}
        final = {cell.final.key, cell.final.deps["model"].key}
        for stage in cell.stages():
            if stage.key in final:
                continue
            entry = dict(timings[stage.key]["result"] or {})
            if stage.kind == "labeler_eval":
                metrics = json.loads((self.store.stage_dir(stage.kind, stage.key) / "metrics.json").read_text())
                entry = {"metrics": metrics}
                if "instance" in metrics:
                    entry["value"] = metrics[spec.metric.pq_variant]["mpq"]
            out.setdefault(stage.kind, entry)
        return out

    def _record(self, cell: Cell, timings: dict[str, dict[str, Any]]) -> dict[str, Any]:
        spec = self.rspec.spec
        ev = cell.final
        ft = ev.deps["model"]
        metrics = json.loads((self.store.stage_dir(ev.kind, ev.key) / "metrics.json").read_text())
        headline = headline_value(metrics, spec.metric.name, spec.metric.pq_variant)
        return {
            "schema": RECORD_SCHEMA,
            "run": spec.name,
            "cell_id": cell.cell_id,
            **cell.coordinates,
            "plugin": spec.plugin_of(cell.method.split("@cycle")[0]),
            "dataset": spec.dataset.name,
            "reference": spec.reference,
            "metric": {"name": spec.metric.name,
                       "variant": None if spec.metric.name == "dice" else spec.metric.pq_variant,
                       "value": headline},
            "metrics": metrics,
            "split": {"train_ids": ft.info["train_ids"], "test_ids": ev.info["test_ids"]},
            "train": timings[ft.key]["result"],
            "upstream": self._upstream(cell, timings),
            "stages": [{"kind": s.kind, "key": s.key, "label": s.label,
                        "cached": timings[s.key]["cached"], "seconds": timings[s.key]["seconds"]}
                       for s in cell.stages()],
            "overrides": self.rspec.overrides,
            "provenance": {**self.provenance, "seed": cell.seed},
            "created_at": time.time(),
        }


def headline_value(metrics: dict[str, Any], name: str, variant: str) -> float | None:
    from harness.plugins import get_registry

    return get_registry().family_of_metric(name).headline(metrics, name, variant)
