"""Loggers: observer plugins that record a run in an experiment tracker (TensorBoard, MLflow,
or a third party's), registered through ``harness_register_loggers`` like every other plugin.

A run enables loggers by name: the spec's ``loggers:`` (a list of names, or a mapping name ->
the logger's own settings; part of no stage key) and ``harness run --logger NAME``
(repeatable; the logger's default settings unless the spec gives some). A logger sees the run's
lifecycle events (:mod:`harness.events`) through :class:`LoggerSession`, which is registered in
the plugin manager for the run and calls each logger inside a guard: a logger that raises (a
tracking server down, a full disk, a folder it cannot write) is reported in one warning and is
off for the rest of the run; the run, its records and its report never depend on it.

What is checked before any work (:meth:`LoggerSession.check`): names (exit 4 for a logger that
is not installed), settings (exit 2), and that the library a logger needs is importable (exit 4,
with the extra that installs it), so a run does not go for hours without the logger it asked
for.
"""

from __future__ import annotations

import importlib.util
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Iterable, Iterator

from pydantic import BaseModel, ConfigDict

from harness.console import console
from harness.errors import PluginError, SpecError
from harness.hookspecs import hookimpl

if TYPE_CHECKING:
    from harness.plugins import Registry


class LoggerConfig(BaseModel):
    """Base of every logger's settings; unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class Logger:
    """One tracker's view of a run. Every method gets the typed event of its hook; the default
    implementations do nothing. ``run_dir`` is the run folder (records, report)."""

    name: ClassVar[str]
    description: ClassVar[str] = ""
    version: ClassVar[str] = "1"
    Config: ClassVar[type[LoggerConfig]] = LoggerConfig
    #: importable modules the logger needs (checked before any work) and how to install them
    requires: ClassVar[tuple[str, ...]] = ()
    install_hint: ClassVar[str] = ""

    def __init__(self, config: LoggerConfig, run_dir: Path):
        self.config, self.run_dir = config, Path(run_dir)

    def run_started(self, event: Any) -> None: ...
    def stage_started(self, event: Any) -> None: ...
    def stage_finished(self, event: Any) -> None: ...
    def metrics_logged(self, event: Any) -> None: ...
    def cell_finished(self, event: Any) -> None: ...
    def run_finished(self, event: Any) -> None: ...

    def close(self, error: BaseException | None) -> None:
        """The run is over (``error``: what stopped it early, else None): flush, end open runs."""


# --- what a logger records: numbers only ------------------------------------------------------

def scalars(data: Any, prefix: str = "", depth: int = 4) -> dict[str, float]:
    """The finite numbers of a nested dict as ``{"a/b/c": value}`` (bools and strings left out;
    lists are not series here and are left out too)."""
    out: dict[str, float] = {}
    if isinstance(data, dict) and depth > 0:
        for key, value in data.items():
            out.update(scalars(value, f"{prefix}/{key}" if prefix else str(key), depth - 1))
    elif isinstance(data, (int, float)) and not isinstance(data, bool) and prefix:
        if math.isfinite(float(data)):
            out[prefix] = float(data)
    return out


def safe_tag(name: str) -> str:
    """A metric or folder name made of letters, digits and ``_ - . /`` (what MLflow accepts)."""
    return re.sub(r"[^A-Za-z0-9_./-]+", "_", name).strip("/") or "_"


def cell_tags(record: dict[str, Any]) -> dict[str, str]:
    """The cell's coordinates and the keys of its stages (``stage.<kind>``; repeated kinds, such
    as the cycles of a pretraining chain, are joined by commas)."""
    tags = {k: str(record.get(k, "")) for k in ("cell_id", "method", "protocol", "fraction",
                                                  "fold", "seed", "plugin", "dataset")}
    for stage in record.get("stages", []):
        name = f"stage.{stage['kind']}"
        tags[name] = f"{tags[name]},{stage['key']}" if name in tags else stage["key"]
    return tags


# --- enabling loggers and guarding their calls ------------------------------------------------

def enabled(spec_loggers: dict[str, Any] | None, names: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Logger name -> its settings: the spec's ``loggers:`` plus ``--logger`` names."""
    chosen = {name: dict(options or {}) for name, options in (spec_loggers or {}).items()}
    for name in names:
        chosen.setdefault(name, {})
    return chosen


