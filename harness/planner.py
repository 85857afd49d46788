"""Building a plan: what each kind of stage hashes, depends on and needs to run.

Kinds: ``encoder`` (weights without training), ``pretrain`` (an encoder trained on unlabeled
images), ``labeler`` + ``labeler_eval`` (a U-Net that pseudo-labels them, with its PQ),
``pseudolabel`` (the masks), ``finetune`` (a model on a labeled split, as its protocol says),
``semisup`` (a semi-supervised method's whole U-Net) and ``evaluate``. Identical stages are
created once, so e.g. one pretraining run serves every fold, protocol and label fraction. A
stage's config is exactly what its key hashes; what its kind needs beyond that goes to its
``params`` (JSON data, so that another process rebuilding the plan gets equal stages).
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

from harness.errors import PluginError, SpecError
from harness.inputs import keyed_settings
from harness.plan import Cell, Plan, Stage
from harness.spec.models import HoverLossWeights
from harness.store import hash_key

#: One cell split: (test fold, test ids, label fraction, chosen training ids by group).
Split = tuple[str, list[str], float, dict[str, list[str]]]

#: Bump when the shared loops change results: part of the keys of the stages they compute.
ENGINE_VERSION = "1"

#: Version of the fine-tuning stages (kinds ``finetune`` and ``labeler``). 2: an epoch keeps its
#: last partial batch (``finetune.drop_last``) and the blur is the reference's (kernel 3/5/7 with
#: p 0.2/0.4/0.4, OpenCV's sigma-0 kernels; harness/data/augment.py).
FINETUNE_VERSION = "2"

#: Settings that do not change a result (where or how fast it is computed): not in stage keys.
RUNTIME_ONLY = {"device", "num_workers", "eval_batch_size", "eval_workers", "channels_last",
                "view_pipeline", "compile", "eval_precision", "augment_pipeline"}

#: Fine-tuning settings added after stage keys were pinned: in a key only when set to another
#: value than this default, so adding them changed no key.
ADDED_SETTINGS = {"drop_last": False, "pseudolabel_amp": False, "encoder_args": {},
                  "unfreeze_epochs": 25, "lora_rank": 16, "lora_alpha": 16.0, "head": "semantic",
                  "hover_loss": HoverLossWeights().model_dump(mode="json")}

#: Fine-tuning settings a protocol reads (its ``reads``): in the keys of its stages only.
PROTOCOL_SETTINGS = ("unfreeze_epochs", "lora_rank", "lora_alpha")


def _result_settings(model: Any, unread: tuple[str, ...] = ()) -> dict[str, Any]:
    """``model``'s settings as they enter a key: without the runtime-only ones, the ones the
    stage does not read (``unread``) and the added ones left at their default."""
    return {k: v for k, v in model.model_dump(mode="json").items()
            if k not in RUNTIME_ONLY and k not in unread
            and not (k in ADDED_SETTINGS and v == ADDED_SETTINGS[k])}


def method_params(method: Any) -> dict[str, Any]:
    """A method object as data: its plugin name and its whole config (runtime keys too)."""
    return {"plugin": method.name, "config": method.config.model_dump(mode="json")}


def _flat(chosen: dict[str, list[str]]) -> list[str]:
    return [sid for ids in chosen.values() for sid in ids]


class StageFactory:
    def __init__(self, rspec: Any, registry: Any, resources: Any):
        self.rspec = rspec
        self.spec = rspec.spec
        self.registry = registry
        self.resources = resources
        self._stages: dict[str, Stage] = {}

    def _unique(self, stage: Stage) -> Stage:
        return self._stages.setdefault(stage.key, stage)

    def _keyed(self, method: Any, settings: dict[str, Any]
               ) -> tuple[dict[str, Any], dict[str, Any]]:
        """A method's settings as they enter a key (its input files by content hash) and the
        stage info recording those files (``input_files``; nothing when it reads none)."""
        root = getattr(getattr(self.resources, "store", None), "root", None)
        keyed, files = keyed_settings(method.config, settings,
                                      None if root is None else root / "file-hashes")
        return keyed, ({"input_files": files} if files else {})

    # --- encoders -------------------------------------------------------------------------------
    def encoder_stages(self, method: Any, version: str, seed: int,
                       split: Split | None = None, settings: Any = None) -> list[tuple[str, Stage]]:
        """``(row suffix, encoder stage)`` pairs: one for most methods; one per cycle for cyclic
        pretraining (``@cycle1``, ``@cycle2``, ...), each reported as its own row. ``split``:
        the one cell split whose labels a ``per_cell`` labeler learns from. ``settings``: the
        row's fine-tuning settings (:meth:`Spec.finetune_of`), whose encoder it builds."""
        settings = settings or self.spec.finetune
        encoder, args = settings.encoder, _encoder_args(settings)
        if method.kind == "init":
            return [("", self.init_stage(method, version, seed, encoder, args))]
        if method.kind == "pretrain":
            return self.pretrain_stages(method, version, seed, split, encoder, args)
        raise PluginError(f"method '{method.name}' of kind '{method.kind}' has no encoder stage "
                          f"this harness version can build")

    def init_stage(self, method: Any, version: str, seed: int, encoder: str | None = None,
                   args: dict[str, Any] | None = None) -> Stage:
        encoder_name = encoder or self.spec.finetune.encoder
        enc_seed = seed if method.seed_dependent else None
        settings, info = self._keyed(method, method.config.model_dump(mode="json"))
        return self._unique(Stage(
            kind="encoder", label=f"{method.name} encoder" + (f" seed {seed}" if enc_seed is not None else ""),
            config={"method": method.name, "settings": settings, "encoder": encoder_name,
                    "seed": enc_seed, **(args or {})},
            version=version, info=info, params={"method": method_params(method), "seed": seed}))

    def random_encoder_stage(self, seed: int) -> Stage:
        """A randomly initialised encoder (labelers are trained from scratch, as in the thesis)."""
        return self._unique(Stage(
            kind="encoder", label=f"random encoder seed {seed}",
            config={"init": "random", "encoder": self.spec.finetune.encoder, "seed": seed,
                    **_encoder_args(self.spec.finetune)},
            version=ENGINE_VERSION, params={"seed": seed}))

    def pretrain_stages(self, method: Any, version: str, seed: int,
                        split: Split | None = None, encoder: str | None = None,
                        args: dict[str, Any] | None = None) -> list[tuple[str, Stage]]:
        """Pretraining, preceded for mask-guided methods by labeler -> pseudo-labels. With
        ``cycles: K`` (Table 4.5) each cycle continues the previous cycle's encoder and heads on
        pseudo-labels from the previous cycle's encoder fine-tuned on the labeler data."""
        if getattr(method.config, "seed", None) is not None:
            seed = method.config.seed  # one pretraining chain shared by every fine-tuning seed
        cycles = method.cycles()
        masks = None
        if method.needs_masks:
            masks = self.pseudolabel_stage(*self.labeler_stages(method, seed, split=split))
        rows: list[tuple[str, Stage]] = []
        previous = None
        for cycle in range(1, cycles + 1):
            stage = self.pretrain_stage(method, version, seed, masks, previous, cycle if cycles > 1 else None,
                                        split, encoder, args)
            rows.append((f"@cycle{cycle}" if cycles > 1 else "", stage))
            if cycle < cycles and method.needs_masks:
                masks = self.pseudolabel_stage(*self.labeler_stages(method, seed, encoder=stage, cycle=cycle,
                                                                    split=split))
            previous = stage
        return rows

    def pretrain_stage(self, method: Any, version: str, seed: int, masks: Stage | None,
                       previous: Stage | None, cycle: int | None, split: Split | None = None,
                       encoder: str | None = None, args: dict[str, Any] | None = None) -> Stage:
        deps: dict[str, Stage] = {}
        num_classes = None
        if masks is not None:
            deps["masks"] = masks
            num_classes = masks.config["num_classes"]
        if previous is not None:
            deps["previous"] = previous
        # the number of cycles does not change what cycle k computes (its number is in the key);
        # the effective seed is keyed as 'seed', so `seed: 0` shares stages with a cell of seed 0
        settings, info = self._keyed(method, {
            k: v for k, v in method.config.model_dump(mode="json").items()
            if k not in RUNTIME_ONLY and k not in ("cycles", "seed")})
        _drop_labeler_protocol(method, settings)
        label = f"{method.name} pretrain seed {seed}" + _split_label(split) + (f" cycle {cycle}" if cycle else "")
        return self._unique(Stage(
            kind="pretrain", label=label,
            config={"method": method.name, "settings": settings,
                    "encoder": encoder or self.spec.finetune.encoder, "seed": seed, "unlabeled": self.resources.unlabeled_dataset().fingerprint(),
                    "cycle": cycle, **(args or {})},
            version=f"{version}/engine{ENGINE_VERSION}", deps=deps, info=info,
            params={"method": method_params(method), "num_classes": num_classes}))

    # --- labeler and pseudo-labels -----------------------------------------------------------------
    def labeler_stages(self, method: Any, seed: int, encoder: Stage | None = None,
                       cycle: int | None = None, split: Split | None = None) -> tuple[Stage, Stage, int]:
        """The labeler U-Net (from a random encoder, or a pretraining cycle's encoder), its
        evaluation and the labeler dataset's number of classes. Protocol ``thesis``: trained on
        the labeler dataset's training groups, evaluated on the held-out group. ``per_cell``
        (``split`` given): trained on that cell's own training ids (its folds and label
        fraction), evaluated on the cell's test fold (a score only; nothing downstream reads
        it), so no test-fold label reaches the pseudo-labels."""
        cfg = method.labeler()
        if split is not None:
            dataset, arrays = self.resources.dataset, self.resources.arrays
            test_fold, test_ids, _, by_group = split
            source = None
        else:
            dataset, arrays = self.resources.labeled(cfg.dataset)
            train_groups, test_groups = _labeler_groups(method.name, cfg, dataset, arrays)
            by_group = {g: [s for s, gg in zip(arrays.ids, arrays.groups) if gg == g] for g in train_groups}
            test_ids = [s for s, g in zip(arrays.ids, arrays.groups) if g in test_groups]
            test_fold, source = "+".join(test_groups), cfg.dataset
        if cfg.max_images is not None:
            from harness.data.fractions import select_fraction

            ids = _flat(by_group)
            fraction = min(1.0, cfg.max_images / max(1, len(ids)))
            by_group = select_fraction(by_group, dict(zip(arrays.ids, arrays.tissues)), fraction, seed)
        # a labeler's masks are class maps: its model is semantic whatever the cells' head
        settings = self.spec.finetune.model_copy(update={"epochs": cfg.epochs, "batch_size": cfg.batch_size,
                                                         "lr": cfg.lr, "head": "semantic"})
        label = f"labeler {dataset.name} seed {seed}" + _split_label(split) + \
            (f" after cycle {cycle}" if cycle else "")
        ft = self.finetune_stage(encoder or self.random_encoder_stage(seed), dataset, by_group, "full",
                                 seed, settings, label=label, kind="labeler", source=source)
        ev = self.evaluate_stage(ft, dataset, test_ids, test_fold, kind="labeler_eval", source=source)
        return ft, ev, dataset.num_classes

    def pseudolabel_stage(self, labeler: Stage, labeler_eval: Stage, num_classes: int) -> Stage:
        unlabeled = self.resources.unlabeled_dataset()
        # fp32 by default (the reference's); mixed precision enters the key only when chosen
        precision = {"amp": True} if self.spec.finetune.pseudolabel_amp else {}
        return self._unique(Stage(
            kind="pseudolabel", label=f"pseudo-labels from {labeler.label}",
            config={"unlabeled": unlabeled.fingerprint(), "num_classes": num_classes, **precision},
            version=ENGINE_VERSION, deps={"labeler": labeler, "labeler_eval": labeler_eval},
            params={"settings": self.spec.finetune.model_dump(mode="json")}))

    # --- fine-tuning and evaluation --------------------------------------------------------------
    def finetune_stage(self, encoder: Stage, dataset: Any, chosen: dict[str, list[str]],
                       protocol: str, seed: int, settings: Any, label: str, kind: str = "finetune",
                       extra: dict[str, Any] | None = None, source: str | None = None) -> Stage:
        """``source``: the labeled dataset's plugin name, None for the spec's own dataset."""
        train_ids = _flat(chosen)
        return self._unique(Stage(
            kind=kind, label=label,
            config={"dataset": dataset.fingerprint(), "seed": seed, "protocol": protocol,
                    "train_ids": hash_key(train_ids),
                    "settings": _result_settings(settings, unread=("pseudolabel_amp",)
                                                 + self._unread_by(protocol)),
                    **(extra or {})},
            version=FINETUNE_VERSION, deps={"encoder": encoder}, info={"train_ids": chosen},
            params={"dataset": source, "train_ids": train_ids,
                    "settings": settings.model_dump(mode="json")}))

    def _unread_by(self, protocol: str) -> tuple[str, ...]:
        """The protocol-specific settings ``protocol`` does not read."""
        reads = getattr(self.registry.protocol(protocol).cls, "reads", ())
        return tuple(k for k in PROTOCOL_SETTINGS if k not in reads)

    def semisup_stage(self, method: Any, version: str, dataset: Any, chosen: dict[str, list[str]],
                      seed: int, label: str, extra: dict[str, Any] | None = None) -> Stage:
        """A semi-supervised method's whole U-Net (its EMA teacher), from the labeled subset and
        the unlabeled images; the evaluation stage reads it like a fine-tuned model."""
        train_ids = _flat(chosen)
        settings = self.spec.finetune
        method_settings, files = self._keyed(method, {
            k: v for k, v in method.config.model_dump(mode="json").items() if k not in RUNTIME_ONLY})
        return self._unique(Stage(
            kind="semisup", label=label,
            config={"method": method.name, "settings": method_settings,
                    "finetune": _result_settings(settings, unread=("drop_last", "pseudolabel_amp")
                                                 + PROTOCOL_SETTINGS),
                    "dataset": dataset.fingerprint(),
                    "unlabeled": self.resources.unlabeled_dataset().fingerprint(), "seed": seed,
                    "train_ids": hash_key(train_ids), **(extra or {})},
            version=f"{version}/engine{ENGINE_VERSION}", info={"train_ids": chosen, **files},
            params={"method": method_params(method), "dataset": None, "train_ids": train_ids,
                    "settings": settings.model_dump(mode="json")}))

    def evaluate_stage(self, model: Stage, dataset: Any, test_ids: Sequence[str], fold: str,
                       kind: str = "evaluate", source: str | None = None, settings: Any = None) -> Stage:
        head = model.config.get("settings", {}).get("head", "semantic")
        return self._unique(Stage(
            kind=kind, label=f"evaluate {model.label}",
            config={"dataset": dataset.fingerprint(), "fold": fold, "test_ids": hash_key(list(test_ids)),
                    "metric_family": dataset.metric_family,
                    **({"head": head} if head != "semantic" else {})},
            version=ENGINE_VERSION, deps={"model": model}, info={"test_ids": list(test_ids)},
            params={"dataset": source, "test_ids": list(test_ids),
                    "protocol": model.config.get("protocol", "full"),
                    "settings": (settings or self.spec.finetune).model_dump(mode="json")}))


