"""The report as an ordered list of :class:`Section` (text, bullet lists, tables, figures, code
blocks), rendered to Markdown here and to HTML by :mod:`harness.report.html`, so that both
formats always hold the same content.

Sections: summary; warnings (models predicting one class everywhere); main results; stage kinds' own sections (e.g. labelers) (+ bar chart, fraction curves); paired comparison against the
baseline; paper comparison (like for like); PQ variants (overall, per class, per tissue, both
variants named); training curves; provenance (versions, commit, device, plugins, packages,
overrides, stages with wall time, resolved spec of each run).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import yaml

from harness.report import literature as L
from harness.report import tables as T

if TYPE_CHECKING:
    from harness.plugins import Registry

FIGURE_CAPTIONS = {
    "bars": "Mean ± std per protocol (error bars: sample std over folds and seeds).",
    "fractions": "Metric vs label fraction.",
    "loss": "Training loss per epoch of the stages behind the records.",
}


@dataclass
class Section:
    title: str
    paragraphs: list[str] = field(default_factory=list)
    bullets: list[str] = field(default_factory=list)
    tables: list[T.Table] = field(default_factory=list)
    figures: list[str] = field(default_factory=list)  # names of make_figures()
    code: list[tuple[str, str]] = field(default_factory=list)  # (caption, text)


def _summary(report: dict[str, Any], records: list[dict[str, Any]], run_info: dict[str, Any],
             registry: Registry) -> Section:
    spec = run_info.get("spec") or {}
    datasets = ", ".join(f"`{d}`" for d in dict.fromkeys(r["dataset"] for r in records))
    paragraphs = [spec["description"].strip()] if spec.get("description") else []
    variant = f" (PQ variant `{report['variant']}`)" if report.get("variant") else ""
    paragraphs.append(f"Metric: **{report.get('metric')}**{variant}; dataset {datasets}; "
                      f"{len(records)} cells in {len(report['rows'])} table cells; runs: "
                      + ", ".join(f"`{r}`" for r in report.get("runs", [])) + ".")
    family = L.family_of(report.get("metric"), registry)
    if family is not None and getattr(family, "aggregation", ""):
        paragraphs.append(f"Aggregation: {family.aggregation}.")
    heads = sorted({r["head"] for r in records if r.get("head")})
    if heads:
        paragraphs.append("Head: " + ", ".join(f"`{h}`" for h in heads) + " (predicted instances: "
                          + "; ".join(sorted({r["metrics"].get("pred_instances", "?")
                                              for r in records if r.get("head")})) + ").")
    tables = sorted({r["reference"] for r in records if r.get("reference")})
    if tables:
        paragraphs.append("Paper: PRICon thesis, table " + ", ".join(f"`{t}`" for t in tables)
                          + " (the thesis's PQ is the `thesis` variant; compared like for like).")
    return Section("Summary", paragraphs=paragraphs)


def _provenance(report: dict[str, Any]) -> Section:
    prov = report.get("provenance", {})

    def joined(key: str) -> str:
        return ", ".join(str(v) for v in prov.get(key) or []) or "?"

    bullets = [f"harness {joined('harness_version')} (git commit {joined('git_commit')})",
               f"Python {joined('python')} on {joined('platform')}",
               f"device: {joined('device')}",
               "plugins: " + (", ".join(f"{k} {' / '.join(v)}" for k, v in prov.get("plugins", {}).items()) or "-"),
               "packages: " + (", ".join(f"{k} {' / '.join(v)}" for k, v in prov.get("packages", {}).items()) or "-"),
               "overrides: " + (", ".join(f"`{o}`" for o in prov.get("overrides", [])) or "none")]
    code = []
    for run in prov.get("runs", []):
        if run.get("spec"):
            code.append((f"Resolved spec of run `{run.get('name')}` (from {run.get('source') or '?'})",
                         yaml.safe_dump(run["spec"], sort_keys=True, default_flow_style=None).rstrip()))
    return Section("Provenance", bullets=bullets, tables=[T.stage_table(report)], code=code)


def build_sections(report: dict[str, Any], records: list[dict[str, Any]], run_info: dict[str, Any],
                   figures: dict[str, Any], registry: Registry) -> list[Section]:
    sections = [_summary(report, records, run_info, registry)]
    if report.get("warnings"):
        sections.append(Section("Warnings", bullets=list(report["warnings"])))
    sections.append(Section("Main results", tables=[T.main_table(report, registry)],
                            figures=[f for f in ("bars", "fractions") if f in figures]))
    if report.get("encoders"):
        sections.append(Section("Networks", tables=[T.encoder_table(report)]))
    for kind in T.section_kinds(registry):  # stage kinds' own sections (e.g. a plugin's labelers)
        key, heading = kind.report_section
        if report.get(key):
            sections.append(Section(heading, tables=[kind.report_table(report)]))
    if report.get("comparisons"):
        sections.append(Section("Paired comparison", tables=[T.comparison_table(report)]))
    if report.get("paper"):
        sections.append(Section("Paper comparison", tables=[T.paper_table(report)]))
    if report.get("pooled"):
        sections.append(Section("Pooled PQ", tables=[L.pooled_table(report)]))
    if report.get("literature"):
        sections.append(Section("Literature (instance PQ)", tables=L.literature_tables(report)))
    if report.get("breakdown"):
        sections.append(Section("PQ variants, per class and per tissue", paragraphs=[
            "Both PQ variants are always recorded: `instance` is the standard PanNuke mPQ/bPQ "
            "(instances matched at IoU > 0.5); `thesis` is the thesis's evaluation (each class of "
            "an image one segment), the variant of its published numbers."],
            tables=T.breakdown_tables(report)))
    if "loss" in figures:
        sections.append(Section("Training curves", figures=["loss"]))
    sections.append(_provenance(report))
    return sections


def to_markdown(title: str, sections: list[Section], figure_paths: dict[str, str]) -> str:
    lines = [f"# {title}", ""]
    for s in sections:
        lines += [f"## {s.title}", ""]
        for p in s.paragraphs:
            lines += [p, ""]
        if s.bullets:
            lines += [f"- {b}" for b in s.bullets] + [""]
        for t in s.tables:
            lines.append(T.to_markdown(t))
        for name in s.figures:
            lines += [f"![{name}]({figure_paths[name]})", "", f"_{FIGURE_CAPTIONS.get(name, '')}_", ""]
        for caption, text in s.code:
            lines += [f"<details><summary>{caption}</summary>", "", "```yaml", text, "```", "",
                      "</details>", ""]
    return "\n".join(lines).rstrip() + "\n"
