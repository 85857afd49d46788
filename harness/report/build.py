"""From result records to a :class:`~harness.report.schema.Report`: the main rows (mean, std,
95% CI, n, best per column), the paired comparisons against a baseline method, the like-for-like
paper comparison, the per-class / per-tissue breakdowns of both PQ variants and provenance.

Everything here is a pure function of the records (and the run descriptions), so a report can be
rebuilt at any time and several runs merged.
"""

from __future__ import annotations

import math
from functools import partial
from typing import TYPE_CHECKING, Any, Iterable

from harness.references import literature, published_value, reference_metric
from harness.report import facts, stats
from harness.report.provenance import collect_provenance
from harness.report.schema import REPORT_SCHEMA, Comparison, Report, Row

if TYPE_CHECKING:
    from harness.plugins import Registry

# The registry (the installed plugins) is passed in: metric families say how to read a
# record's metrics, which of their variants to break down, and what a reference table's metric
# means in our records (the thesis's "PQ" is the mPQ of its own evaluation code, i.e. our
# `thesis` variant); stage kinds add report sections.


def installed(registry: Registry | None) -> Registry:
    """``registry``, or the installed plugins for a caller of the public report API
    (:func:`build_report`, :func:`harness.report.writer.write_report`,
    :func:`harness.report.tables.main_table`) that gives none."""
    if registry is not None:
        return registry
    from harness.plugins import get_registry

    return get_registry()


def section_kinds(registry: Registry) -> list[type]:
    """The installed stage kinds that add a report section (their ``report_section``), by name."""
    return [info.cls for _, info in sorted(registry.stage_kinds.items())
            if getattr(info.cls, "report_section", None)]


def like_for_like(table: str | None, registry: Registry) -> tuple[str, str | None] | None:
    """Our ``(metric, variant)`` comparable with reference ``table``'s published numbers."""
    return registry.like_for_like(reference_metric(table)) if table else None


def column_key(r: dict[str, Any]) -> tuple[str, float]:
    return (r["protocol"], float(r["fraction"]))


def _group(records: Iterable[dict[str, Any]]) -> dict[tuple, list[dict[str, Any]]]:
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["method"], r["protocol"], float(r["fraction"])), []).append(r)
    return groups


def metric_of(registry: Registry, record: dict[str, Any], name: str,
              variant: str | None) -> float | None:
    """A metric of a record by name/variant (``dice``, or ``mpq``/``bpq`` of a PQ variant), as
    its metric family reads it; None if the record has none (or no family defines ``name``)."""
    family = registry.family_of_metric(name)
    try:
        value = family.headline(record.get("metrics") or {}, name, variant)
    except (AttributeError, KeyError, TypeError):
        return None
    return None if value is None or not math.isfinite(float(value)) else float(value)


def _like_for_like(record: dict[str, Any], registry: Registry) -> bool:
    target = like_for_like(record.get("reference"), registry)
    metric = record["metric"]
    return target is not None and (metric["name"], metric.get("variant")) == target


def summarize(records: list[dict[str, Any]], registry: Registry) -> list[dict[str, Any]]:
    """One row per (method, protocol, fraction): mean, sample std and t-interval over folds and
    seeds; the best mean of each column marked; paper value and difference like for like."""
    rows = []
    for (method, protocol, fraction), recs in _group(records).items():
        values = [r["metric"]["value"] for r in recs]
        mean, std = stats.mean_std(values)
        lo, hi = stats.t_interval(values)
        paper = None
        if _like_for_like(recs[0], registry):
            paper = published_value(recs[0]["reference"], method, protocol, fraction)
        rows.append(Row(
            method=method, protocol=protocol, fraction=fraction,
            metric=recs[0]["metric"]["name"], variant=recs[0]["metric"].get("variant"),
            mean=mean, std=std, ci_low=lo, ci_high=hi, n=len(stats.clean(values)),
            folds=sorted({r["fold"] for r in recs}), seeds=sorted({int(r["seed"]) for r in recs}),
            paper=paper, diff=(mean - paper) if paper is not None and mean is not None else None,
        ).model_dump())
    order = {m: i for i, m in enumerate(dict.fromkeys(r["method"] for r in records))}
    rows.sort(key=lambda r: (r["fraction"] != 1.0, -r["fraction"], r["protocol"], order[r["method"]]))
    columns: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        columns.setdefault(column_key(r), []).append(r)
    for col in columns.values():
        scored = [r for r in col if r["mean"] is not None]
        if len(scored) > 1:
            top = max(r["mean"] for r in scored)
            for r in scored:
                r["best"] = r["mean"] == top
    return rows


