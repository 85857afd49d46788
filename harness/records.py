"""Result records: one JSON document per finished cell, built from the plan's cell (its
coordinates, its plugin) and what its stages published (their summaries, the metrics)."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from harness.plan import Cell, Stage
from harness.report.schema import RECORD_SCHEMA

if TYPE_CHECKING:
    from harness.spec.models import ResolvedSpec
    from harness.stages.base import StageEnv
    from harness.store import ArtifactStore


def read_metrics(store: ArtifactStore, stage: Stage) -> dict[str, Any]:
    return json.loads((store.stage_dir(stage.kind, stage.key) / "metrics.json").read_text())


def upstream_summaries(cell: Cell, timings: dict[str, dict[str, Any]], store: ArtifactStore,
                       env: StageEnv) -> dict[str, Any]:
    """What the stages before the cell's model published for records (pretraining losses, a
    labeler's score, pseudo-label class fractions...), keyed by stage kind (the first of each)."""
    out: dict[str, Any] = {}
    for stage in _upstream(cell):
        kind = env.registry.create("stage kind", stage.kind)
        out[stage.kind] = kind.record_summary(stage, timings[stage.key]["result"],
                                              store.stage_dir(stage.kind, stage.key), env)
    return out


def cell_facts(cell: Cell, env: StageEnv) -> dict[str, Any]:
    """Top-level facts the stages before the cell's model add to its record (each kind's
    ``record_facts``, the first stage of each kind; e.g. a labeler's training ids)."""
    out: dict[str, Any] = {}
    for stage in _upstream(cell):
        kind = env.registry.create("stage kind", stage.kind)
        out.update(kind.record_facts(stage, cell, env.spec.dataset.name))
    return out


def _upstream(cell: Cell) -> list[Stage]:
    """The first stage of each kind before the cell's model (not the model, not its evaluation)."""
    final, kinds, out = {cell.final.key, cell.model.key}, set(), []
    for stage in cell.stages():
        if stage.key not in final and stage.kind not in kinds:
            kinds.add(stage.kind)
            out.append(stage)
    return out


def build_record(rspec: ResolvedSpec, cell: Cell, timings: dict[str, dict[str, Any]], metrics: dict[str, Any],
                 metric: dict[str, Any], upstream: dict[str, Any], provenance: dict[str, Any],
                 facts: dict[str, Any] | None = None) -> dict[str, Any]:
    """``facts``: the upstream stages' top-level facts (:func:`cell_facts`)."""
    spec = rspec.spec
    ev, ft = cell.final, cell.model
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
        **(facts or {}),
        "evaluation": timings[ev.key]["result"],
        "stages": [{"kind": s.kind, "key": s.key, "label": s.label,
                    "cached": timings[s.key]["cached"], "seconds": timings[s.key]["seconds"]}
                   for s in cell.stages()],
        "overrides": rspec.overrides,
        "provenance": {**provenance, "seed": cell.seed},
        "created_at": time.time(),
    }
