"""The report's tables as plain data (:class:`Table`), rendered to Markdown here and to HTML in
:mod:`harness.report.html`.

* main table: rows = methods, columns = protocol (x label fraction), cells = mean ± sample std
  over folds and seeds, the number of runs and the 95% t-interval; the best mean of a column in
  bold; ▲/▼ where a method differs from the baseline (exact paired sign-flip test, Holm-corrected
  p < 0.05); a single value is shown without a spread;
  "paper" and "Δ" columns only when the headline metric is the paper's own (like for like).
* paired comparisons, paper comparison (like for like), both PQ variants, per-class PQ and
  per-tissue mPQ of each variant, stage wall times.

Reports are written by :func:`harness.report.writer.write_report` (which imports this module, not
the other way round); records are summarised by :func:`harness.report.build.summarize`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from harness.report.build import installed, section_kinds

if TYPE_CHECKING:
    from harness.plugins import Registry


@dataclass
class Table:
    title: str
    header: list[str]
    rows: list[list[str]]
    strong: set[tuple[int, int]] = field(default_factory=set)  # (row, column) shown in bold
    notes: list[str] = field(default_factory=list)
    name: str = ""  # stable id (HTML anchors, CSV file names)


def fmt(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def column_name(protocol: str, fraction: float, several_fractions: bool) -> str:
    return f"{protocol} @ {fraction * 100:g}%" if several_fractions else protocol


def columns(rows: list[dict[str, Any]]) -> tuple[list[tuple[str, float]], bool]:
    cols = list(dict.fromkeys((r["protocol"], r["fraction"]) for r in rows))
    return cols, len({c[1] for c in cols}) > 1


def method_order(rows: list[dict[str, Any]]) -> list[str]:
    """The methods of the rows in the spec's order. Rows come column by column, each column in
    the spec's order; a method missing from the first columns (a row restricted to
    ``protocols: [full]``) goes back to its place next to the methods it follows elsewhere."""
    columns: dict[tuple, list[str]] = {}
    for r in rows:
        columns.setdefault((r["protocol"], r["fraction"]), []).append(r["method"])
    order: list[str] = []
    for methods in columns.values():
        for j, m in enumerate(methods):
            if m in order:
                continue
            before = [x for x in methods[:j] if x in order]
            after = [x for x in methods[j + 1:] if x in order]
            if before:
                order.insert(order.index(before[-1]) + 1, m)
            else:
                order.insert(order.index(after[0]) if after else len(order), m)
    return order


def column_metrics(report: dict[str, Any]) -> dict[tuple[str, float], str]:
    """The columns (protocol, fraction) whose rows report another metric than the report's
    headline (a protocol's own, e.g. a probe's R^2), with that metric's name."""
    return {(r["protocol"], r["fraction"]): r["metric"] for r in report["rows"]
            if r["metric"] != report.get("metric")}


def metric_descriptions(names: Any, registry: Registry) -> list[tuple[str, str]]:
    """``(metric, its family's description)`` of each distinct metric name."""
    out = []
    for name in dict.fromkeys(names):
        family = registry.family_of_metric(name)
        out.append((name, getattr(family, "description", "") or "a protocol's own measure"))
    return out


def mean_text(v: dict[str, Any]) -> str:
    """``mean ± std``, or the bare mean where the spread is undefined (a single value)."""
    if v.get("mean") is None:
        return "-"
    return f"{v['mean']:.4f}" if v.get("std") is None else f"{v['mean']:.4f} ± {v['std']:.4f}"


def cell_text(r: dict[str, Any]) -> str:
    if r["mean"] is None:
        return f"- (n={r['n']})"
    text = f"{mean_text(r)} (n={r['n']}"
    if r.get("ci_low") is not None:
        text += f"; CI {r['ci_low']:.4f}–{r['ci_high']:.4f}"
    return text + ")"