def logger_problems(spec_loggers: dict[str, dict[str, Any] | None], registry: Registry,
                    source: str, lines: Any) -> list[str]:
    """Spec problems of its ``loggers:`` (``spec_loggers``): an unknown name (with a
    did-you-mean) or a bad setting."""
    from harness.errors import did_you_mean
    from harness.spec.problems import where

    problems = []
    for name, options in spec_loggers.items():
        at = where(source, lines, ("loggers", name))
        info = registry.loggers.get(name)
        if info is None:
            known = ", ".join(sorted(registry.loggers)) or "none"
            problems.append(f"{at}: loggers.{name}: unknown logger{did_you_mean(name, registry.loggers)}; "
                            f"installed loggers: {known}")
            continue
        try:
            registry.config("logger", name, options or {}, source=source, lines=lines,
                            prefix=("loggers", name))
        except SpecError as exc:
            problems.extend(exc.problems)
    return problems


HOOKS = {"harness_run_started": "run_started", "harness_stage_started": "stage_started",
         "harness_stage_finished": "stage_finished",
         "harness_metrics_logged": "metrics_logged", "harness_cell_finished": "cell_finished",
         "harness_run_finished": "run_finished"}


class LoggerSession:
    """The loggers of one run: checked at construction, registered as a plugin for the run
    (``with session: runner.run(plan, executor)``), each call guarded. Events of stages computed
in other processes reach it through the driver (:mod:`harness.execute.stage_events`)."""

    def __init__(self, registry: Registry, chosen: dict[str, dict[str, Any]], run_dir: Path):
        self.registry, self.run_dir = registry, Path(run_dir)
        self.configs = self.check(registry, chosen)
        self.loggers: list[Logger] = []
        self.failed: dict[str, str] = {}

    @staticmethod
    def check(registry: Registry, chosen: dict[str, dict[str, Any]]) -> dict[str, LoggerConfig]:
        """Each chosen logger's validated settings, by name."""
        configs = {}
        for name, options in chosen.items():
            info = registry.logger(name)  # PluginError (exit 4) naming the installed ones
            config = registry.config("logger", name, options, source="loggers", prefix=(name,))
            missing = [m for m in info.cls.requires if importlib.util.find_spec(m) is None]
            if missing:
                raise PluginError(f"logger '{name}' needs {', '.join(missing)}, which is not "
                                  f"installed: {info.cls.install_hint or 'pip install ' + missing[0]}")
            configs[name] = config
        return configs

    def __enter__(self) -> LoggerSession:
        for name, config in self.configs.items():
            try:
                self.loggers.append(self.registry.create("logger", name, config, run_dir=self.run_dir))
            except Exception as exc:  # noqa: BLE001 - a logger never stops the run
                self._warn(name, "starting", exc)
        if self.loggers:
            self.registry.pm.register(self, name="harness-loggers")
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.registry.pm.is_registered(self):
            self.registry.pm.unregister(self)
        for logger in self.active():
            self._guard(logger, "close", exc)

    def active(self) -> Iterator[Logger]:
        return (lg for lg in list(self.loggers) if lg.name not in self.failed)

    def _guard(self, logger: Logger, method: str, arg: Any) -> None:
        try:
            getattr(logger, method)(arg)
        except Exception as exc:  # noqa: BLE001 - a logger never stops the run
            self._warn(logger.name, method, exc)

    def _warn(self, name: str, when: str, exc: BaseException) -> None:
        message = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
        self.failed[name] = message
        console.log(f"warning: logger '{name}' failed ({when}: {message}); it records nothing "
                    f"more in this run; the run and its results are not affected",
                    markup=False)

    def _dispatch(self, hook: str, event: Any) -> None:
        for logger in self.active():
            self._guard(logger, HOOKS[hook], event)

    @hookimpl
    def harness_run_started(self, event):
        self._dispatch("harness_run_started", event)

    @hookimpl
    def harness_stage_started(self, event):
        self._dispatch("harness_stage_started", event)

    @hookimpl
    def harness_stage_finished(self, event):
        self._dispatch("harness_stage_finished", event)

    @hookimpl
    def harness_metrics_logged(self, event):
        self._dispatch("harness_metrics_logged", event)

    @hookimpl
    def harness_cell_finished(self, event):
        self._dispatch("harness_cell_finished", event)

    @hookimpl
    def harness_run_finished(self, event):
        self._dispatch("harness_run_finished", event)


def session_for(registry: Registry, spec_loggers: dict[str, dict[str, Any] | None],
                names: Iterable[str], run_dir: Path) -> LoggerSession:
    """The loggers a run enables (the spec's ``loggers:``, ``spec_loggers``, and ``--logger``
    names), checked now."""
    return LoggerSession(registry, enabled(spec_loggers, names), run_dir)
