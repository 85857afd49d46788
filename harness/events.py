"""The typed lifecycle events of a run, passed to observer plugins as ``event=``.

Each lifecycle hook (:mod:`harness.hookspecs`) receives its event beside the dict arguments it
has always had (``run=``, ``stage=``, ``metrics=``, ``cell=``, ``record=``...); pluggy passes an
implementation only the arguments it names, so one written against the dicts keeps working until
harness 0.2 (registering it warns, :data:`harness.hookspecs.DICT_ARGUMENTS_END`) and a new one
takes ``event`` alone::

    @hookimpl
    def harness_stage_finished(event):
        print(event.kind, event.label, "cached" if event.cached else f"{event.seconds:.0f} s")

Events are frozen dataclasses of plain values; ``to_dict()`` is JSON-serialisable (a logger can
``json.dumps`` it as is). Until the dicts go, the harness builds each call's event from them
(:class:`harness.plugins.Hooks`); then the callers pass ``event`` only and that relay goes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass(frozen=True)
class Event:
    """Base of the lifecycle events."""

    def to_dict(self) -> dict[str, Any]:
        """The event as plain JSON-serialisable values (nested dicts and lists are copies)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_mapping(cls, data: dict[str, Any]) -> Event:
        """The event from a hook's dict argument(s); keys that are no field are left out."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass(frozen=True)
class RunStarted(Event):
    """``harness run`` begins: the run folder is made and ``run.json`` written."""

    name: str  #: the spec's name
    spec: dict[str, Any]  #: the resolved spec (every setting, defaults filled in)
    overrides: list[str]  #: the ``--set`` overrides, as given
    output_dir: str  #: the run folder (records, report)
    store: str  #: the artifact store's root
    cells: int  #: number of cells (method x protocol x fraction x fold x seed)
    source: str = ""  #: the spec file
    rows: list[str] = field(default_factory=list)  #: the spec's rows, in its order
    provenance: dict[str, Any] = field(default_factory=dict)  #: versions, commit, device


@dataclass(frozen=True)
class StageStarted(Event):
    """A stage starts computing (in the driver, a pool worker, a cluster job or torchrun's rank
    0); not sent for a stage reused from the store."""

    kind: str  #: stage kind
    key: str  #: the stage key in the store
    label: str  #: human-readable label


@dataclass(frozen=True)
class StageFinished(Event):
    """A stage is done: computed now, or reused from the store (``cached``)."""

    kind: str  #: stage kind (encoder, pretrain, finetune, evaluate, ...)
    key: str  #: the stage key in the store
    label: str  #: human-readable label
    cached: bool  #: True when reused from the store rather than computed
    path: str  #: the stage's folder in the store
    seconds: float | None = None  #: its wall time (when it was computed)
    #: the stage kind's summary of its result (what the store's meta holds: losses, scores...)
    result: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class MetricsLogged(Event):
    """Training metrics of a running stage, at least once per epoch."""

    kind: str  #: stage kind
    key: str  #: stage key
    label: str  #: stage label
    step: int  #: global iteration
    metrics: dict[str, float] = field(default_factory=dict)  #: name -> value


@dataclass(frozen=True)
class CellFinished(Event):
    """One cell has its result record (written to ``records/<cell_id>.json``)."""

    method: str  #: the row
    protocol: str
    fraction: float
    fold: str
    seed: int
    record: dict[str, Any]  #: the result record
    cell_id: str = ""


@dataclass(frozen=True)
class RunFinished(Event):
    """Every cell is done and the report is written."""

    name: str  #: the spec's name
    output_dir: str  #: the run folder
    records: list[dict[str, Any]] = field(default_factory=list)  #: every record of the run


#: Lifecycle hook -> the event of a call, built from the call's (documented) dict arguments.
BUILDERS: dict[str, Callable[..., Event]] = {
    "harness_run_started": lambda run, **_: RunStarted.from_mapping(run),
    "harness_stage_started": lambda stage, **_: StageStarted.from_mapping(stage),
    "harness_stage_finished": lambda stage, **_: StageFinished.from_mapping(stage),
    "harness_metrics_logged": lambda stage, step, metrics, **_: MetricsLogged.from_mapping(
        {**stage, "step": step, "metrics": dict(metrics)}),
    "harness_cell_finished": lambda cell, record, **_: CellFinished.from_mapping(
        {**cell, "record": record, "cell_id": record.get("cell_id", "")}),
    "harness_run_finished": lambda run, records, **_: RunFinished(
        name=run.get("name", ""), output_dir=run.get("output_dir", ""), records=list(records)),
}
