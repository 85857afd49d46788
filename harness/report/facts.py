"""Facts of the report beyond the headline numbers, from records only (stage kinds add their
own sections: ``StageKind.report_section``, :func:`harness.report.build.section_kinds`):

* **networks**: the network each row fine-tuned.
* **warnings**: models whose predictions are a single class on every test image (from the
  evaluate stage's per-image facts; records from before those facts get no warning).
"""

from __future__ import annotations

from typing import Any


def group_rows(records: list[dict[str, Any]]) -> dict[tuple, list[dict[str, Any]]]:
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["method"], r["protocol"], float(r["fraction"])), []).append(r)
    return groups


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
    for (method, protocol, fraction), recs in group_rows(records).items():
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
