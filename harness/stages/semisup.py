"""``semisup``: a semi-supervised method's whole U-Net (its EMA teacher) from a labeled split
and the unlabeled images."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from harness.hookspecs import hookimpl
from harness.inputs import check_input_files
from harness.keying import (ENGINE_VERSION, PROTOCOL_SETTINGS, MethodRef, flat, method_settings,
                            result_settings)
from harness.spec.models import FinetuneSettings
from harness.stages.base import StageKind, StageParams
from harness.store import hash_key

if TYPE_CHECKING:
    from harness.data.base import Dataset
    from harness.methods import Method
    from harness.plan import Planning, Stage


class SemisupParams(StageParams):
    method: MethodRef
    dataset: str | None  # None: the spec's own dataset
    train_ids: list[str]
    settings: FinetuneSettings


#: Fine-tuning settings the semi-supervised engine does not read (its gradient clipping is the
#: method's ``grad_clip_norm``; it accumulates no gradients): in none of its keys.
_UNREAD = ("drop_last", "pseudolabel_amp", "grad_accumulation", "grad_clip_norm") + PROTOCOL_SETTINGS


class SemisupStage(StageKind):
    kind = "semisup"
    description = "a semi-supervised method's U-Net"
    distributed = True  # the shared training loop: DDP over gpus_per_stage processes
    log_file = "train_log.json"
    Params = SemisupParams

    @classmethod
    def create(cls, plan: Planning, *, method: Method, version: str, dataset: Dataset,
               chosen: dict[str, list[str]], seed: int, label: str,
               extra: dict[str, Any] | None = None) -> Stage:
        """``method``'s whole model from the ``chosen`` labeled ids (by group) of the spec's
        ``dataset`` and the unlabeled images; the evaluation stage reads it like a fine-tuned one."""
        train_ids = flat(chosen)
        settings = plan.spec.finetune
        keyed, files = plan.keyed(method, method_settings(method.config.model_dump(mode="json")))
        return cls.make(
            label=label,
            config={"method": method.name, "settings": keyed,
                    "finetune": result_settings(settings, _UNREAD),
                    "dataset": dataset.fingerprint(),
                    "unlabeled": plan.resources.unlabeled_dataset().fingerprint(), "seed": seed,
                    "train_ids": hash_key(train_ids), **(extra or {})},
            version=f"{version}/engine{ENGINE_VERSION}", info={"train_ids": chosen, **files},
            params=SemisupParams(method=MethodRef.of(method), dataset=None, train_ids=train_ids,
                                 settings=settings))

    def run(self, stage, inputs, ctx, env):
        from harness.engine.semisup import train_semisupervised

        cfg, params = stage.config, self.params_of(stage)
        files = check_input_files(stage, env.file_hash_cache)  # the bytes the key names
        dataset, arrays = env.labeled(params.dataset)
        result = train_semisupervised(
            ctx, method=env.method(params.method), arrays=arrays, train_ids=params.train_ids,
            unlabeled_images=env.resources.unlabeled_images(), num_classes=dataset.num_classes,
            settings=params.settings, seed=cfg["seed"])
        return {**result, "input_files": files} if files else result


@hookimpl
def harness_register_stage_kinds():
    return [SemisupStage]
