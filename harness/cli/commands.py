"""The top-level commands: ``validate``, ``run``, ``list``, ``report`` and ``compare``."""


from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import click
import typer
from rich.console import Console
from rich.table import Table

from harness.cli import common
from harness.cli.common import SetOpt, StoreOpt, err, out
from harness.cli.common import open_store as _store
from harness.cli.execute import (CalibrateOpt, CalibrateStepsOpt, ExecutorOpt, NprocOpt,
                                 calibrate as run_calibration, pick, show_schedule)
from harness.errors import HarnessError
from harness.spec.problems import printable
from harness.spec.values import output_problems

if TYPE_CHECKING:
    from harness.plugins import Registry
    from harness.spec.models import ResolvedSpec



JsonOpt = Annotated[bool, typer.Option("--json", help="print one JSON document (see the README)")]


def validate(specs: Annotated[list[Path], typer.Argument(help="spec files")],
             set_: SetOpt = None, json_: JsonOpt = False) -> None:
    """Check specs without running anything: every problem at once, with its field path."""
    from harness.errors import SpecError
    from harness.plugins import get_registry
    from harness.spec import load_spec

    registry = get_registry()
    failures: list[HarnessError] = []
    results: list[dict] = []
    for spec in specs:
        try:
            rspec = load_spec(spec, set_ or [], registry)
        except HarnessError as exc:
            failures.append(exc)
            if common.DEBUG:
                import traceback

                traceback.print_exception(exc, file=sys.stderr)
            results.append({"spec": str(spec), "ok": False, "exit_code": 2 if isinstance(exc, SpecError) else exc.exit_code,
                            "problems": [printable(line) for line in _lines(exc, spec)]})
            for line in [] if json_ else results[-1]["problems"]:
                err.print(line, markup=False)
            continue
        results.append({"spec": str(spec), "ok": True, "cells": _cell_count(rspec, registry), "exit_code": 0, "problems": []})
        if not json_:
            out.print(f"{spec}: ok ({results[-1]['cells']} cells)", markup=False)
    if json_:
        from harness.cli.output import validate_json

        validate_json(results)
    if failures:
        code = 2 if any(isinstance(f, SpecError) for f in failures) else failures[0].exit_code
        raise typer.Exit(code)


def _lines(exc: HarnessError, source: Path) -> list[str]:
    from harness.errors import SpecError

    problems = exc.problems if isinstance(exc, SpecError) else [str(exc)]
    return [p if p.startswith(str(source)) else f"{source}: {p}" for p in problems]


def _cell_count(rspec: ResolvedSpec, registry: Registry) -> int:
    s = rspec.spec
    folds = len(s.folds) if s.folds else None
    n = sum(len(s.protocols_of(m)) for m in s.methods) * len(s.fractions) * len(s.seeds)
    return n * folds if folds else n * _dataset_folds(rspec, registry)


def _dataset_folds(rspec: ResolvedSpec, registry: Registry) -> int:
    info = registry.dataset(rspec.spec.dataset.name)
    try:
        return len(info.cls.folds(rspec.dataset_config))
    except Exception:  # noqa: BLE001
        return 1


def run(spec: Annotated[Path, typer.Argument(help="spec file")],
        set_: SetOpt = None,
        dry_run: Annotated[bool, typer.Option("--dry-run", help="print cells and stages, run no stage (a generated dataset is generated if missing)")] = False,
        store: StoreOpt = None,
        output: Annotated[Optional[Path], typer.Option("--output", help="run folder (default: the spec's output)")] = None,
        quiet: Annotated[bool, typer.Option("--quiet", help="no progress bars")] = False,
        logger: Annotated[Optional[list[str]], typer.Option("--logger", help="record the run with this logger too, e.g. tensorboard, mlflow (repeatable; as the spec's loggers:)")] = None,
        json_: Annotated[bool, typer.Option("--json", help="with --dry-run: the plan as one JSON document (see the README)")] = False,
        executor: ExecutorOpt = None, nproc: NprocOpt = None, calibrate: CalibrateOpt = False,
        calibrate_steps: CalibrateStepsOpt = 5) -> None:
    """Compute every cell of a comparison (reusing the store) and write its report."""
    from harness.errors import UsageError
    from harness.loggers import session_for
    from harness.plugins import get_registry
    from harness.runner import Runner
    from harness.spec import load_spec

    if json_ and not dry_run:
        raise UsageError("--json: only with --dry-run (a run's results are in its report.json)")
    if calibrate and not dry_run:
        raise UsageError("--calibrate: only with --dry-run (it estimates what a run costs)")
    registry = get_registry()
    rspec = load_spec(spec, set_ or [], registry)
    if output is not None and (problems := output_problems(str(output), None, "--output", "run folder")):
        raise UsageError(problems[0])
    output_dir = output or rspec.output_dir()
    if not dry_run:
        _check_output(output_dir, "--output" if output is not None else f"{spec}: output:")
    runner = Runner(rspec, registry, _store(store), output_dir, quiet=True if quiet else None)
    loggers = session_for(registry, rspec.spec.loggers, logger or [], output_dir)  # checked before any work
    chosen = pick(runner, executor, nproc)
    # A dry run runs no stage, but a generated (auto-prepared) dataset is generated: the plan's
    # stage keys depend on its sample ids, so without it a dry run on a fresh store cannot plan.
    plan, _, _ = runner.plan(prepare=True)
    if dry_run:
        if json_:
            from harness.cli.output import plan_json, write_json

            return write_json(plan_json(runner, plan, str(spec)))
        if calibrate:
            run_calibration(runner, plan, calibrate_steps)
        _print_plan(runner, plan)
        show_schedule(runner, plan, chosen)
        return
    with loggers:
        result = runner.run(plan, chosen)
    out.print(f"{len(result.records)} cells; {len(result.computed)} stages computed, "
              f"{len(result.reused)} reused", markup=False)
    for name in ("report.md", "report.html", "report.json", "report.csv"):
        if (output_dir / name).exists():
            out.print(f"report: {output_dir / name}", markup=False)


