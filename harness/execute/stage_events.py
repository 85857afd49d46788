"""A stage's lifecycle events as JSON lines, so that they cross process boundaries.

The process that computes a stage (the driver itself under ``local``, a pool worker's child, a
SLURM job, rank 0 of a torchrun group) appends each event of the stage (started, metrics
logged, finished) to ``events.jsonl`` in the stage's work folder; the file moves into the
stage's folder with its result when the stage is published (:meth:`StageEvents.publish`), so
nothing written is lost when the work folder goes. The driver reads what is new in the file
while the stage runs (:class:`EventForwarder`) and calls the same lifecycle hooks with the same
arguments, so observer plugins (loggers) see one stream whatever computed the stage.

The model is pytest-xdist's report serialisation: plain JSON on the wire, rebuilt on the other
side; a line names one of :data:`FORWARDED` hooks and holds its keyword arguments (dicts,
numbers, strings); nothing read executes code, and an unreadable line is skipped.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from harness.plan import Stage
    from harness.store import ArtifactStore

EVENTS_FILE = "events.jsonl"
#: The hooks a stage's process writes (and the driver forwards).
FORWARDED = ("harness_stage_started", "harness_metrics_logged", "harness_stage_finished")

Dispatch = Callable[[str, dict[str, Any]], None]


class StageEvents:
    """The computing side: appends a stage's events to its work folder's ``events.jsonl``; with
    ``dispatch`` (the driver's own process) also hands each to the driver at once."""

    def __init__(self, work: Path, dispatch: Dispatch | None = None):
        self.path, self.dispatch = Path(work) / EVENTS_FILE, dispatch

    def emit(self, hook: str, **kwargs: Any) -> None:
        self.send(self.write(hook, **kwargs))

    def write(self, hook: str, **kwargs: Any) -> dict[str, Any]:
        """Append the event to the file; the event as the driver reads it back (plain JSON)."""
        from harness.store import json_safe

        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"hook": hook, **json_safe(kwargs)})
        with open(self.path, "a") as fh:  # one write per line: a reader sees whole lines
            fh.write(line + "\n")
        return json.loads(line)

    def send(self, event: dict[str, Any]) -> None:
        """Hand a written event to the driver (in the driver's own process)."""
        if self.dispatch is not None:
            event = dict(event)
            self.dispatch(event.pop("hook"), event)

    def publish(self, out: Path) -> None:
        """Move the file into the stage's output folder (before it is committed)."""
        if self.path.exists():
            os.replace(self.path, Path(out) / EVENTS_FILE)


def _read_lines(path: Path, offset: int) -> tuple[list[dict[str, Any]], int]:
    """The whole JSON lines of ``path`` from byte ``offset``, and the offset after them."""
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            data = fh.read()
    except OSError:
        return [], offset
    end = data.rfind(b"\n") + 1
    events = []
    for raw in data[:end].splitlines():
        try:
            event = json.loads(raw)
        except ValueError:
            continue
        if isinstance(event, dict) and event.get("hook") in FORWARDED:
            events.append(event)
    return events, offset + end


class EventForwarder:
    """The driver's side: forwards the events of the stages it watches to the plugins' hooks as
    they arrive, and remembers which stages' finished event it has passed on."""

    def __init__(self, hook: Any, store: ArtifactStore,
                 on_finished: Callable[[dict[str, Any]], None] | None = None):
        self.hook, self.store, self.on_finished = hook, store, on_finished
        self.finished: set[str] = set()  # keys whose finished event reached the hooks
        self._watched: dict[str, tuple[Stage, int]] = {}  # key -> (stage, offset read to)
        self._held: dict[str, dict[str, Any]] = {}  # finished events of stages not yet ended

    def dispatch(self, hook: str, kwargs: dict[str, Any]) -> None:
        if hook not in FORWARDED:
            return
        if hook == "harness_stage_finished":
            key = kwargs.get("stage", {}).get("key")
            if key in self.finished:
                return
            self.finished.add(key)
        getattr(self.hook, hook)(**kwargs)
        if hook == "harness_stage_finished" and self.on_finished is not None:
            self.on_finished(kwargs["stage"])  # e.g. the driver writes the cells it completes

    def _work_file(self, stage: Stage) -> Path:
        return self.store.work_dir(stage.kind, stage.key) / EVENTS_FILE

    def watch(self, stage: Stage) -> None:
        """Follow ``stage``'s events from now on (what an earlier attempt wrote is skipped)."""
        path = self._work_file(stage)
        self._watched[stage.key] = (stage, path.stat().st_size if path.exists() else 0)

    def poll(self) -> None:
        """Forward what is new for every watched stage."""
        for key, (stage, offset) in list(self._watched.items()):
            self._forward(stage, self._work_file(stage), offset)

    def done(self, stage: Stage) -> None:
        """The stage ended: forward the rest (from its published folder once it is in the
        store, where the file has moved) and stop following it. Its finished event goes last,
        and only when the store holds the stage (a stage that failed to publish has none)."""
        entry = self._watched.pop(stage.key, None)
        if entry is None:
            return
        offset = self._forward(stage, self._work_file(stage), entry[1])
        published = self.store.stage_dir(stage.kind, stage.key) / EVENTS_FILE
        if self.store.is_done(stage.kind, stage.key):
            self._forward(stage, published, offset)
            held = self._held.pop(stage.key, None)
            if held is not None:
                self.dispatch("harness_stage_finished", held)
        self._held.pop(stage.key, None)

    def _forward(self, stage: Stage, path: Path, offset: int) -> int:
        events, offset = _read_lines(path, offset)
        if stage.key in self._watched:
            self._watched[stage.key] = (stage, offset)
        for event in events:
            hook = event.pop("hook")
            if hook == "harness_stage_finished":  # written just before the stage is published
                self._held[stage.key] = event
            else:
                self.dispatch(hook, event)
        return offset
