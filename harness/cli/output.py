"""Output of ``harness list``, ``validate --json`` and ``run --dry-run --json`` that works in a
terminal, a CI log and a pipe.

* ``harness list`` in a terminal wide enough for it is a table; otherwise (stdout a pipe or a
  file, or a terminal too narrow for the table) it is plain aligned columns, one line per
  plugin, nothing wrapped or cut (a rich table squeezed to a CI log's width cut descriptions to
  a few characters per line).
* ``--json`` prints one JSON document on stdout (shapes below, documented in the README);
  the exit code is the same as without it.

Shapes (keys are stable; new keys may be added):

``list``: ``{"plugins": [{"name", "type" ("method"|"dataset"|"protocol"|"metric-family"|
"stage-kind"|"executor"|"logger"), "kind" ("-" where none), "distribution",
"version", "entry_point", "description"}], "broken": [{"entry_point", "distribution",
"error"}], "conflicts": [str]}``

``validate``: ``{"ok": bool, "specs": [{"spec", "ok", "cells" (int, when ok), "exit_code",
"problems": [str]}]}``

``run --dry-run``: ``{"spec", "name", "cells": [{"cell", "stages": [key]}], "stages":
[{"kind", "key", "label", "deps": {role: key}, "status" ("stored"|"to-compute"),
"checkpoint" (bool: a to-compute stage resumes from one)}], "counts": {"cells", "stages",
"stored", "to_compute"}}`` (stages in dependency order).
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

import typer

from harness.cli.common import out
from harness.spec.problems import printable

if TYPE_CHECKING:
    from harness.plan import Plan
    from harness.plugins import Registry
    from harness.runner import Runner

#: columns of ``harness list``; the last one (description) is never cut
LIST_COLUMNS = ("name", "type", "kind", "distribution", "version", "description")


def write_json(doc: Any) -> None:
    sys.stdout.write(json.dumps(doc, indent=2, sort_keys=False) + "\n")
    sys.stdout.flush()


# --- harness list --------------------------------------------------------------------------------

#: ``harness list WHAT``: the registry table and the ``type`` of its rows, in listing order
#: (every extension point: a plugin of any of them is listed with its distribution)
EXTENSION_POINTS = {
    "methods": ("methods", "method"), "datasets": ("datasets", "dataset"),
    "protocols": ("protocols", "protocol"), "metrics": ("metric_families", "metric-family"),
    "stages": ("stage_kinds", "stage-kind"), "executors": ("executors", "executor"),
    "loggers": ("loggers", "logger")}


def plugin_rows(registry: Registry, what: str) -> list[dict[str, str]]:
    points = EXTENSION_POINTS.values() if what == "all" else [EXTENSION_POINTS[what]]
    return [{"name": name, "type": category,
             # a method's or dataset's kind, a metric family's metrics; "-" where there is none
             "kind": info.kind if info.kind != info.category else "-",
             "distribution": info.distribution, "version": info.dist_version,
             "entry_point": info.entry_point,
             "description": " ".join(str(getattr(info.cls, "description", "") or "").split())}
            for table, category in points
            for name, info in sorted(getattr(registry, table).items())]


def list_plugins(registry: Registry, what: str, as_json: bool) -> None:
    """Print the plugins; exit 4 when any plugin is broken or two share a name."""
    rows = plugin_rows(registry, what)
    broken = [{"entry_point": b.entry_point, "distribution": b.distribution, "error": b.error}
              for b in registry.broken]
    if as_json:
        write_json({"plugins": rows, "broken": broken, "conflicts": list(registry.duplicates)})
    else:
        _print_rows(rows)
        for b in registry.broken:
            out.print(printable(f"BROKEN {b.entry_point} (from {b.distribution}): {b.error}"),
                      markup=False)
        for dup in registry.duplicates:
            out.print(printable(f"CONFLICT {dup}"), markup=False)
    if registry.broken or registry.duplicates:
        raise typer.Exit(4)


def _print_rows(rows: list[dict[str, str]]) -> None:
    cells = [[printable(r[c]) for c in LIST_COLUMNS] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(LIST_COLUMNS)]
    # the table needs its fixed columns plus room for a readable description
    table_width = sum(widths[:-1]) + 3 * len(LIST_COLUMNS) + 1 + 30
    if out.is_terminal and out.width >= table_width:
        from rich.table import Table

        table = Table()
        for col in LIST_COLUMNS:
            table.add_column(col, ratio=1 if col == "description" else None,
                             no_wrap=col != "description")
        for row in cells:
            table.add_row(*row)
        out.print(table)
        return
    for row in [list(LIST_COLUMNS), *cells]:
        line = "  ".join(v.ljust(w) for v, w in zip(row[:-1], widths[:-1]))
        out.print(f"{line}  {row[-1]}".rstrip(), markup=False, soft_wrap=True)


# --- harness validate --json ---------------------------------------------------------------------

def validate_json(results: list[dict[str, Any]]) -> None:
    write_json({"ok": all(r["ok"] for r in results), "specs": results})


# --- harness run --dry-run --json ----------------------------------------------------------------

def plan_json(runner: Runner, plan: Plan, spec_path: str) -> dict[str, Any]:
    stages = []
    counts = {"stored": 0, "to_compute": 0}
    for stage in plan.stages():
        stored = runner.store.is_done(stage.kind, stage.key)
        counts["stored" if stored else "to_compute"] += 1
        stages.append({
            "kind": stage.kind, "key": stage.key, "label": stage.label,
            "deps": {role: dep.key for role, dep in sorted(stage.deps.items())},
            "status": "stored" if stored else "to-compute",
            "checkpoint": (not stored) and runner.store.has_checkpoint(stage.kind, stage.key)})
    cells = [{"cell": cell.cell_id, "stages": [s.key for s in cell.stages()]} for cell in plan.cells]
    return {"spec": spec_path, "name": runner.rspec.name, "cells": cells, "stages": stages,
            "counts": {"cells": len(cells), "stages": len(stages), **counts}}
