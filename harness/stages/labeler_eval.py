"""``labeler_eval``: the labeler's score on the labeler dataset's held-out groups; a record
shows its metrics and its mPQ (the spec's PQ variant) as ``value``."""

from __future__ import annotations

import json

from harness.hookspecs import hookimpl
from harness.stages.evaluate import EvaluateStage


class LabelerEvalStage(EvaluateStage):
    kind = "labeler_eval"
    description = "the labeler's metrics on its held-out groups"

    def record_summary(self, stage, result, path, env):
        metrics = json.loads((path / "metrics.json").read_text())
        entry = {"metrics": metrics}
        if "instance" in metrics:
            entry["value"] = metrics[env.spec.metric.pq_variant]["mpq"]
        return entry


@hookimpl
def harness_register_stage_kinds():
    return [LabelerEvalStage]
