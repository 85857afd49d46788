"""``evaluate``: a trained model (input ``model``) on the complete test fold; predictions are
the argmax of the logits of the model its protocol builds. Kinds derived from it (a plugin's,
e.g. a labeler's score) evaluate alike under their own name."""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Sequence

from harness.hookspecs import hookimpl
from harness.keying import ENGINE_VERSION
from harness.spec.models import FinetuneSettings
from harness.stages.base import StageKind, StageParams
from harness.store import hash_key

if TYPE_CHECKING:
    from harness.data.base import Dataset
    from harness.plan import Planning, Stage
    from harness.spec.models import FinetuneSettings


class EvaluateParams(StageParams):
    dataset: str | None  # the labeled dataset's plugin name; None: the spec's own dataset
    test_ids: list[str]
    protocol: str  # the protocol whose network the model artifact loads into
    settings: FinetuneSettings


class EvaluateStage(StageKind):
    kind = "evaluate"
    description = "metrics of a model on a test fold"
    Params = EvaluateParams

    @classmethod
    def create(cls, plan: Planning, *, model: Stage, dataset: Dataset, test_ids: Sequence[str],
               fold: str, source: str | None = None, settings: FinetuneSettings | None = None
               ) -> Stage:
        """The ``model`` stage (its config names its ``protocol``, default ``full``) on
        ``test_ids`` of ``dataset`` (``source``: its plugin name, None for the spec's own)."""
        head = model.config.get("settings", {}).get("head", "semantic")
        return cls.make(
            label=f"evaluate {model.label}",
            config={"dataset": dataset.fingerprint(), "fold": fold, "test_ids": hash_key(list(test_ids)),
                    "metric_family": dataset.metric_family,
                    **({"head": head} if head != "semantic" else {})},
            version=ENGINE_VERSION, deps={"model": model}, info={"test_ids": list(test_ids)},
            params=EvaluateParams(dataset=source, test_ids=list(test_ids),
                                  protocol=model.config.get("protocol", "full"),
                                  settings=settings or plan.spec.finetune))

    def run(self, stage, inputs, ctx, env):
        from harness.engine.evaluate import evaluate

        cfg, params = stage.config, self.params_of(stage)
        dataset, arrays = env.labeled(params.dataset)
        settings = params.settings
        return evaluate(ctx, arrays=arrays, test_ids=params.test_ids, num_classes=dataset.num_classes,
                        class_names=dataset.class_names,
                        metric_family=env.registry.metric_family(cfg["metric_family"]),
                        settings=settings,
                        build=partial(env.protocol(params.protocol).build_model, settings=settings),
                        head=cfg.get("head", "semantic"))


@hookimpl
def harness_register_stage_kinds():
    return [EvaluateStage]
