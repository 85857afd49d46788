"""Writing a report: ``report.md`` (+ ``figures/*.png``), ``report.html`` (self-contained),
``report.json`` (the :class:`~harness.report.schema.Report`) and ``report.csv`` (main rows)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from harness.errors import DataError
from harness.report.build import build_report, installed
from harness.report.schema import validate_record
from harness.store import atomic_write_json, atomic_write_text

if TYPE_CHECKING:
    from harness.plugins import Registry

FORMATS = ("md", "html", "json", "csv")
CSV_FIELDS = ["method", "protocol", "fraction", "metric", "variant", "mean", "std", "ci_low",
              "ci_high", "n", "best", "paper", "diff"]


def parse_formats(text: str | Iterable[str] | None) -> tuple[str, ...]:
    """``"md,html"`` -> ``("md", "html")``; unknown names are a usage error."""
    if text is None:
        return FORMATS
    items = [f.strip().lower() for f in (text.split(",") if isinstance(text, str) else text) if f.strip()]
    unknown = [f for f in items if f not in FORMATS]
    if unknown or not items:
        from harness.errors import SpecError

        raise SpecError([f"--format: unknown format(s) {', '.join(unknown) or '(none)'}; "
                         f"choose from {', '.join(FORMATS)}"])
    return tuple(dict.fromkeys(items))


def _csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow(r)
    return buf.getvalue()


def write_report(output_dir: Path, records: list[dict[str, Any]], run_info: dict[str, Any], *,
                 formats: Iterable[str] | str | None = None, baseline: str | None = None,
                 runs: list[dict[str, Any]] | None = None,
                 registry: Registry | None = None) -> list[Path]:
    """Write the report of ``records`` into ``output_dir``; return the written paths.

    ``run_info`` is the run's description (``run.json``: name, spec, overrides, store,
    provenance); ``runs`` lists every merged run's description (default: ``[run_info]``);
    ``baseline`` is the method of the paired comparisons (default: the first method, when there
    are several); ``registry``: the plugins that read the records (None: the installed ones)."""
    registry = installed(registry)
    output_dir = Path(output_dir)
    formats = parse_formats(formats)
    if not records:
        raise DataError("no result records to report")
    records = [validate_record(r, f"record {r.get('cell_id', '?') if isinstance(r, dict) else '?'}")
               for r in records]
    runs = runs if runs is not None else [run_info]
    order: dict[str, int] = {}
    for run in runs:
        for method in run.get("rows") or []:
            order.setdefault(method, len(order))
    for r in records:  # methods no run lists: in the order they come
        order.setdefault(r["method"], len(order))
    # the methods' order, then the cell ids: the same order whether the records come from the
    # run (plan order) or from a run folder (file names), so a rebuilt report is identical
    records = sorted(records, key=lambda r: (order[r["method"]], r["cell_id"]))
    report = build_report(records, runs, baseline, registry=registry).dump()
    if report.get("warnings"):
        from harness.console import console

        for warning in report["warnings"]:
            console.print(f"warning: {warning}", style="yellow", markup=False, highlight=False)
    title = report.get("run") or run_info.get("name") or "report"
    paths: list[Path] = []
    if "md" in formats or "html" in formats:
        from harness.report import document
        from harness.report.figures import make_figures

        stores = [Path(r["store"]) for r in runs if r.get("store")]
        figures = make_figures(report, records, output_dir / "figures", stores, registry)
        sections = document.build_sections(report, records, run_info, figures, registry)
        if "md" in formats:
            rel = {k: str(p.relative_to(output_dir)) for k, p in figures.items()}
            paths.append(_text(output_dir / "report.md", document.to_markdown(title, sections, rel)))
        if "html" in formats:
            from harness.report.html import to_html

            paths.append(_text(output_dir / "report.html", to_html(title, sections, figures)))
        paths += list(figures.values()) if "md" in formats else []
    if "json" in formats:
        atomic_write_json(output_dir / "report.json", report)
        paths.append(output_dir / "report.json")
    if "csv" in formats:
        paths.append(_text(output_dir / "report.csv", _csv(report["rows"])))
    return paths


def _text(path: Path, text: str) -> Path:
    atomic_write_text(path, text)
    return path


def read_run_infos(run_dirs: Iterable[Path]) -> list[dict[str, Any]]:
    """The ``run.json`` of each run folder (a bare ``{"name": folder}`` where it is missing)."""
    infos = []
    for d in run_dirs:
        path = Path(d) / "run.json"
        try:
            infos.append(json.loads(path.read_text()) if path.exists() else {"name": Path(d).name})
        except (OSError, json.JSONDecodeError) as exc:
            raise DataError(f"{path}: cannot be read ({exc}); restore the run folder's run.json "
                            f"or delete it") from None
    return infos
