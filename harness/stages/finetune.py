"""``finetune``: a protocol's model trained on a labeled split from an encoder (input
``encoder``). Kinds derived from it (a plugin's, e.g. a labeler) train alike under their own
name."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from harness.hookspecs import hookimpl
from harness.keying import FINETUNE_VERSION, PROTOCOL_SETTINGS, flat, result_settings
from harness.spec.models import FinetuneSettings
from harness.stages.base import StageKind, StageParams
from harness.store import hash_key

if TYPE_CHECKING:
    from harness.data.base import Dataset
    from harness.plan import Planning, Stage
    from harness.spec.models import FinetuneSettings


class FinetuneParams(StageParams):
    dataset: str | None  # the labeled dataset's plugin name; None: the spec's own dataset
    train_ids: list[str]
    settings: FinetuneSettings


class FinetuneStage(StageKind):
    kind = "finetune"
    description = "a model fine-tuned from an encoder, as its protocol says"
    distributed = True  # the shared training loop: DDP over gpus_per_stage processes
    log_file = "train_log.json"
    Params = FinetuneParams

    @classmethod
    def create(cls, plan: Planning, *, encoder: Stage, dataset: Dataset, chosen: dict[str, list[str]],
               protocol: str, seed: int, settings: FinetuneSettings, label: str,
               extra: dict[str, Any] | None = None, source: str | None = None) -> Stage:
        """``protocol``'s model from the ``encoder`` stage, trained on the ``chosen`` ids (by
        group) of ``dataset`` (``source``: its plugin name, None for the spec's own dataset)."""
        train_ids = flat(chosen)
        reads = getattr(plan.registry.protocol(protocol).cls, "reads", ())
        unread = ("pseudolabel_amp",) + tuple(k for k in PROTOCOL_SETTINGS if k not in reads)
        return cls.make(
            label=label,
            config={"dataset": dataset.fingerprint(), "seed": seed, "protocol": protocol,
                    "train_ids": hash_key(train_ids), "settings": result_settings(settings, unread),
                    **(extra or {})},
            version=FINETUNE_VERSION, deps={"encoder": encoder}, info={"train_ids": chosen},
            params=FinetuneParams(dataset=source, train_ids=train_ids, settings=settings))

    def run(self, stage, inputs, ctx, env):
        from harness.engine.finetune import finetune

        cfg, params = stage.config, self.params_of(stage)
        dataset, arrays = env.labeled(params.dataset)
        return finetune(ctx, arrays=arrays, train_ids=params.train_ids, num_classes=dataset.num_classes,
                        settings=params.settings, protocol=env.protocol(cfg["protocol"]), seed=cfg["seed"])


@hookimpl
def harness_register_stage_kinds():
    return [FinetuneStage]
