"""``pretrain``: an encoder trained on unlabeled images (and pseudo-label masks, input
``masks``), continuing a previous cycle's model (input ``previous``) in cyclic training."""

from __future__ import annotations

from typing import TYPE_CHECKING

from harness.hookspecs import hookimpl
from harness.inputs import check_input_files
from harness.keying import ENGINE_VERSION, MethodRef, encoder_args, method_settings
from harness.stages.base import StageKind, StageParams

if TYPE_CHECKING:
    from harness.methods import Method
    from harness.plan import Planning, Stage
    from harness.spec.models import FinetuneSettings


class PretrainParams(StageParams):
    method: MethodRef
    num_classes: int | None = None  # the masks' classes (with ``masks``)


class PretrainStage(StageKind):
    kind = "pretrain"
    description = "a pretraining method's encoder"
    distributed = True  # the shared training loop: DDP over gpus_per_stage processes
    log_file = "pretrain_log.json"
    Params = PretrainParams

    @classmethod
    def create(cls, plan: Planning, *, method: Method, version: str, seed: int,
               settings: FinetuneSettings | None = None, masks: Stage | None = None,
               num_classes: int | None = None, previous: Stage | None = None,
               cycle: int | None = None, label_suffix: str = "") -> Stage:
        """``method``'s pretraining for the encoder of fine-tuning ``settings`` (the row's,
        default the spec's): on pseudo-label ``masks`` (a stage, with their ``num_classes``)
        when given, continuing ``previous`` (the stage of cycle ``cycle - 1``)."""
        settings = settings or plan.spec.finetune
        deps = {name: s for name, s in (("masks", masks), ("previous", previous)) if s is not None}
        keyed, info = plan.keyed(method, method_settings(method.key_settings()))
        label = f"{method.name} pretrain seed {seed}{label_suffix}" + (f" cycle {cycle}" if cycle else "")
        return cls.make(
            label=label,
            config={"method": method.name, "settings": keyed, "encoder": settings.encoder, "seed": seed,
                    "unlabeled": plan.resources.unlabeled_dataset().fingerprint(), "cycle": cycle,
                    **encoder_args(settings, plan.registry)},
            version=f"{version}/engine{ENGINE_VERSION}", deps=deps, info=info,
            params=PretrainParams(method=MethodRef.of(method),
                                  num_classes=num_classes if masks is not None else None))

    def run(self, stage, inputs, ctx, env):
        import numpy as np

        from harness.engine.pretrain import pretrain
        from harness.safeload import STAGE_FIX, load_state_dict_file

        cfg, params = stage.config, self.params_of(stage)
        files = check_input_files(stage, env.file_hash_cache)  # the bytes the key names
        masks = np.load(inputs["masks"] / "masks.npy", mmap_mode="r") if "masks" in inputs else None
        start = (load_state_dict_file(inputs["previous"] / "model.pt", fix=STAGE_FIX)
                 if "previous" in inputs else None)
        result = pretrain(ctx, method=env.method(params.method), images=env.resources.unlabeled_images(),
                          masks=masks, encoder_name=cfg["encoder"], seed=cfg["seed"],
                          num_classes=params.num_classes, start_from=start,
                          encoder_args=cfg.get("encoder_args"))
        return {**result, "input_files": files} if files else result


@hookimpl
def harness_register_stage_kinds():
    return [PretrainStage]
