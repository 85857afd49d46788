"""Result records: one JSON document per finished cell, built from the plan's cell (its
coordinates, its plugin) and what its stages published (their summaries, the metrics)."""

from __future__ import annotations

import json
import time
from typing import Any

from harness.plan import Cell, Stage
from harness.report.schema import RECORD_SCHEMA


def read_metrics(store: Any, stage: Stage) -> dict[str, Any]:
    return json.loads((store.stage_dir(stage.kind, stage.key) / "metrics.json").read_text())


def upstream_summaries(cell: Cell, timings: dict[str, dict[str, Any]], store: Any, env: Any) -> dict[str, Any]:
    """What the stages before the cell's model published for records (pretraining losses, the
    labeler's score, pseudo-label class fractions...), keyed by stage kind (the first of each)."""
    out: dict[str, Any] = {}
    final = {cell.final.key, cell.final.deps["model"].key}
    for stage in cell.stages():
        if stage.key in final or stage.kind in out:
            continue
        kind = env.registry.stage_kind(stage.kind).cls()
        out[stage.kind] = kind.record_summary(stage, timings[stage.key]["result"],
                                              store.stage_dir(stage.kind, stage.key), env)
    return out


def labeler_facts(cell: Cell, dataset: str) -> dict[str, Any]:
    """The cell's labeler (the first ``labeler`` stage upstream), if it has one: its protocol,
    dataset, training ids by group, how many of the cell's test images it was trained on
    (labels of the test fold) and how many training images beyond the cell's own labeled ones.
    Overlaps count only when the labeler learned from the spec's own dataset (``dataset``)."""
    labeler = next((s for s in cell.stages() if s.kind == "labeler"), None)
    if labeler is None:
        return {}
    ev, ft = cell.final, cell.final.deps["model"]
    source = labeler.params.get("dataset") or dataset
    train = labeler.info.get("train_ids") or {}
    ids = {i for group in train.values() for i in group}
    same = source == dataset
    own = {i for group in ft.info.get("train_ids", {}).values() for i in group}
    return {"labeler": {
        "protocol": cell.info.get("labeler_protocol", "thesis"), "dataset": source,
        "train_ids": train, "images": len(ids),
        "test_images_seen": len(ids & set(ev.info["test_ids"])) if same else 0,
        "images_beyond_cell": len(ids - own) if same else None}}


def build_record(rspec: Any, cell: Cell, timings: dict[str, dict[str, Any]], metrics: dict[str, Any],
                 metric: dict[str, Any], upstream: dict[str, Any], provenance: dict[str, Any]) -> dict[str, Any]:
    spec = rspec.spec
    ev = cell.final
    ft = ev.deps["model"]
    return {
        "schema": RECORD_SCHEMA,
        "run": spec.name,
        "cell_id": cell.cell_id,
        **cell.coordinates,
        "plugin": cell.plugin,
        "dataset": spec.dataset.name,
        "reference": spec.reference,
        **({"head": spec.finetune.head} if spec.finetune.head != "semantic" else {}),
        "metric": metric,
        "metrics": metrics,
        "split": {"train_ids": ft.info["train_ids"], "test_ids": ev.info["test_ids"]},
        "train": timings[ft.key]["result"],
        "upstream": upstream,
        **labeler_facts(cell, spec.dataset.name),
        "evaluation": timings[ev.key]["result"],
        "stages": [{"kind": s.kind, "key": s.key, "label": s.label,
                    "cached": timings[s.key]["cached"], "seconds": timings[s.key]["seconds"]}
                   for s in cell.stages()],
        "overrides": rspec.overrides,
        "provenance": {**provenance, "seed": cell.seed},
        "created_at": time.time(),
    }
