"""Typed lifecycle events and misspelled hook implementations.

Every lifecycle call carries its event (a documented dataclass, JSON-serialisable) beside the
dict arguments that implementations written against the old API take (deprecated: registering
one warns, naming the argument and the release that drops it); a hook implementation that
matches no hook makes its plugin BROKEN instead of being silently ignored."""

from __future__ import annotations

import json
import re

import pytest

from harness.events import CellFinished, MetricsLogged, RunFinished, RunStarted, StageFinished
from harness.hookspecs import hookimpl
from harness.plugins import build_registry

RUN = {"name": "demo", "spec": {"name": "demo"}, "source": "specs/demo.yaml", "overrides": [],
       "output_dir": "reports/demo", "store": "/tmp/store", "cells": 2, "rows": ["scratch"],
       "provenance": {"harness": "0.1.0"}}
STAGE = {"kind": "finetune", "key": "abc", "label": "finetune scratch"}
CELL = {"method": "scratch", "protocol": "full", "fraction": 1.0, "fold": "fold1", "seed": 0}
RECORD = {"cell_id": "scratch__full__1.0__fold1__0", "metric": {"name": "mpq", "value": 0.5}}


class OldStyle:
    """An observer written against the dict arguments (deprecated until harness 0.2)."""

    def __init__(self):
        self.calls = []

    @hookimpl
    def harness_run_started(self, run):
        self.calls.append(("run_started", run["name"]))

    @hookimpl
    def harness_metrics_logged(self, stage, step, metrics):
        self.calls.append(("metrics", stage["label"], step, metrics["loss"]))


class NewStyle:
    """An observer that takes the typed events only."""

    def __init__(self):
        self.events = []

    @hookimpl
    def harness_run_started(self, event):
        self.events.append(event)

    @hookimpl
    def harness_stage_finished(self, event):
        self.events.append(event)

    @hookimpl
    def harness_metrics_logged(self, event):
        self.events.append(event)

    @hookimpl
    def harness_cell_finished(self, event):
        self.events.append(event)

    @hookimpl
    def harness_run_finished(self, event):
        self.events.append(event)


def test_old_and_new_observers_get_their_arguments():
    old, new = OldStyle(), NewStyle()
    with pytest.warns(DeprecationWarning) as caught:
        registry = build_registry(extra_plugins=[old, new])
    retired = [re.search(r"the `(\w+)` argument .* goes in harness 0\.2; take `event`",
                         str(w.message)) for w in caught if w.category is DeprecationWarning]
    assert sorted(m.group(1) for m in retired if m) == ["metrics", "run", "stage", "step"]
    assert not [b for b in registry.broken if b.distribution == "local"]
    hook = registry.hook
    hook.harness_run_started(run=RUN)
    hook.harness_stage_finished(stage={**STAGE, "cached": True, "path": "/s/abc", "seconds": 1.5})
    hook.harness_metrics_logged(stage=STAGE, step=7, metrics={"loss": 0.25})
    hook.harness_cell_finished(cell=CELL, record=RECORD)
    hook.harness_run_finished(run=RUN, records=[RECORD])
    assert old.calls == [("run_started", "demo"), ("metrics", "finetune scratch", 7, 0.25)]
    assert [type(e) for e in new.events] == [RunStarted, StageFinished, MetricsLogged,
                                             CellFinished, RunFinished]
    started, stage, metrics, cell, finished = new.events
    assert started.name == "demo" and started.cells == 2 and started.rows == ["scratch"]
    assert stage.cached and stage.seconds == 1.5 and stage.path == "/s/abc"
    assert metrics.step == 7 and metrics.metrics == {"loss": 0.25} and metrics.kind == "finetune"
    assert (cell.method, cell.fold, cell.seed, cell.cell_id) == \
        ("scratch", "fold1", 0, RECORD["cell_id"])
    assert finished.records == [RECORD] and finished.output_dir == "reports/demo"
    for event in new.events:  # what a logger plugin does with them
        assert json.loads(json.dumps(event.to_dict())) == event.to_dict()


class Misspelled:
    """A plugin whose lifecycle hook is misspelled (pluggy alone would never call it)."""

    __name__ = "misspelled_logger"

    @hookimpl
    def harness_run_startd(self, run):
        raise AssertionError("never called")

    @hookimpl
    def harness_register_methods(self):
        return []


def test_a_misspelled_hook_makes_its_plugin_broken():
    plugin = Misspelled()
    registry = build_registry(extra_plugins=[plugin])
    broken = [b for b in registry.broken if b.entry_point == "misspelled_logger"]
    assert len(broken) == 1
    assert broken[0].distribution == "local"
    assert broken[0].error == ("hook implementation 'harness_run_startd' matches no hook of the "
                               "harness (did you mean 'harness_run_started'?); see "
                               "harness/hookspecs.py")
    assert not registry.pm.is_registered(plugin)  # isolated: none of its hooks is used
    assert {"scratch", "synthetic"} <= set(registry.methods) | set(registry.datasets)
    registry.hook.harness_run_started(run=RUN)  # the others still work