def cell_marks(report: dict[str, Any], registry: Registry | None) -> tuple[dict, list[str]]:
    """Each (method, protocol, fraction) cell's marks (▲/▼ against the baseline, a stage kind's
    own marks, ⚠ single class) and the notes the stage kinds add."""
    marks = {(c["method"], c["protocol"], c["fraction"]): ("▲" if c["mean_diff"] > 0 else "▼")
             for c in report.get("comparisons", []) if c["significant"] and c["mean_diff"]}
    kind_notes = []
    for kind in section_kinds(installed(registry)):  # a stage kind's marks (e.g. a labeler that saw test labels)
        kind_marks, note = kind.report_marks(report)
        for key, mark in kind_marks.items():
            marks[key] = (marks.get(key, "") + " " + mark).strip()
        kind_notes += [note] if note else []
    for e in report.get("single_class", []):  # ⚠ a single class predicted on every test image
        key = (e["method"], e["protocol"], e["fraction"])
        marks[key] = (marks.get(key, "") + " ⚠").strip()
    return marks, kind_notes


def main_table(report: dict[str, Any], registry: Registry | None = None) -> Table:
    """The main results (``registry``: the plugins whose stage kinds mark cells; None: the
    installed ones)."""
    rows = report["rows"]
    cols, several = columns(rows)
    by_key = {(r["method"], r["protocol"], r["fraction"]): r for r in rows}
    marks, kind_notes = cell_marks(report, registry)
    outside = {(p["method"], p["protocol"], p["fraction"]): p["outside_ci"] for p in report.get("paper", [])}
    with_paper = any(r["paper"] is not None for r in rows)
    metric = report.get("metric") or "?"
    other = column_metrics(report)
    header = ["method"]
    for protocol, fraction in cols:
        name = column_name(protocol, fraction, several) + (f" ({other[(protocol, fraction)]})"
                                                           if (protocol, fraction) in other else "")
        header += [name] + ([f"{name} paper", f"{name} Δ"] if with_paper else [])
    title = ", ".join([metric] + list(dict.fromkeys(other.values())))
    table = Table(f"{title} by method and protocol", header, [], name="main")
    missing = False
    for i, method in enumerate(method_order(rows)):
        cells = [method]
        for protocol, fraction in cols:
            r = by_key.get((method, protocol, fraction))
            key = (method, protocol, fraction)
            missing = missing or r is None
            if r and r["best"]:
                table.strong.add((i, len(cells)))
            cells.append((cell_text(r) + (f" {marks[key]}" if key in marks else "")) if r else "-")
            if with_paper:
                diff = "-" if not r or r["diff"] is None else f"{r['diff']:+.4f}"
                cells += ["-" if not r or r["paper"] is None else f"{r['paper']:.4f}",
                          diff + (" °" if outside.get(key) else "")]
        table.rows.append(cells)
    table.notes += main_notes(report, rows, other, missing, registry) + kind_notes
    if report.get("single_class"):
        table.notes.append("⚠: the model predicts a single class on every test image in at least "
                           "one cell of this row (see Warnings).")
    if with_paper:
        table.notes.append("paper/Δ: the thesis's value and ours minus it (like for like); "
                           "° = the published value lies outside our 95% CI.")
    return table


def main_notes(report: dict[str, Any], rows: list[dict], other: dict, missing: bool,
               registry: Registry | None) -> list[str]:
    """The main table's notes on its metric, its columns, missing cells and the baseline."""
    metric = report.get("metric") or "?"
    variant = f" (PQ variant `{report['variant']}`)" if report.get("variant") else ""
    notes = [f"{metric}{variant}: mean ± sample std over folds and seeds; n = runs; "
             "CI = 95% t-interval of the mean; bold = best mean of the column."
             + (" n = 1: a single run, no spread." if any(r["n"] == 1 for r in rows) else "")]
    if other:
        notes.append(f"A column named with a metric in brackets reports that metric, its "
                     f"protocol's own measure, instead of {metric}: "
                     + "; ".join(f"{m}: {d}" for m, d in metric_descriptions(other.values(), installed(registry))) + ".")
    if missing:
        notes.append("-: no result for the method in this column (e.g. a row restricted "
                     "to `protocols: [full]`: semi-supervised methods have no frozen encoder).")
    if report.get("baseline"):
        notes.append(f"▲/▼: differs from the baseline `{report['baseline']}` on identical "
                     "(fold, seed) pairs (exact paired sign-flip test, Holm-corrected "
                     "p < 0.05). " + power_text(report))
    return notes