def compare_to_baseline(records: list[dict[str, Any]], baseline: str) -> list[dict[str, Any]]:
    """Every other method against ``baseline`` in each column where both exist, on identical
    (fold, seed) pairs. The sign-flip test marks a row (Holm-corrected over the whole family,
    p < :data:`~harness.report.stats.ALPHA`); the bootstrap and Wilcoxon p beside it are
    Holm-corrected too, descriptive only."""
    by_method: dict[tuple, dict[tuple, float | None]] = {}
    for r in records:
        by_method.setdefault((r["method"], *column_key(r)), {})[(r["fold"], int(r["seed"]))] = \
            r["metric"]["value"]
    out = []
    for (method, protocol, fraction), values in by_method.items():
        base = by_method.get((baseline, protocol, fraction))
        if method == baseline or base is None:
            continue
        diffs = stats.paired_diffs(values, base)
        p_boot, ci = stats.paired_bootstrap(diffs)
        p_flip, how = stats.sign_flip(diffs)
        out.append(Comparison(method=method, baseline=baseline, protocol=protocol,
                              fraction=fraction, n_pairs=len(diffs),
                              mean_diff=sum(diffs) / len(diffs) if diffs else None, diff_ci=ci,
                              diff_t_ci=stats.paired_t_interval(diffs), p_signflip=p_flip,
                              signflip=how, p_min=stats.smallest_p(len(diffs)),
                              p_bootstrap=p_boot, p_wilcoxon=stats.wilcoxon(diffs)).model_dump())
    for test in ("signflip", "bootstrap", "wilcoxon"):
        adjusted = stats.holm([c[f"p_{test}"] for c in out])
        for c, p in zip(out, adjusted):
            c[f"p_{test}_holm"] = p
    for c in out:
        c["significant"] = c["p_signflip_holm"] is not None and c["p_signflip_holm"] < stats.ALPHA
    return out


def power_note(comparisons: list[dict[str, Any]]) -> dict[str, Any] | None:
    """What the pairs allow: the smallest p attainable with the fewest pairs of any comparison,
    the Holm family size, whether any mark is reachable at all and how many pairs would be."""
    sizes = [c["n_pairs"] for c in comparisons if c["n_pairs"]]
    if not sizes:
        return None
    family = sum(1 for c in comparisons if c.get("p_signflip") is not None)
    n = min(sizes)
    best = max(sizes)
    return {"alpha": stats.ALPHA, "min_pairs": n, "max_pairs": best, "family": family,
            "p_min": stats.smallest_p(n), "p_min_best": stats.smallest_p(best),
            "reachable": family * stats.smallest_p(best) < stats.ALPHA,
            "pairs_needed": stats.pairs_needed(stats.ALPHA, max(1, family))}


def paper_comparison(records: list[dict[str, Any]], registry: Registry) -> list[dict[str, Any]]:
    """Our like-for-like value (whatever the headline metric) beside the thesis's number, with
    a flag when the published value lies outside our 95% interval."""
    out = []
    for (method, protocol, fraction), recs in _group(records).items():
        table = recs[0].get("reference")
        target = like_for_like(table, registry)
        if target is None:
            continue
        paper = published_value(table, method, protocol, fraction)
        values = [metric_of(registry, r, *target) for r in recs]
        mean, std = stats.mean_std(values)
        lo, hi = stats.t_interval(values)
        outside = None if paper is None or lo is None else not (lo <= paper <= hi)
        out.append({"method": method, "protocol": protocol, "fraction": fraction, "table": table,
                    "metric": target[0], "variant": target[1], "mean": mean, "std": std,
                    "ci_low": lo, "ci_high": hi, "n": len(stats.clean(values)), "paper": paper,
                    "diff": None if paper is None or mean is None else mean - paper,
                    "outside_ci": outside})
    return out


def literature_comparison(records: list[dict[str, Any]], registry: Registry) -> list[dict[str, Any]]:
    """Per dataset with published instance-segmentation figures (``harness/references/
    literature.yaml``): those figures beside our instance-variant mPQ/bPQ of every row whose
    records come from an instance head (``head`` other than semantic) scored by the official
    metric (``instance`` variant)."""
    out = []
    chosen = [r for r in records if r.get("head") and r["metric"].get("variant") == "instance"]
    for dataset in dict.fromkeys(r["dataset"] for r in chosen):
        published = literature(dataset)
        if published is None or not published.get("systems"):
            continue
        ours = []
        for (method, protocol, fraction), recs in _group(
                [r for r in chosen if r["dataset"] == dataset]).items():
            row = {"method": method, "protocol": protocol, "fraction": fraction,
                   "folds": sorted({r["fold"] for r in recs}), "head": recs[0]["head"]}
            for name in ("mpq", "bpq"):
                row[name], row[f"{name}_std"] = stats.mean_std(
                    [metric_of(registry, r, name, "instance") for r in recs])
            ours.append(row)
        out.append({"dataset": dataset, "aggregation": published.get("aggregation", ""),
                    "systems": published.get("systems", []), "ours": ours})
    return out


