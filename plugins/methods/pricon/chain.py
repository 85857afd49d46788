"""PRICon's encoder chain (thesis §3.1, Fig. 3.1; Table 4.5): a labeler U-Net, fine-tuned from a
random encoder on labeled images, pseudo-labels the unlabeled set; PRICon pretrains on those
masks. With ``cycles: K`` each cycle continues the previous cycle's encoder and heads on
pseudo-labels of the previous cycle's encoder fine-tuned on the labeler data.

Built from the harness's generic stage kinds: a labeler is a fine-tune (kind ``labeler``, a
``finetune`` under its own name), its score an evaluation (``labeler_eval``), pseudo-labelling a
prediction (``pseudolabel``), then ``pretrain``. The labeler's facts (protocol, training ids,
test-fold labels seen) reach each cell's record through the ``labeler`` kind's
``record_facts``, and its score through ``labeler_eval``'s summary.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Literal

from pydantic import Field

from harness.errors import SpecError
from harness.keying import flat
from harness.methods import MethodConfig
from harness.plan import EncoderChain
from harness.errors import did_you_mean
from harness.spec.checks import dataset_groups
from harness.spec.problems import printable
from harness.stages.evaluate import EvaluateStage
from harness.stages.finetune import FinetuneStage


class LabelerSettings(MethodConfig):
    """The segmentation model that pseudo-labels the unlabeled images: a U-Net trained with the
    shared fine-tuning engine."""

    protocol: Literal["thesis", "per_cell"] = Field(
        "thesis", description="'thesis': one labeler trained on fixed groups (the thesis's folds "
        "1+2, whatever the test fold: in two of three rotations it saw the test fold's labels, "
        "and at 1%/10% it sees 100% of the labels); 'per_cell': each cell's labeler trains on "
        "that cell's own training folds and label fraction (one labeler -> pseudo-labels -> "
        "pretraining chain per fold and fraction; no test-fold labels)")
    dataset: str | None = Field(None, description="labeled dataset plugin; default: the spec's "
                                "fine-tuning dataset with its options")
    train_groups: list[str] | None = Field(
        None, description="groups (folds/splits) to train on; default: every k-fold group but "
        "the last (the thesis's folds 1+2), or the 'train' split")
    epochs: int = Field(100, ge=1, le=100_000, description="fine-tuning epochs (Table A.4 varies this)")
    max_images: int | None = Field(None, ge=1, description="train on a seeded subset (Table A.4)")
    batch_size: int = Field(16, ge=1, le=65_536)
    lr: float = Field(1e-3, gt=0, le=10)


class LabelerStage(FinetuneStage):
    kind = "labeler"
    description = "the pseudo-labelling U-Net"
    lr_setting = "the method's labeler.lr"
    report_section = ("labelers", "Labelers")

    @classmethod
    def report_rows(cls, records, metric_of):
        from .report import labeler_rows

        return labeler_rows(records, metric_of)

    @classmethod
    def report_table(cls, report):
        from .report import labeler_table

        return labeler_table(report)

    @classmethod
    def report_marks(cls, report):
        from .report import labeler_marks

        return labeler_marks(report)

    def record_facts(self, stage, cell, dataset):
        """The cell's labeler: its protocol, dataset, training ids by group, how many of the
        cell's test images it was trained on (labels of the test fold) and how many training
        images beyond the cell's own labeled ones. Overlaps count only when the labeler learned
        from the spec's own dataset (``dataset``)."""
        source = self.params_of(stage).dataset or dataset
        train = stage.info.get("train_ids") or {}
        ids = {i for group in train.values() for i in group}
        same = source == dataset
        own = {i for group in cell.model.info.get("train_ids", {}).values() for i in group}
        return {"labeler": {
            "protocol": cell.info.get("labeler_protocol", "thesis"), "dataset": source,
            "train_ids": train, "images": len(ids),
            "test_images_seen": len(ids & set(cell.final.info["test_ids"])) if same else 0,
            "images_beyond_cell": len(ids - own) if same else None}}


class LabelerEvalStage(EvaluateStage):
    kind = "labeler_eval"
    description = "the labeler's metrics on its held-out groups"

    def record_summary(self, stage, result, path, env):
        """Its metrics, and its mPQ (the spec's PQ variant) as ``value``."""
        metrics = json.loads((path / "metrics.json").read_text())
        entry = {"metrics": metrics}
        if "instance" in metrics:
            entry["value"] = metrics[env.spec.metric.pq_variant]["mpq"]
        return entry


def pricon_chains(method: Any, plan: Any, *, version: str, seed: int, splits: list[Any],
                  settings: Any) -> list[EncoderChain]:
    """One chain per cycle (rows ``@cycle1``, ``@cycle2``... when ``cycles > 1``); with labeler
    protocol ``per_cell`` one such chain per split, its labeler trained on that split."""
    protocol = method.config.labeler.protocol
    facts = {"labeler_protocol": protocol}
    if protocol == "per_cell":
        return [chain for split in splits
                for chain in _cycles(method, plan, version, seed, settings, [split], split, facts)]
    return _cycles(method, plan, version, seed, settings, splits, None, facts)