def labeler_protocol(method: Any) -> str | None:
    """The labeler protocol of a mask-guided method (``thesis`` or ``per_cell``), else None."""
    cfg = method.labeler() if getattr(method, "needs_masks", False) else None
    return None if cfg is None else getattr(cfg, "protocol", "thesis")


def _drop_labeler_protocol(method: Any, settings: dict[str, Any]) -> None:
    """The labeler protocol is not a pretraining setting: which labeler a chain uses is in its
    masks' key (so a thesis chain keeps the key it had before the setting existed)."""
    cfg = method.labeler() if hasattr(method, "labeler") else None
    for name, value in settings.items():
        if cfg is not None and getattr(method.config, name, None) is cfg and isinstance(value, dict):
            value.pop("protocol", None)


def _encoder_args(settings: Any) -> dict[str, Any]:
    """``{"encoder_args": ...}`` for an encoder stage's config: only when some are set (they
    change the encoder's shapes), so that no existing key changed; for a foundation model
    (``fm:NAME``) also its registry entry's architecture (``fm_architecture``), so that a
    corrected entry gets new stages."""
    args = getattr(settings, "encoder_args", None)
    out: dict[str, Any] = {"encoder_args": dict(args)} if args else {}
    if settings.encoder.startswith("fm:"):
        from harness.models.foundation import foundation_model

        entry = foundation_model(settings.encoder[3:])
        out["fm_architecture"] = {"timm": entry.timm, "kwargs": entry.kwargs}
    return out