def pooled_rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """For datasets whose literature entry names a pooled PQ (Lizard: CoNIC's mPQ+): its value
    per (method, protocol, fraction) in the records' variant, mean and std over the records."""
    out = []
    for (method, protocol, fraction), recs in _group(records).items():
        published = literature(recs[0]["dataset"])
        if not published or not published.get("pooled"):
            continue
        variant = recs[0]["metric"].get("variant") or "instance"
        values = [((r.get("metrics") or {}).get("pooled") or {}).get(variant, {}).get("mpq_plus")
                  for r in recs]
        mean, std = stats.mean_std(values)
        out.append({"method": method, "protocol": protocol, "fraction": fraction,
                    "variant": variant, "mpq_plus": mean, "std": std,
                    "n": len(stats.clean(values)), "definition": published["pooled"]})
    return out


def _nanmean_dicts(dicts: list[dict[str, Any]], field: str | None = None) -> dict[str, Any]:
    keys = list(dict.fromkeys(k for d in dicts for k in d))
    result = {}
    for k in keys:
        vals = [d[k][field] if field else d[k] for d in dicts if k in d]
        mean, std = stats.mean_std(vals)
        result[k] = {"mean": mean, "std": std, "n": len(stats.clean(vals))}
    return result


def breakdown(records: list[dict[str, Any]], registry: Registry) -> dict[str, Any]:
    """Every variant of each metric family that has variants (PQ: both): the overall value of
    each of its metrics (mPQ, bPQ), per class and per tissue (its first metric), averaged over
    folds and seeds per (method, protocol, fraction). Empty for records of families without
    variants (e.g. Dice)."""
    out: dict[str, Any] = {}
    for info in registry.metric_families.values():
        for variant in info.cls.variants:
            entries = _variant_breakdown(records, variant, info.cls.metric_names)
            if entries["overall"]:
                out[variant] = entries
    return out


def _variant_breakdown(records: list[dict[str, Any]], variant: str,
                       names: tuple[str, ...]) -> dict[str, list[dict[str, Any]]]:
    entries: dict[str, list[dict[str, Any]]] = {"overall": [], "per_class": [], "per_tissue": []}
    for (method, protocol, fraction), recs in _group(records).items():
        parts = [r["metrics"][variant] for r in recs if isinstance(r["metrics"].get(variant), dict)]
        if not parts:
            continue
        key = {"method": method, "protocol": protocol, "fraction": fraction}
        entries["overall"].append({**key, "values": _nanmean_dicts(
            [{m: p.get(m) for m in names} for p in parts])})
        entries["per_class"].append({**key, "values": _nanmean_dicts(
            [p.get("per_class") or {} for p in parts])})
        entries["per_tissue"].append({**key, "values": _nanmean_dicts(
            [p.get("per_tissue") or {} for p in parts], names[0])})
    return entries


def default_baseline(records: list[dict[str, Any]]) -> str | None:
    """The first method of the records (the spec's order) when there are several, else None."""
    methods = list(dict.fromkeys(r["method"] for r in records))
    return methods[0] if len(methods) > 1 else None


def build_report(records: list[dict[str, Any]], runs: list[dict[str, Any]],
                 baseline: str | None = None, *, registry: Registry | None = None) -> Report:
    """The whole report; ``runs`` are the run descriptions (``run.json``) of the merged runs;
    ``registry``: the plugins that read the records (None: the installed ones)."""
    registry = installed(registry)
    methods = {r["method"] for r in records}
    if baseline is not None and baseline not in methods:
        from harness.errors import SpecError

        raise SpecError(f"--baseline {baseline}: no such method in the records "
                           f"(have: {', '.join(sorted(methods))})")
    baseline = baseline or default_baseline(records)
    comparisons = compare_to_baseline(records, baseline) if baseline else []
    single = facts.single_class_rows(records)
    # the headline: the spec's metric; a protocol's own (e.g. a probe's) only when no other
    own = [r for r in records if r["metric"].get("protocol_metric")]
    metrics = list(dict.fromkeys((r["metric"]["name"], r["metric"].get("variant"))
                                 for r in [r for r in records if r not in own] + own))
    names = [str(r.get("name")) for r in runs if r.get("name")] or \
        list(dict.fromkeys(r["run"] for r in records))
    return Report.model_validate({
        "schema": REPORT_SCHEMA, "run": " + ".join(names) if names else None, "runs": names,
        "metric": metrics[0][0] if metrics else None, "variant": metrics[0][1] if metrics else None,
        "rows": summarize(records, registry), "baseline": baseline,
        "comparisons": comparisons, "power": power_note(comparisons),
        "paper": paper_comparison(records, registry), "breakdown": breakdown(records, registry),
        "literature": literature_comparison(records, registry), "pooled": pooled_rows(records),
        **{k.report_section[0]: k.report_rows(records, partial(metric_of, registry))
           for k in section_kinds(registry)},
        "single_class": single,
        "encoders": facts.encoder_rows(records),
        "warnings": [facts.warning_text(e) for e in single],
        "provenance": collect_provenance(records, runs),
    })