def _cycles(method: Any, plan: Any, version: str, seed: int, settings: Any, splits: list[Any],
            split: Any, facts: dict[str, Any]) -> list[EncoderChain]:
    seed = method.pretrain_seed(seed)  # one pretraining chain shared by every fine-tuning seed
    cycles = method.config.cycles
    masks = _pseudolabels(method, plan, seed, split=split)
    chains: list[EncoderChain] = []
    previous = None
    for cycle in range(1, cycles + 1):
        stage = plan.create("pretrain", method=method, version=version, seed=seed, settings=settings,
                            masks=masks, num_classes=masks.config["num_classes"], previous=previous,
                            cycle=cycle if cycles > 1 else None,
                            label_suffix=split.label if split is not None else "")
        chains.append(EncoderChain(stage, splits, f"@cycle{cycle}" if cycles > 1 else "", dict(facts)))
        if cycle < cycles:
            masks = _pseudolabels(method, plan, seed, encoder=stage, cycle=cycle, split=split)
        previous = stage
    return chains


def _pseudolabels(method: Any, plan: Any, seed: int, encoder: Any = None, cycle: int | None = None,
                  split: Any = None) -> Any:
    """The labeler U-Net (from a random encoder, or a pretraining cycle's encoder), its
    evaluation, and its masks of the unlabeled images. Protocol ``thesis``: trained on the
    labeler dataset's training groups, evaluated on the held-out group. ``per_cell`` (``split``
    given): trained on that cell's own training ids (its folds and label fraction), evaluated on
    the cell's test fold (a score only; nothing downstream reads it), so no test-fold label
    reaches the pseudo-labels."""
    cfg = method.config.labeler
    if split is not None:
        dataset, arrays = plan.resources.dataset, plan.resources.arrays
        test_fold, test_ids, by_group, source = split.fold, split.test_ids, split.chosen, None
    else:
        dataset, arrays = plan.resources.labeled(cfg.dataset)
        train_groups, test_groups = labeler_groups(method.name, cfg, dataset, arrays)
        by_group = {g: [s for s, gg in zip(arrays.ids, arrays.groups) if gg == g] for g in train_groups}
        test_ids = [s for s, g in zip(arrays.ids, arrays.groups) if g in test_groups]
        test_fold, source = "+".join(test_groups), cfg.dataset
    if cfg.max_images is not None:
        from harness.data.fractions import select_fraction

        fraction = min(1.0, cfg.max_images / max(1, len(flat(by_group))))
        by_group = select_fraction(by_group, dict(zip(arrays.ids, arrays.tissues)), fraction, seed)
    # a labeler's masks are class maps: its model is semantic whatever the cells' head
    settings = plan.spec.finetune.model_copy(update={"epochs": cfg.epochs, "batch_size": cfg.batch_size,
                                                     "lr": cfg.lr, "head": "semantic"})
    label = f"labeler {dataset.name} seed {seed}" + (split.label if split is not None else "") + \
        (f" after cycle {cycle}" if cycle else "")
    ft = plan.create("labeler", encoder=encoder or plan.create("encoder", seed=seed), dataset=dataset,
                     chosen=by_group, protocol="full", seed=seed, settings=settings, label=label,
                     source=source)
    ev = plan.create("labeler_eval", model=ft, dataset=dataset, test_ids=test_ids, fold=test_fold,
                     source=source)
    return plan.create("pseudolabel", labeler=ft, labeler_eval=ev, num_classes=dataset.num_classes)


def labeler_groups(method_name: str, cfg: Any, dataset: Any, arrays: Any) -> tuple[list[str], list[str]]:
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


def labeler_problems(config: Any, row: str, spec: Any, registry: Any,
                     locate: Callable[[tuple[Any, ...]], str]) -> list[str]:
    """Every labeler setting of a row (any settings field of type LabelerSettings): its dataset
    must be an installed labeled dataset, and its train_groups folds it has; protocol
    ``per_cell`` takes neither (a cell's own split decides)."""
    problems = []
    for field in type(config).model_fields:
        labeler = getattr(config, field)
        if not isinstance(labeler, LabelerSettings):
            continue
        loc = ("methods", row, field)
        name = labeler.dataset or spec.dataset.name
        if labeler.protocol == "per_cell":
            clash = [k for k in ("dataset", "train_groups") if getattr(labeler, k) is not None
                     and not (k == "dataset" and labeler.dataset == spec.dataset.name)]
            if clash:
                problems.append(
                    f"{locate(loc + (clash[0],))}: {'.'.join(loc)}.{clash[0]}: protocol per_cell "
                    f"trains each cell's labeler on that cell's own training split of the spec's "
                    f"dataset; drop `{clash[0]}` or use protocol: thesis")
                continue
        info = registry.datasets.get(name)
        at = locate(loc + ("dataset",))
        if info is None and labeler.dataset is None:
            continue  # the spec's own dataset: its problem is reported at `dataset`
        if info is None:
            problems.append(f"{at}: {'.'.join(loc)}.dataset: unknown dataset '{printable(name)}'"
                            f"{did_you_mean(name, registry.datasets)}; installed: "
                            f"{', '.join(sorted(registry.datasets))}")
            continue
        if not info.cls.labeled:
            problems.append(f"{at}: {'.'.join(loc)}.dataset: '{name}' is unlabeled; a labeler "
                            f"trains on labels: name a labeled dataset")
            continue
        groups = dataset_groups(registry, name, None if labeler.dataset else spec.dataset.options)
        unknown = [g for g in labeler.train_groups or [] if groups and g not in groups]
        if unknown:
            problems.append(f"{locate(loc + ('train_groups',))}: {'.'.join(loc)}.train_groups: "
                            f"unknown groups {', '.join(map(printable, unknown))}; dataset '{name}' "
                            f"has {', '.join(groups)}")
    return problems
