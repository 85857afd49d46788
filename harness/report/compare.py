"""Regression gating: compare a new result against a baseline, cell by cell.

A *cell* is (method, protocol, label fraction); its value is the mean of the headline metric over
folds and seeds. NEW and BASELINE are each a run folder (its ``records/``, else its
``report.json``) or a ``report.json`` file.

Rule, per baseline cell (all our metrics are higher-is-better):

* tolerance = ``--tolerance X`` when given (absolute, in metric units); otherwise derived from the
  baseline's recorded spread: ``max(k * std, floor)`` with ``std`` the baseline's sample std over
  folds and seeds (none, i.e. 0, for a single run), ``k`` = :data:`DEFAULT_K` and ``floor`` =
  :data:`DEFAULT_FLOOR` (the floor absorbs CPU-vs-CPU float noise of a single-run baseline);
* ``regression`` when ``new_mean < baseline_mean - tolerance``; ``improved`` when
  ``new_mean > baseline_mean + tolerance``; ``ok`` otherwise;
* ``missing`` (a regression) when NEW has no such cell or no value for it (NaN/None);
  ``metric changed`` (a regression) when the cell's metric or PQ variant differs;
* cells only in NEW are ``new`` (not a regression); a baseline cell without a value is
  ``unscored`` (not a regression).

The comparison fails (exit 1) when any cell is a regression.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.errors import DataError

if TYPE_CHECKING:
    from harness.plugins import Registry

COMPARE_SCHEMA = "harness.compare/1"
DEFAULT_K = 2.0
DEFAULT_FLOOR = 0.01
FAILING = ("regression", "missing", "metric changed")


def load_rows(path: Path, registry: Registry) -> tuple[list[dict[str, Any]], str]:
    """Main-table rows of a run folder (from its records, read by ``registry``'s metric
    families, else its report.json) or of a report.json file, and a description of where they
    came from."""
    from harness.report.build import summarize
    from harness.report.schema import load_records, load_report

    path = Path(path)
    if path.is_dir():
        if any((path / "records").glob("*.json")):
            return summarize(load_records([path]), registry), f"{path}/records"
        if (path / "report.json").exists():
            path = path / "report.json"
        else:
            raise DataError(f"{path}: neither records/*.json nor report.json (is it a run folder?)")
    if not path.exists():
        raise DataError(f"{path}: no such run folder or report file")
    return [r.model_dump() for r in load_report(path).rows], str(path)


def _key(r: dict[str, Any]) -> tuple[str, str, float]:
    return (r["method"], r["protocol"], float(r["fraction"]))


def compare_rows(new: list[dict[str, Any]], baseline: list[dict[str, Any]],
                 tolerance: float | None = None, k: float = DEFAULT_K,
                 floor: float = DEFAULT_FLOOR) -> dict[str, Any]:
    """The machine-readable comparison (see the module docstring for the rule)."""
    new_by = {_key(r): r for r in new}
    cells = []
    for b in baseline:
        n = new_by.pop(_key(b), None)
        tol = tolerance if tolerance is not None else max(k * float(b.get("std") or 0.0), floor)
        cell = {"method": b["method"], "protocol": b["protocol"], "fraction": float(b["fraction"]),
                "metric": b["metric"], "variant": b.get("variant"),
                "baseline_mean": b.get("mean"), "baseline_std": b.get("std"), "baseline_n": b.get("n"),
                "new_mean": n.get("mean") if n else None, "new_std": n.get("std") if n else None,
                "new_n": n.get("n") if n else 0, "delta": None, "tolerance": tol}
        if n is None or n.get("mean") is None:
            status = "missing" if b.get("mean") is not None or n is None else "unscored"
        elif (n["metric"], n.get("variant")) != (b["metric"], b.get("variant")):
            status = "metric changed"
        elif b.get("mean") is None:
            status = "unscored"
        else:
            cell["delta"] = n["mean"] - b["mean"]
            status = ("regression" if cell["delta"] < -tol else
                      "improved" if cell["delta"] > tol else "ok")
        cells.append({**cell, "status": status})
    for n in new_by.values():
        cells.append({"method": n["method"], "protocol": n["protocol"], "fraction": float(n["fraction"]),
                      "metric": n["metric"], "variant": n.get("variant"), "baseline_mean": None,
                      "baseline_std": None, "baseline_n": 0, "new_mean": n.get("mean"),
                      "new_std": n.get("std"), "new_n": n.get("n"), "delta": None,
                      "tolerance": None, "status": "new"})
    failing = [c for c in cells if c["status"] in FAILING]
    rule = ({"kind": "absolute", "tolerance": tolerance} if tolerance is not None else
            {"kind": "spread", "k": k, "floor": floor,
             "text": f"tolerance = max({k:g} x baseline std over folds/seeds, {floor:g})"})
    return {"schema": COMPARE_SCHEMA, "ok": not failing, "regressions": len(failing),
            "rule": rule, "cells": cells}


def compare_paths(new: Path, baseline: Path, tolerance: float | None = None,
                  k: float = DEFAULT_K, floor: float = DEFAULT_FLOOR,
                  registry: Registry | None = None) -> dict[str, Any]:
    """``registry``: the plugins that read records (None: the installed ones)."""
    from harness.report.build import installed

    registry = installed(registry)
    new_rows, new_src = load_rows(new, registry)
    base_rows, base_src = load_rows(baseline, registry)
    return {**compare_rows(new_rows, base_rows, tolerance, k, floor), "new": new_src,
            "baseline": base_src}


def _num(v: float | None, sign: bool = False) -> str:
    return "-" if v is None else (f"{v:+.4f}" if sign else f"{v:.4f}")


def rich_table(result: dict[str, Any]):
    """The comparison as a rich Table (one row per cell, status coloured)."""
    from rich.table import Table

    colours = {"regression": "bold red", "missing": "bold red", "metric changed": "bold red",
               "improved": "green", "ok": "", "new": "cyan", "unscored": "yellow"}
    rule = result["rule"].get("text") or f"tolerance = {result['rule']['tolerance']:g} (absolute)"
    table = Table(title=f"{result.get('new', 'new')} vs {result.get('baseline', 'baseline')}",
                  caption=rule)
    for col in ("cell", "metric", "baseline", "new", "Δ", "tol.", "status"):
        table.add_column(col, no_wrap=True, justify="left" if col in ("cell", "metric", "status") else "right")
    for c in result["cells"]:
        metric = c["metric"] + (f"/{c['variant']}" if c.get("variant") else "")
        spread = "" if c["baseline_std"] is None else f" ± {c['baseline_std']:.4f}"
        base = "-" if c["baseline_mean"] is None else \
            f"{c['baseline_mean']:.4f}{spread} (n={c['baseline_n']})"
        new = "-" if c["new_mean"] is None else f"{c['new_mean']:.4f} (n={c['new_n']})"
        status = f"[{colours[c['status']]}]{c['status']}[/]" if colours[c["status"]] else c["status"]
        table.add_row(f"{c['method']} / {c['protocol']} @ {c['fraction']:g}", metric, base, new,
                      _num(c["delta"], sign=True), _num(c["tolerance"]), status)
    return table


def dumps(result: dict[str, Any]) -> str:
    from harness.store import json_safe

    return json.dumps(json_safe(result), indent=2, sort_keys=True)
