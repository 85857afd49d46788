"""Facts of the report beyond the headline numbers, from records only:

* **labelers**: for each row whose cells pseudo-label with a labeler, the labeler's score (its
  evaluation stage, in the row's headline metric), its protocol (``thesis``: fixed groups;
  ``per_cell``: the cell's own training split) and in how many cells it was trained on labels
  of the cell's test fold (from the record's labeler train ids against its test ids). Records
  from before labeler protocols existed carry no such facts: their protocol shows as
  ``thesis?`` and their test-fold overlap as unknown.
* **warnings**: models whose predictions are a single class on every test image (from the
  evaluate stage's per-image facts; records from before those facts get no warning).
"""

from __future__ import annotations

from typing import Any, Callable

from harness.report import stats


def _group(records: list[dict[str, Any]]) -> dict[tuple, list[dict[str, Any]]]:
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["method"], r["protocol"], float(r["fraction"])), []).append(r)
    return groups


def _labeler_score(record: dict[str, Any], metric_of: Callable[..., float | None]) -> float | None:
    ev = (record.get("upstream") or {}).get("labeler_eval") or {}
    metric = record["metric"]
    value = metric_of({"metrics": ev.get("metrics") or {}}, metric["name"], metric.get("variant"))
    return value if value is not None else ev.get("value")


def labeler_rows(records: list[dict[str, Any]],
                 metric_of: Callable[..., float | None]) -> list[dict[str, Any]]:
    """One entry per (method, protocol, fraction) with a labeler upstream (see the module doc);
    ``metric_of(record, name, variant)`` reads a metric as its family does."""
    out = []
    for (method, protocol, fraction), recs in _group(records).items():
        cells = [r for r in recs if r.get("labeler") or "labeler_eval" in (r.get("upstream") or {})]
        if not cells:
            continue
        known = [r["labeler"] for r in cells if r.get("labeler")]
        scores = [_labeler_score(r, metric_of) for r in cells]
        mean, std = stats.mean_std(scores)
        beyond = [k["images_beyond_cell"] for k in known if k.get("images_beyond_cell") is not None]
        out.append({
            "method": method, "protocol": protocol, "fraction": fraction, "cells": len(cells),
            "protocols": sorted({k.get("protocol", "thesis") for k in known}
                                | ({"thesis?"} if len(known) < len(cells) else set())),
            "score_mean": mean, "score_std": std, "score_n": len(stats.clean(scores)),
            "metric": cells[0]["metric"]["name"], "variant": cells[0]["metric"].get("variant"),
            "cells_test_labels": sum(1 for k in known if k.get("test_images_seen")),
            "cells_unknown": len(cells) - len(known),
            "labeler_images": max((k.get("images") or 0 for k in known), default=None),
            "images_beyond_cell": max(beyond) if beyond else None})
    return out


def encoder_rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per (method, protocol): the network its cells fine-tuned (architecture,
    encoder, parameters, patch size), from the fine-tuning summary (absent in older records)."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for r in records:
        net = (r.get("train") or {}).get("network")
        if net and (r["method"], r["protocol"]) not in out:
            out[(r["method"], r["protocol"])] = {"method": r["method"], "protocol": r["protocol"], **net}
    return list(out.values())


def single_class_rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows with cells whose model predicts a single class on every test image."""
    out = []
    for (method, protocol, fraction), recs in _group(records).items():
        flat = []
        for r in recs:
            ev = r.get("evaluation") or {}
            n, single = ev.get("test_images"), ev.get("single_class_images")
            if n and single == n:
                flat.append(r)
        if flat:
            classes = sorted({c for r in flat for c, k in r["evaluation"].get("images_with_class", {}).items() if k})
            out.append({"method": method, "protocol": protocol, "fraction": fraction,
                        "cells": len(flat), "of": len(recs), "classes": classes,
                        "cell_ids": [r["cell_id"] for r in flat]})
    return out


def warning_text(entry: dict[str, Any]) -> str:
    what = ", ".join(entry["classes"]) or "?"
    return (f"`{entry['method']}` {entry['protocol']} @ {entry['fraction'] * 100:g}%: the model "
            f"predicts a single class on every test image in {entry['cells']} of {entry['of']} "
            f"cells (predicted: {what}); its score measures a degenerate model")
