"""Stage constructors: what each kind of stage hashes, depends on and runs.

Kinds: ``encoder`` (weights without training), ``pretrain`` (an encoder trained on unlabeled
images), ``labeler`` + ``labeler_eval`` (a U-Net that pseudo-labels them, with its PQ),
``pseudolabel`` (the masks), ``finetune`` (a U-Net on a labeled split) and ``evaluate``.
Identical stages are created once, so e.g. one pretraining run serves every fold, protocol and
label fraction.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from harness.errors import PluginError
from harness.plan import Stage
from harness.safeload import STAGE_FIX
from harness.store import hash_key

#: Bump when the shared loops change results: part of the keys of the stages they compute.
ENGINE_VERSION = "1"

#: Settings that do not change a result (where or how fast it is computed): not in stage keys.
RUNTIME_ONLY = {"device", "num_workers", "eval_batch_size", "channels_last"}


def _result_settings(model: Any) -> dict[str, Any]:
    return {k: v for k, v in model.model_dump(mode="json").items() if k not in RUNTIME_ONLY}


class StageFactory:
    def __init__(self, rspec: Any, registry: Any, resources: Any):
        self.rspec = rspec
        self.spec = rspec.spec
        self.registry = registry
        self.resources = resources
        self._stages: dict[str, Stage] = {}

    def _unique(self, stage: Stage) -> Stage:
        return self._stages.setdefault(stage.key, stage)

    # --- encoders -------------------------------------------------------------------------------
    def encoder_stages(self, method: Any, version: str, seed: int) -> list[tuple[str, Stage]]:
        """``(row suffix, encoder stage)`` pairs: one for most methods; one per cycle for cyclic
        pretraining (``@cycle1``, ``@cycle2``, ...), each reported as its own row."""
        if method.kind == "init":
            return [("", self.init_stage(method, version, seed))]
        if method.kind == "pretrain":
            return self.pretrain_stages(method, version, seed)
        raise PluginError(f"method '{method.name}' of kind '{method.kind}' has no encoder stage "
                          f"this harness version can build")

    def init_stage(self, method: Any, version: str, seed: int) -> Stage:
        from harness.engine.init_encoder import run_init_encoder

        encoder_name = self.spec.finetune.encoder
        enc_seed = seed if method.seed_dependent else None
        return self._unique(Stage(
            kind="encoder", label=f"{method.name} encoder" + (f" seed {seed}" if enc_seed is not None else ""),
            config={"method": method.name, "settings": method.config.model_dump(mode="json"),
                    "encoder": encoder_name, "seed": enc_seed},
            version=version,
            run=lambda ctx: run_init_encoder(ctx, method=method, encoder_name=encoder_name, seed=seed)))

    def random_encoder_stage(self, seed: int) -> Stage:
        """A randomly initialised encoder (labelers are trained from scratch, as in the thesis)."""
        from harness.engine.init_encoder import run_random_encoder

        encoder_name = self.spec.finetune.encoder
        return self._unique(Stage(
            kind="encoder", label=f"random encoder seed {seed}",
            config={"init": "random", "encoder": encoder_name, "seed": seed}, version=ENGINE_VERSION,
            run=lambda ctx: run_random_encoder(ctx, encoder_name=encoder_name, seed=seed)))

    def pretrain_stages(self, method: Any, version: str, seed: int) -> list[tuple[str, Stage]]:
        """Pretraining, preceded for mask-guided methods by labeler -> pseudo-labels. With
        ``cycles: K`` (Table 4.5) each cycle continues the previous cycle's encoder and heads on
        pseudo-labels from the previous cycle's encoder fine-tuned on the labeler data."""
        if getattr(method.config, "seed", None) is not None:
            seed = method.config.seed  # one pretraining chain shared by every fine-tuning seed
        cycles = method.cycles()
        masks = None
        if method.needs_masks:
            labeler_ft, labeler_ev, labeler_ds = self.labeler_stages(method, seed)
            masks = self.pseudolabel_stage(labeler_ft, labeler_ev, labeler_ds.num_classes)
        rows: list[tuple[str, Stage]] = []
        previous = None
        for cycle in range(1, cycles + 1):
            stage = self.pretrain_stage(method, version, seed, masks, previous, cycle if cycles > 1 else None)
            rows.append((f"@cycle{cycle}" if cycles > 1 else "", stage))
            if cycle < cycles and method.needs_masks:
                labeler_ft, labeler_ev, labeler_ds = self.labeler_stages(method, seed, encoder=stage,
                                                                         cycle=cycle)
                masks = self.pseudolabel_stage(labeler_ft, labeler_ev, labeler_ds.num_classes)
            previous = stage
        return rows

    def pretrain_stage(self, method: Any, version: str, seed: int, masks: Stage | None,
                       previous: Stage | None, cycle: int | None) -> Stage:
        from harness.engine.pretrain import pretrain

        encoder_name = self.spec.finetune.encoder
        unlabeled = self.resources.unlabeled_dataset()
        deps: dict[str, Stage] = {}
        num_classes = None
        if masks is not None:
            deps["masks"] = masks
            num_classes = masks.config["num_classes"]
        if previous is not None:
            deps["previous"] = previous
        # the number of cycles does not change what cycle k computes (its number is in the key);
        # the effective seed is keyed as 'seed', so `seed: 0` shares stages with a cell of seed 0
        settings = {k: v for k, v in method.config.model_dump(mode="json").items()
                    if k not in RUNTIME_ONLY and k not in ("cycles", "seed")}
        label = f"{method.name} pretrain seed {seed}" + (f" cycle {cycle}" if cycle else "")

        def run(ctx):
            import torch

            mask_arr = np.load(ctx.inputs["masks"] / "masks.npy", mmap_mode="r") if masks else None
            from harness.safeload import load_state_dict_file

            start = (load_state_dict_file(ctx.inputs["previous"] / "model.pt", fix=STAGE_FIX)
                     if previous is not None else None)
            return pretrain(ctx, method=method, images=self.resources.unlabeled_images(), masks=mask_arr,
                            encoder_name=encoder_name, seed=seed, num_classes=num_classes,
                            start_from=start)

        return self._unique(Stage(
            kind="pretrain", label=label,
            config={"method": method.name, "settings": settings, "encoder": encoder_name,
                    "seed": seed, "unlabeled": unlabeled.fingerprint(), "cycle": cycle},
            version=f"{version}/engine{ENGINE_VERSION}", deps=deps, run=run))

    # --- labeler and pseudo-labels -----------------------------------------------------------------
    def labeler_stages(self, method: Any, seed: int, encoder: Stage | None = None,
                       cycle: int | None = None) -> tuple[Stage, Stage, Any]:
        """The labeler U-Net (from a random encoder, or a pretraining cycle's encoder) trained on
        the labeler dataset's training groups, and its evaluation on the held-out group."""
        from harness.data.fractions import select_fraction

        cfg = method.labeler()
        dataset, arrays = self.resources.labeled(cfg.dataset)
        groups = sorted(set(arrays.groups))
        if cfg.train_groups is not None:
            train_groups = list(cfg.train_groups)
        elif dataset.split_scheme == "kfold":
            train_groups = groups[:-1]
        else:
            train_groups = ["train"]
        unknown = [g for g in train_groups if g not in groups]
        if unknown:
            from harness.errors import SpecError

            raise SpecError(f"methods.{method.name}.labeler.train_groups: unknown groups {unknown} "
                            f"for dataset '{dataset.name}' (it has {', '.join(groups)})")
        test_groups = [g for g in groups if g not in train_groups and g != "val"]
        by_group = {g: [s for s, gg in zip(arrays.ids, arrays.groups) if gg == g] for g in train_groups}
        if cfg.max_images is not None:
            ids = [s for g in train_groups for s in by_group[g]]
            fraction = min(1.0, cfg.max_images / max(1, len(ids)))
            by_group = select_fraction(by_group, dict(zip(arrays.ids, arrays.tissues)), fraction, seed)
        settings = self.spec.finetune.model_copy(update={"epochs": cfg.epochs, "batch_size": cfg.batch_size,
                                                         "lr": cfg.lr})
        label = f"labeler {dataset.name} seed {seed}" + (f" after cycle {cycle}" if cycle else "")
        ft = self.finetune_stage(encoder or self.random_encoder_stage(seed), dataset, arrays, by_group,
                                 "full", seed, settings, label=label, kind="labeler")
        test_ids = [s for s, g in zip(arrays.ids, arrays.groups) if g in test_groups]
        ev = self.evaluate_stage(ft, dataset, arrays, test_ids, "+".join(test_groups), kind="labeler_eval")
        return ft, ev, dataset

    def pseudolabel_stage(self, labeler: Stage, labeler_eval: Stage, num_classes: int) -> Stage:
        from harness.engine.pseudolabel import pseudolabel

        settings = self.spec.finetune
        unlabeled = self.resources.unlabeled_dataset()
        return self._unique(Stage(
            kind="pseudolabel", label=f"pseudo-labels from {labeler.label}",
            config={"unlabeled": unlabeled.fingerprint(), "num_classes": num_classes},
            version=ENGINE_VERSION, deps={"labeler": labeler, "labeler_eval": labeler_eval},
            run=lambda ctx: pseudolabel(ctx, images=self.resources.unlabeled_images(),
                                        encoder_name=settings.encoder, num_classes=num_classes,
                                        batch_size=settings.eval_batch_size, amp=settings.amp)))

    # --- fine-tuning and evaluation --------------------------------------------------------------
    def finetune_stage(self, encoder: Stage, dataset: Any, arrays: Any, chosen: dict[str, list[str]],
                       protocol: str, seed: int, settings: Any, label: str, kind: str = "finetune",
                       extra: dict[str, Any] | None = None) -> Stage:
        from harness.engine.finetune import finetune

        train_ids = [sid for ids in chosen.values() for sid in ids]
        return self._unique(Stage(
            kind=kind, label=label,
            config={"dataset": dataset.fingerprint(), "seed": seed, "protocol": protocol,
                    "train_ids": hash_key(train_ids), "settings": _result_settings(settings),
                    **(extra or {})},
            version=ENGINE_VERSION, deps={"encoder": encoder}, info={"train_ids": chosen},
            run=lambda ctx: finetune(ctx, arrays=arrays, train_ids=train_ids,
                                     num_classes=dataset.num_classes, settings=settings,
                                     protocol=protocol, seed=seed)))

    def semisup_stage(self, method: Any, version: str, dataset: Any, arrays: Any,
                      chosen: dict[str, list[str]], seed: int, label: str,
                      extra: dict[str, Any] | None = None) -> Stage:
        """A semi-supervised method's whole U-Net (its EMA teacher), from the labeled subset and
        the unlabeled images; the evaluation stage reads it like a fine-tuned model."""
        from harness.engine.semisup import train_semisupervised

        train_ids = [sid for ids in chosen.values() for sid in ids]
        unlabeled = self.resources.unlabeled_dataset()
        settings = self.spec.finetune
        method_settings = {k: v for k, v in method.config.model_dump(mode="json").items()
                           if k not in RUNTIME_ONLY}
        return self._unique(Stage(
            kind="semisup", label=label,
            config={"method": method.name, "settings": method_settings,
                    "finetune": _result_settings(settings), "dataset": dataset.fingerprint(),
                    "unlabeled": unlabeled.fingerprint(), "seed": seed,
                    "train_ids": hash_key(train_ids), **(extra or {})},
            version=f"{version}/engine{ENGINE_VERSION}", info={"train_ids": chosen},
            run=lambda ctx: train_semisupervised(
                ctx, method=method, arrays=arrays, train_ids=train_ids,
                unlabeled_images=self.resources.unlabeled_images(), num_classes=dataset.num_classes,
                settings=settings, seed=seed)))

    def evaluate_stage(self, model: Stage, dataset: Any, arrays: Any, test_ids: Sequence[str],
                       fold: str, kind: str = "evaluate") -> Stage:
        from harness.engine.evaluate import evaluate

        settings = self.spec.finetune
        return self._unique(Stage(
            kind=kind, label=f"evaluate {model.label}",
            config={"dataset": dataset.fingerprint(), "fold": fold, "test_ids": hash_key(list(test_ids)),
                    "metric_family": dataset.metric_family},
            version=ENGINE_VERSION, deps={"model": model}, info={"test_ids": list(test_ids)},
            run=lambda ctx: evaluate(ctx, arrays=arrays, test_ids=test_ids,
                                     num_classes=dataset.num_classes, class_names=dataset.class_names,
                                     metric_family=dataset.metric_family, settings=settings)))
