"""TensorBoard logger: one log folder per run (default ``RUN_DIR/tensorboard``) with a subfolder
per stage (``KIND/LABEL-KEY``: its training curves at their global step, its result summary)
and per cell (``cells/CELL_ID``: the cell's metrics, its coordinates and stage keys as text);
``run`` holds the resolved spec and, at the end, the report. Needs the ``tensorboard`` extra
(``torch.utils.tensorboard`` writes the event files)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import Field

from harness.hookspecs import hookimpl
from harness.loggers import Logger, LoggerConfig, cell_tags, safe_tag, scalars


class TensorBoardConfig(LoggerConfig):
    log_dir: str | None = Field(None, description="event-file folder of the run; default: "
                                "RUN_DIR/tensorboard")


class TensorBoard(Logger):
    name = "tensorboard"
    description = "TensorBoard event files: a folder per run, a subfolder per stage and per cell"
    Config = TensorBoardConfig
    requires = ("tensorboard",)
    install_hint = "pip install 'pathbench-harness[tensorboard]'"

    def __init__(self, config: TensorBoardConfig, run_dir: Path):
        super().__init__(config, run_dir)
        self.root = Path(config.log_dir) if config.log_dir else self.run_dir / "tensorboard"
        self.writers: dict[str, Any] = {}

    def _writer(self, sub: str):
        if sub not in self.writers:
            from torch.utils.tensorboard import SummaryWriter

            self.writers[sub] = SummaryWriter(log_dir=str(self.root / sub))
        return self.writers[sub]

    def _done(self, sub: str) -> None:
        writer = self.writers.pop(sub, None)
        if writer is not None:
            writer.close()

    @staticmethod
    def stage_folder(kind: str, label: str, key: str) -> str:
        return f"{safe_tag(kind)}/{safe_tag(label.replace(' ', '_'))}-{key[:8]}"

    def run_started(self, event: Any) -> None:
        writer = self._writer("run")
        writer.add_text("spec", "```\n" + json.dumps(event.spec, indent=1, sort_keys=True) + "\n```")
        writer.flush()

    def metrics_logged(self, event: Any) -> None:
        writer = self._writer(self.stage_folder(event.kind, event.label, event.key))
        for tag, value in scalars(event.metrics).items():
            writer.add_scalar(safe_tag(tag), value, event.step)

    def stage_finished(self, event: Any) -> None:
        sub = self.stage_folder(event.kind, event.label, event.key)
        writer = self._writer(sub)
        for tag, value in scalars(event.result).items():
            writer.add_scalar(f"result/{safe_tag(tag)}", value, 0)
        if event.seconds is not None:
            writer.add_scalar("seconds", float(event.seconds), 0)
        writer.add_text("stage", f"{event.kind} `{event.key}` {event.label}"
                        + (" (reused from the store)" if event.cached else ""))
        self._done(sub)

    def cell_finished(self, event: Any) -> None:
        sub = f"cells/{safe_tag(event.cell_id or 'cell')}"
        writer = self._writer(sub)
        record = event.record
        headline = record.get("metric", {})
        if isinstance(headline.get("value"), (int, float)):
            writer.add_scalar(f"headline/{safe_tag(str(headline.get('name')))}", headline["value"], 0)
        for tag, value in scalars(record.get("metrics", {})).items():
            writer.add_scalar(f"metrics/{safe_tag(tag)}", value, 0)
        writer.add_text("cell", "\n".join(f"    {k}: {v}" for k, v in cell_tags(record).items()))
        self._done(sub)

    def run_finished(self, event: Any) -> None:
        writer = self._writer("run")
        report = Path(event.output_dir) / "report.md"
        if report.is_file():
            writer.add_text("report", report.read_text())
        writer.flush()

    def close(self, error: BaseException | None) -> None:
        for sub in list(self.writers):
            self._done(sub)


@hookimpl
def harness_register_loggers():
    return [TensorBoard]
