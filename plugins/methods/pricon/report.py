"""The report's **Labelers** section for rows whose cells pseudo-label with a labeler (PRICon),
from records only: the labeler's score (its ``labeler_eval`` stage, in the row's headline
metric), its protocol (``thesis``: fixed groups; ``per_cell``: the cell's own training split)
and in how many cells it was trained on labels of the cell's test fold (from the record's
``labeler`` train ids against its test ids); the main table marks such rows with †. Records
from before labeler protocols existed carry no such facts: their protocol shows as ``thesis?``
and their test-fold overlap as unknown. Reached through the ``labeler`` stage kind's report
hooks (:class:`harness.stages.base.StageKind`)."""

from __future__ import annotations

from typing import Any, Callable

from harness.report import stats
from harness.report.facts import group_rows
from harness.report.tables import Table, column_name, columns, mean_text


def _labeler_score(record: dict[str, Any], metric: dict[str, Any],
                   metric_of: Callable[..., float | None]) -> float | None:
    ev = (record.get("upstream") or {}).get("labeler_eval") or {}
    value = metric_of({"metrics": ev.get("metrics") or {}}, metric["name"], metric.get("variant"))
    return value if value is not None else ev.get("value")


def labeler_rows(records: list[dict[str, Any]],
                 metric_of: Callable[..., float | None]) -> list[dict[str, Any]]:
    """One entry per (method, protocol, fraction) with a labeler upstream (see the module doc);
    ``metric_of(record, name, variant)`` reads a metric as its family does."""
    out = []
    # a labeler is scored by the spec's headline metric, which a cell of a protocol that scores
    # itself (its own metric in its record, e.g. a probe) does not carry
    headline = next((r["metric"] for r in records if not r["metric"].get("protocol_metric")), None)
    for (method, protocol, fraction), recs in group_rows(records).items():
        cells = [r for r in recs if r.get("labeler") or "labeler_eval" in (r.get("upstream") or {})]
        if not cells:
            continue
        metric = headline or cells[0]["metric"]
        known = [r["labeler"] for r in cells if r.get("labeler")]
        scores = [_labeler_score(r, metric, metric_of) for r in cells]
        mean, std = stats.mean_std(scores)
        beyond = [k["images_beyond_cell"] for k in known if k.get("images_beyond_cell") is not None]
        out.append({
            "method": method, "protocol": protocol, "fraction": fraction, "cells": len(cells),
            "protocols": sorted({k.get("protocol", "thesis") for k in known}
                                | ({"thesis?"} if len(known) < len(cells) else set())),
            "score_mean": mean, "score_std": std, "score_n": len(stats.clean(scores)),
            "metric": metric["name"], "variant": metric.get("variant"),
            "cells_test_labels": sum(1 for k in known if k.get("test_images_seen")),
            "cells_unknown": len(cells) - len(known),
            "labeler_images": max((k.get("images") or 0 for k in known), default=None),
            "images_beyond_cell": max(beyond) if beyond else None})
    # the same order whether the records come from a run (plan order) or a folder (file names)
    return sorted(out, key=lambda e: (e["method"], e["protocol"], -e["fraction"]))


def labeler_table(report: dict[str, Any]) -> Table:
    cols, several = columns(report["rows"])
    table = Table("Labelers behind pseudo-label rows", ["method", "column", "labeler protocol",
                  "labeler score", "cells", "trained on test-fold labels", "labeled images",
                  "beyond the cell's labels"], [], name="labelers")
    for e in report.get("labelers", []):
        metric = e["metric"] + (f" ({e['variant']})" if e.get("variant") else "")
        score = mean_text({"mean": e["score_mean"], "std": e["score_std"]})
        seen = f"{e['cells_test_labels']} of {e['cells']}" + \
            (f" ({e['cells_unknown']} unknown)" if e["cells_unknown"] else "")
        table.rows.append([e["method"], column_name(e["protocol"], e["fraction"], several),
                           ", ".join(e["protocols"]), f"{score} {metric} (n={e['score_n']})", str(e["cells"]),
                           seen, "-" if e["labeler_images"] is None else str(e["labeler_images"]),
                           "-" if e["images_beyond_cell"] is None else str(e["images_beyond_cell"])])
    table.notes.append("Labeler score: the labeler on its evaluation images (protocol `thesis`: the "
                       "held-out fixed group; `per_cell`: the cell's test fold, a score only, "
                       "nothing downstream reads it), in the row's metric. Trained on test-fold "
                       "labels: cells whose labeler's training ids include test images of the cell. "
                       "Beyond the cell's labels: the most labeler training images a cell's own "
                       "fine-tuning labels do not include (at 1%/10%, the thesis's labeler sees "
                       "100%). `thesis?`: a record from before labeler protocols were recorded.")
    return table


def labeler_marks(report: dict[str, Any]) -> tuple[dict[tuple[str, str, float], str], str | None]:
    """† on the rows whose labeler saw test-fold labels, and its note."""
    marks = {(e["method"], e["protocol"], e["fraction"]): "†"
             for e in report.get("labelers", []) if e["cells_test_labels"]}
    note = ("†: the labeler behind this row's pseudo-labels was trained on labels of the test fold "
            "(labeler protocol `thesis`: fixed folds whatever the test fold), an advantage no other "
            "row has; `labeler.protocol: per_cell` trains each cell's labeler on its own training "
            "split (see Labelers).") if marks else None
    return marks, note