def power_text(report: dict[str, Any]) -> str:
    """What the report's pairs allow, in words (empty without comparisons)."""
    power = report.get("power")
    if not power:
        return ""
    n, family = power["min_pairs"], power["family"]
    pairs = f"{n}" if n == power["max_pairs"] else f"{n} to {power['max_pairs']}"
    text = (f"With {pairs} pair{'' if pairs == '1' else 's'} the smallest two-sided p any paired test can reach is "
            f"2/2^{n} = {power['p_min']:.4g}")
    if not power["reachable"]:
        return (text + f"{f' (x{family} comparisons under Holm)' if family > 1 else ''}: no "
                f"difference can be marked significant at {power['alpha']:g}, whatever the numbers; "
                f"add seeds or folds ({power['pairs_needed']} pairs per comparison can reach it).")
    return text + "."


def comparison_table(report: dict[str, Any]) -> Table:
    cols, several = columns(report["rows"])
    table = Table(f"Paired comparison against `{report.get('baseline')}`",
                  ["method", "column", "pairs", "mean Δ", "Δ 95% t-CI", "Δ 95% CI (bootstrap)",
                   "p sign-flip", "p sign-flip (Holm)", "smallest p", "p Wilcoxon", "significant"],
                  [], name="paired")

    def ci(pair: list[float] | None) -> str:
        return "-" if not pair else f"{pair[0]:+.4f}…{pair[1]:+.4f}"

    for c in report.get("comparisons", []):
        p_flip = c.get("p_signflip")
        how = " (MC)" if c.get("signflip") == "monte carlo" else ""
        table.rows.append([c["method"], column_name(c["protocol"], c["fraction"], several),
                           str(c["n_pairs"]), "-" if c["mean_diff"] is None else f"{c['mean_diff']:+.4f}",
                           ci(c.get("diff_t_ci")), ci(c["diff_ci"]),
                           fmt(p_flip) + (how if p_flip is not None else ""),
                           fmt(c.get("p_signflip_holm")), fmt(c.get("p_min")), fmt(c["p_wilcoxon"]),
                           "yes" if c["significant"] else "no"])
    table.notes.append("Pairs = identical (fold, seed) cells of both methods. The sign-flip test "
                       "(paired permutation test of the mean difference: every one of the 2^n sign "
                       "patterns, two-sided; Monte Carlo (MC) beyond 20 pairs, 100,000 patterns, seed 0) "
                       "marks the main table after Holm correction over all rows; smallest p = "
                       "2/2^n, the least any paired test can give with n pairs. The t-interval "
                       "(Student t, n - 1 df) and the bootstrap interval (10,000 resamples) of the mean "
                       "difference are descriptive; Wilcoxon signed-rank is shown beside it.")
    text = power_text(report)
    if text:
        table.notes.append(text)
    return table


def encoder_table(report: dict[str, Any]) -> Table:
    table = Table("Networks of the rows", ["method", "protocol", "architecture", "encoder",
                  "parameters (M)", "encoder parameters (M)", "patch size"], [], name="encoders")
    for e in report.get("encoders", []):
        table.rows.append([e["method"], e["protocol"], e["architecture"], e["encoder"] or "-",
                           f"{e['params'] / 1e6:.1f}", f"{e['encoder_params'] / 1e6:.1f}",
                           "-" if e.get("patch_size") is None else str(e["patch_size"])])
    table.notes.append("As fine-tuned (lora: counted after its adapters were merged). Patch size: a "
                       "ViT encoder's; inputs not a multiple of it are zero-padded, predictions "
                       "cropped to the image.")
    return table