def _split_label(split: Split | None) -> str:
    return "" if split is None else f" {split[0]} frac={split[2]:g}"


def _labeler_groups(method_name: str, cfg: Any, dataset: Any, arrays: Any) -> tuple[list[str], list[str]]:
    """The labeler's training groups (its settings', else every k-fold group but the last, else
    'train') and its test groups (the rest but 'val')."""
    groups = sorted(set(arrays.groups))
    if cfg.train_groups is not None:
        train_groups = list(cfg.train_groups)
    elif dataset.split_scheme == "kfold":
        train_groups = groups[:-1]
    else:
        train_groups = ["train"]
    unknown = [g for g in train_groups if g not in groups]
    if unknown:
        raise SpecError(f"methods.{method_name}.labeler.train_groups: unknown groups {unknown} "
                        f"for dataset '{dataset.name}' (it has {', '.join(groups)})")
    return train_groups, [g for g in groups if g not in train_groups and g != "val"]


# --- the cells of a spec ------------------------------------------------------------------------

def build_plan(rspec: Any, registry: Any, resources: Any) -> Plan:
    """Expand a resolved spec into cells, sharing identical stages between them."""
    spec = rspec.spec
    factory = StageFactory(rspec, registry, resources)
    folds = spec.folds or resources.dataset.folds()
    cells: list[Cell] = []
    for method_name, method_config in rspec.method_configs.items():
        plugin = spec.plugin_of(method_name)
        info = registry.method(plugin)
        method = info.cls(method_config)
        for seed in spec.seeds:
            if method.kind == "semisupervised":  # no encoder stage: one whole-model stage per split
                cells += _semisup_cells(factory, method_name, plugin, method, info.version, folds, seed)
                continue
            protocol = labeler_protocol(method)
            facts = {} if protocol is None else {"labeler_protocol": protocol}
            row = spec.finetune_of(method_name, info.cls.row_encoder(
                method.config.model_dump(mode="json"), spec.finetune.encoder))
            if protocol == "per_cell":  # one labeler -> pseudo-labels -> pretraining chain per split
                by_row: dict[str, list[Cell]] = {}
                for split in _splits(factory, folds, seed):
                    for suffix, encoder in factory.encoder_stages(method, info.version, seed, split, row):
                        by_row.setdefault(suffix, []).extend(_encoder_cells(
                            factory, method_name + suffix, plugin, method_name, encoder, [split], seed, facts,
                            row))
                cells += [c for row_cells in by_row.values() for c in row_cells]
                continue
            splits = list(_splits(factory, folds, seed))
            for suffix, encoder in factory.encoder_stages(method, info.version, seed, settings=row):
                cells += _encoder_cells(factory, method_name + suffix, plugin, method_name, encoder,
                                        splits, seed, facts, row)
    return Plan(cells)


