"""The comparison table: methods x protocols (x label fractions), mean +- std over folds and
seeds, with the thesis's published value beside ours where the spec names a reference table.
Written as Markdown, JSON and CSV."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any, Iterable

from harness.references import published_value
from harness.store import atomic_write_json, atomic_write_text

REPORT_SCHEMA = "harness.report/1"


def load_records(run_dirs: Iterable[Path]) -> list[dict[str, Any]]:
    records = []
    for run_dir in run_dirs:
        for path in sorted((Path(run_dir) / "records").glob("*.json")):
            records.append(json.loads(path.read_text()))
    return records


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return None, None
    mean = sum(vals) / len(vals)
    if len(vals) == 1:
        return mean, 0.0
    var = sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)
    return mean, math.sqrt(var)


def summarize(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (method, protocol, fraction): mean and sample std over folds and seeds."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["method"], r["protocol"], r["fraction"]), []).append(r)
    rows = []
    for (method, protocol, fraction), recs in groups.items():
        values = [r["metric"]["value"] for r in recs]
        mean, std = _mean_std(values)
        reference = recs[0].get("reference")
        paper = published_value(reference, method, protocol, fraction) if reference else None
        rows.append({
            "method": method, "protocol": protocol, "fraction": fraction,
            "metric": recs[0]["metric"]["name"], "variant": recs[0]["metric"]["variant"],
            "mean": mean, "std": std, "n": len([v for v in values if v is not None]),
            "folds": sorted({r["fold"] for r in recs}), "seeds": sorted({r["seed"] for r in recs}),
            "paper": paper,
            "diff": (mean - paper) if (paper is not None and mean is not None) else None,
        })
    rows.sort(key=lambda r: (r["fraction"], r["method"], r["protocol"]))
    return rows


def _fmt(mean: float | None, std: float | None, n: int) -> str:
    if mean is None:
        return "-"
    return f"{mean:.4f} ± {std:.4f} (n={n})"


def markdown_table(rows: list[dict[str, Any]]) -> str:
    methods = list(dict.fromkeys(r["method"] for r in rows))
    columns = list(dict.fromkeys((r["protocol"], r["fraction"]) for r in rows))
    by_key = {(r["method"], r["protocol"], r["fraction"]): r for r in rows}
    with_paper = any(r["paper"] is not None for r in rows)
    header = ["method"]
    for protocol, fraction in columns:
        name = protocol if len({c[1] for c in columns}) == 1 else f"{protocol} @ {fraction:g}"
        header.append(name)
        if with_paper:
            header += [f"{name} paper", f"{name} Δ"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method in methods:
        cells = [method]
        for protocol, fraction in columns:
            r = by_key.get((method, protocol, fraction))
            cells.append(_fmt(r["mean"], r["std"], r["n"]) if r else "-")
            if with_paper:
                paper = r["paper"] if r else None
                diff = r["diff"] if r else None
                cells += ["-" if paper is None else f"{paper:.4f}",
                          "-" if diff is None else f"{diff:+.4f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(output_dir: Path, records: list[dict[str, Any]], run_info: dict[str, Any]) -> list[Path]:
    output_dir = Path(output_dir)
    rows = summarize(records)
    metric = rows[0]["metric"] if rows else "?"
    variant = rows[0]["variant"] if rows else None
    spec = run_info.get("spec", {})
    prov = run_info.get("provenance", {})
    md = [f"# {run_info.get('name', 'run')}", ""]
    if spec.get("description"):
        md += [spec["description"].strip(), ""]
    md += [f"Metric: **{metric}**" + (f" (PQ variant `{variant}`)" if variant else "")
           + f"; dataset `{spec.get('dataset', {}).get('name', '?')}`; cells: {len(records)}; "
           f"mean ± sample std over folds and seeds (n = runs).", ""]
    if spec.get("reference"):
        md += [f"Paper: PRICon thesis, table `{spec['reference']}` "
               "(the thesis's PQ is the `thesis` variant; compare like for like).", ""]
    md += [markdown_table(rows), ""]
    if run_info.get("overrides"):
        md += ["Overrides: " + ", ".join(f"`{o}`" for o in run_info["overrides"]), ""]
    md += ["## Provenance", "",
           f"- harness {prov.get('harness_version')} (commit {prov.get('git_commit')})",
           f"- device: {prov.get('device')}",
           f"- packages: " + ", ".join(f"{k} {v}" for k, v in sorted(prov.get("packages", {}).items())),
           ""]
    md_path = output_dir / "report.md"
    atomic_write_text(md_path, "\n".join(md))
    json_path = output_dir / "report.json"
    atomic_write_json(json_path, {"schema": REPORT_SCHEMA, "run": run_info.get("name"),
                                  "rows": rows, "provenance": prov})
    buf = io.StringIO()
    fields = ["method", "protocol", "fraction", "metric", "variant", "mean", "std", "n", "paper", "diff"]
    writer = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    for r in rows:
        writer.writerow(r)
    csv_path = output_dir / "report.csv"
    atomic_write_text(csv_path, buf.getvalue())
    return [md_path, json_path, csv_path]