def paper_table(report: dict[str, Any]) -> Table:
    entries = report.get("paper", [])
    cols, several = columns(report["rows"])
    first = entries[0] if entries else {}
    what = first.get("metric", "?") + (f", `{first['variant']}` variant" if first.get("variant") else "")
    table = Table(f"Paper comparison (thesis table `{first.get('table')}`; ours = {what})",
                  ["method", "column", "ours", "paper", "Δ", "paper in our 95% CI"], [], name="paper")
    for p in entries:
        inside = "-" if p["outside_ci"] is None else ("no" if p["outside_ci"] else "yes")
        table.rows.append([p["method"], column_name(p["protocol"], p["fraction"], several),
                           cell_text(p), fmt(p["paper"]),
                           "-" if p["diff"] is None else f"{p['diff']:+.4f}", inside])
    table.notes.append("Like for like: the thesis's PQ is the mPQ of its own evaluation code (our "
                       "`thesis` variant), its Dice our Dice; same table, protocol and fraction.")
    if any(p["outside_ci"] for p in entries):
        table.notes.append("Note: at least one published value lies outside our 95% interval.")
    return table


def _values_table(title: str, name: str, entries: list[dict[str, Any]], several: bool, note: str) -> Table:
    keys = list(dict.fromkeys(k for e in entries for k in e["values"]))
    table = Table(title, ["method", "column"] + keys, [], name=name, notes=[note])
    for e in entries:
        cells = [e["method"], column_name(e["protocol"], e["fraction"], several)]
        for k in keys:
            v = e["values"].get(k)
            cells.append(mean_text(v or {}))
        table.rows.append(cells)
    return table


def breakdown_tables(report: dict[str, Any]) -> list[Table]:
    _, several = columns(report["rows"])
    tables = []
    names = {"instance": "instance (PanNuke mPQ/bPQ: matched instances)",
             "thesis": "thesis (the thesis's code: each class of an image is one segment)"}
    for variant, parts in report.get("breakdown", {}).items():
        label = names.get(variant, variant)
        tables.append(_values_table(f"PQ variant {label}: overall", f"overall_{variant}",
                                    parts["overall"], several, "mean ± std over folds and seeds."))
        tables.append(_values_table(f"Per-class PQ, variant `{variant}`", f"per_class_{variant}",
                                    parts["per_class"], several,
                                    "PQ of each class averaged over images (NaN images skipped)."))
        tables.append(_values_table(f"Per-tissue mPQ, variant `{variant}`", f"per_tissue_{variant}",
                                    parts["per_tissue"], several, "mPQ of each tissue's images."))
    return tables


def stage_table(report: dict[str, Any]) -> Table:
    prov = report.get("provenance", {})
    table = Table("Stages and wall time", ["kind", "label", "key", "seconds", "cached", "cells"], [],
                  name="stages")
    for s in prov.get("stages", []):
        table.rows.append([s["kind"], s["label"], s["key"], fmt(s["seconds"], 1),
                           "yes" if s["cached"] else "no", str(s["cells"])])
    per_kind = ", ".join(f"{k} {v:.1f} s" for k, v in sorted(prov.get("seconds_per_kind", {}).items()))
    table.notes.append(f"Total {prov.get('seconds_total', 0.0):.1f} s ({per_kind}); a stage reused "
                       "from the store shows the time of the run that computed it.")
    return table


def to_markdown(table: Table, heading: str = "###") -> str:
    def esc(text: str) -> str:
        return text.replace("|", "\\|")

    lines = [f"{heading} {table.title}", "", "| " + " | ".join(esc(h) for h in table.header) + " |",
             "|" + "---|" * len(table.header)]
    for i, row in enumerate(table.rows):
        cells = [f"**{esc(c)}**" if (i, j) in table.strong else esc(c) for j, c in enumerate(row)]
        lines.append("| " + " | ".join(cells) + " |")
    for note in table.notes:
        lines += ["", f"_{note}_"]
    return "\n".join(lines + [""])