def _check_output(output_dir: Path, origin: str) -> None:
    """Before any work: the run folder can be created (a folder made and removed in its nearest
    existing parent), else a usage error naming where it came from (``/proc/x``, a read-only
    mount), not a failure once the stages ran."""
    import os
    import tempfile

    from harness.errors import UsageError

    parent = output_dir.absolute()
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".harness-probe-", dir=parent))
    except OSError as exc:
        raise UsageError(f"{origin} {output_dir}: cannot create the run folder in {parent} "
                         f"({exc.strerror or exc}); choose a folder you can write "
                         f"(--output DIR)") from None


def _print_plan(runner, plan) -> None:
    rows = runner.describe(plan)
    table = Table(title=f"{len(plan.cells)} cells, {len(rows)} distinct stages")
    for col in ("stage", "label", "key", "status"):
        table.add_column(col)
    for r in rows:
        status = "done" if r["done"] else ("checkpoint (resumes)" if r["checkpoint"] else "to do")
        table.add_row(r["kind"], r["label"], r["key"][:12], status)
    out.print(table)
    cells = Table(title="cells")
    for col in ("cell", "stages", "done"):
        cells.add_column(col)
    for cell in plan.cells:
        stages = cell.stages()
        done = sum(runner.store.is_done(s.kind, s.key) for s in stages)
        cells.add_row(cell.cell_id, " -> ".join(s.kind for s in stages), f"{done}/{len(stages)}")
    out.print(cells)


def list_plugins(what: Annotated[str, typer.Argument(help="methods, datasets, protocols, metrics, stages, executors, loggers or all")] = "all",
                 json_: JsonOpt = False) -> None:
    """Every installed plugin of every extension point (methods, datasets, protocols, metric
    families, stage kinds, executors, loggers): its kind and distribution; broken plugins with
    their error (exit 4 if any). Plain columns when stdout is not a terminal."""
    from harness.cli.output import EXTENSION_POINTS, list_plugins as print_plugins
    from harness.plugins import get_registry

    if what != "all" and what not in EXTENSION_POINTS:
        raise click.BadParameter(f"'{what}': choose {', '.join(EXTENSION_POINTS)} or all",
                                 param_hint="WHAT")
    print_plugins(get_registry(), what, json_)


def report(run_dirs: Annotated[list[Path], typer.Argument(help="run folders (merged)")],
           output: Annotated[Optional[Path], typer.Option("--output", help="where to write (default: the first run folder)")] = None,
           format_: Annotated[str, typer.Option("--format", help="comma-separated: md,html,json,csv")] = "md,html,json,csv",
           baseline: Annotated[Optional[str], typer.Option("--baseline", help="method of the paired comparisons (default: the first method)")] = None) -> None:
    """Rebuild the report from result records (several runs are merged)."""
    from harness.errors import DataError
    from harness.plugins import get_registry
    from harness.report.schema import load_records
    from harness.report.writer import parse_formats, read_run_infos, write_report

    formats = parse_formats(format_)
    records = load_records(run_dirs)
    if not records:
        raise DataError(f"no result records under {', '.join(str(d / 'records') for d in run_dirs)}")
    runs = read_run_infos(run_dirs)
    paths = write_report(output or run_dirs[0], records, runs[0], formats=formats,
                         baseline=baseline, runs=runs, registry=get_registry())
    for p in paths:
        out.print(str(p), markup=False)


def compare(new: Annotated[Path, typer.Argument(help="new run folder or report.json")],
            baseline: Annotated[Path, typer.Argument(help="baseline run folder or report.json")],
            tolerance: Annotated[Optional[float], typer.Option("--tolerance", help="absolute tolerance in metric units (default: max(k x baseline std, floor))")] = None,
            k: Annotated[float, typer.Option("--k", help="spread rule: multiple of the baseline's std over folds/seeds")] = 2.0,
            floor: Annotated[float, typer.Option("--floor", help="spread rule: smallest tolerance")] = 0.01,
            json_: Annotated[bool, typer.Option("--json", help="print the machine-readable result (JSON) instead of a table")] = False) -> None:
    """Flag cells whose mean fell below the baseline by more than the tolerance (exit 1 if any)."""
    from harness.plugins import get_registry
    from harness.report.compare import compare_paths, dumps, rich_table

    result = compare_paths(new, baseline, tolerance, k, floor, get_registry())
    if json_:
        out.print(dumps(result), markup=False)
    else:
        wide = out if out.is_terminal else Console(highlight=False, width=160)  # CI logs: no squeezing
        wide.print(rich_table(result))
        verdict = "no regression" if result["ok"] else f"{result['regressions']} regression(s)"
        out.print(f"{verdict} ({len(result['cells'])} cells)", markup=False)
    if not result["ok"]:
        raise typer.Exit(1)
