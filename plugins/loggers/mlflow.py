"""MLflow logger: one parent MLflow run per harness run (tags: spec, source, overrides, run
folder; the resolved spec and, at the end, the report files as artifacts), with nested runs: one
per stage (tags: kind, key, label, cached; its training curves at their global step, its result
summary and wall time) and one per cell (tags: the cell's coordinates and the keys of its
stages; its metrics). Needs the ``mlflow`` extra (``mlflow-skinny`` with SQLAlchemy for a local
``sqlite:`` store).

Where it records: ``tracking_uri`` if set, else ``$MLFLOW_TRACKING_URI``, else a SQLite file in
the run folder (``RUN_DIR/mlflow.db``, artifacts beside it in ``RUN_DIR/mlflow-artifacts``);
``mlflow ui --backend-store-uri sqlite:///RUN_DIR/mlflow.db`` shows it. Unless the environment
says otherwise, an HTTP tracking server gets 2 retries and 20 s per request (MLflow's defaults
retry for minutes), so a server that is down costs seconds before the logger turns itself off.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from pydantic import Field

from harness.hookspecs import hookimpl
from harness.loggers import Logger, LoggerConfig, cell_tags, safe_tag, scalars

PARENT_TAG = "mlflow.parentRunId"  # MLflow's own tag for nested runs
REPORT_FILES = ("report.md", "report.html", "report.json", "report.csv")


class MLflowConfig(LoggerConfig):
    tracking_uri: str | None = Field(None, description="tracking store or server; default: "
                                     "$MLFLOW_TRACKING_URI, else sqlite:///RUN_DIR/mlflow.db")
    experiment: str | None = Field(None, description="experiment name; default: the spec name")


class MLflow(Logger):
    name = "mlflow"
    description = "MLflow tracking: a parent run per harness run, nested runs per stage and per cell"
    Config = MLflowConfig
    requires = ("mlflow", "sqlalchemy", "alembic")
    install_hint = "pip install 'pathbench-harness[mlflow]'"

    def __init__(self, config: MLflowConfig, run_dir: Path):
        super().__init__(config, run_dir)
        self.client: Any = None
        self.parent: str | None = None
        self.stages: dict[str, str] = {}  # stage key -> its open MLflow run

    # --- helpers ----------------------------------------------------------------------------
    def _log(self, run_id: str, values: dict[str, float], step: int = 0) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(safe_tag(k), v, now, step) for k, v in values.items()]
        for start in range(0, len(metrics), 1000):  # MLflow's limit per batch
            self.client.log_batch(run_id, metrics=metrics[start:start + 1000])

    def _child(self, name: str, tags: dict[str, str]) -> str:
        run = self.client.create_run(self.experiment_id, run_name=name,
                                     tags={PARENT_TAG: self.parent, **tags})
        return run.info.run_id

    def _stage_run(self, kind: str, key: str, label: str) -> str:
        if key not in self.stages:
            self.stages[key] = self._child(label, {"harness.stage.kind": kind,
                                                   "harness.stage.key": key,
                                                   "harness.stage.label": label})
        return self.stages[key]

    # --- lifecycle --------------------------------------------------------------------------
    def run_started(self, event: Any) -> None:
        from mlflow import MlflowClient

        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
        uri = self.config.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
        artifacts = None
        if not uri:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            uri = f"sqlite:///{(self.run_dir / 'mlflow.db').resolve()}"
            artifacts = (self.run_dir / "mlflow-artifacts").resolve().as_uri()
        self.client = MlflowClient(tracking_uri=uri)
        name = self.config.experiment or event.name
        experiment = self.client.get_experiment_by_name(name)
        self.experiment_id = (experiment.experiment_id if experiment is not None else
                              self.client.create_experiment(name, artifact_location=artifacts))
        run = self.client.create_run(self.experiment_id, run_name=event.name, tags={
            "harness.spec": event.name, "harness.source": event.source,
            "harness.output_dir": event.output_dir, "harness.store": event.store,
            "harness.overrides": " ".join(event.overrides), "harness.cells": str(event.cells)})
        self.parent = run.info.run_id
        self.client.log_dict(self.parent, event.spec, "spec.json")

    def metrics_logged(self, event: Any) -> None:
        self._log(self._stage_run(event.kind, event.key, event.label), scalars(event.metrics),
                  event.step)

    def stage_finished(self, event: Any) -> None:
        run_id = self._stage_run(event.kind, event.key, event.label)
        self.client.set_tag(run_id, "harness.stage.cached", str(event.cached).lower())
        values = {f"result/{k}": v for k, v in scalars(event.result).items()}
        if event.seconds is not None:
            values["seconds"] = float(event.seconds)
        self._log(run_id, values)
        self.client.set_terminated(run_id, "FINISHED")
        self.stages.pop(event.key, None)

    def cell_finished(self, event: Any) -> None:
        record = event.record
        run_id = self._child(event.cell_id or "cell",
                             {f"harness.{k}": v for k, v in cell_tags(record).items()})
        values = {f"metrics/{k}": v for k, v in scalars(record.get("metrics", {})).items()}
        headline = record.get("metric", {})
        if isinstance(headline.get("value"), (int, float)):
            values[f"headline/{headline.get('name')}"] = float(headline["value"])
        self._log(run_id, values)
        self.client.set_terminated(run_id, "FINISHED")

    def run_finished(self, event: Any) -> None:
        for name in REPORT_FILES:
            path = Path(event.output_dir) / name
            if path.is_file():
                self.client.log_artifact(self.parent, str(path), "report")
        self.client.set_terminated(self.parent, "FINISHED")
        self.parent = None

    def close(self, error: BaseException | None) -> None:
        """Runs still open when the run stopped early end as KILLED (interrupted) or FAILED."""
        if self.client is None:
            return
        status = "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED"
        for run_id in [*self.stages.values(), *([self.parent] if self.parent else [])]:
            self.client.set_terminated(run_id, status)
        self.stages.clear()
        self.parent = None


@hookimpl
def harness_register_loggers():
    return [MLflow]