def _splits(factory: StageFactory, folds: list[str], seed: int) -> Iterator[Split]:
    """``(fold, test ids, fraction, chosen training ids by group)`` of every split of the spec."""
    from harness.data.fractions import select_fraction

    dataset, arrays = factory.resources.dataset, factory.resources.arrays
    tissues = dict(zip(arrays.ids, arrays.tissues))
    for fold in folds:
        split = dataset.split(fold, arrays)
        for fraction in factory.spec.fractions:
            yield fold, split.test, fraction, select_fraction(split.train, tissues, fraction, seed)


def _semisup_cells(factory: StageFactory, row: str, plugin: str, method: Any, version: str,
                   folds: list[str], seed: int) -> list[Cell]:
    if "full" not in factory.spec.protocols_of(row):  # validation rejects 'frozen' for these rows
        return []
    dataset, cells = factory.resources.dataset, []
    for fold, test_ids, fraction, chosen in _splits(factory, folds, seed):
        model = factory.semisup_stage(method, version, dataset, chosen, seed,
                                      label=f"{row} full frac={fraction:g} {fold} seed {seed}",
                                      extra={"fold": fold, "fraction": fraction})
        ev = factory.evaluate_stage(model, dataset, test_ids, fold)
        cells.append(Cell(row, "full", fraction, fold, seed, final=ev, plugin=plugin))
    return cells


def _encoder_cells(factory: StageFactory, row: str, plugin: str, method_name: str, encoder: Stage,
                   splits: list[Split], seed: int, facts: dict[str, Any], settings: Any = None) -> list[Cell]:
    spec, dataset, cells = factory.spec, factory.resources.dataset, []
    settings = settings or spec.finetune
    for fold, test_ids, fraction, chosen in splits:
        for protocol in spec.protocols_of(method_name):  # the spec's, or the row's own subset
            ft = factory.finetune_stage(
                encoder, dataset, chosen, protocol, seed, settings,
                label=f"{row} {protocol} frac={fraction:g} {fold} seed {seed}",
                extra={"fold": fold, "fraction": fraction})
            ev = factory.evaluate_stage(ft, dataset, test_ids, fold, settings=settings)
            cells.append(Cell(row, protocol, fraction, fold, seed, final=ev, plugin=plugin, info=dict(facts)))
    return cells
