"""Building a plan: the cells of a spec and the chain of stages behind each.

Who builds what: a **method** says which stages produce its encoder
(:meth:`harness.methods.Method.encoder_chains`; default one ``encoder`` or ``pretrain`` stage, a
plugin may compose more, e.g. labeler -> pseudo-labels -> pretraining cycles); a **protocol**
says which stages turn that encoder into an evaluated cell
(:meth:`harness.protocols.base.TrainingProtocol.cell_stages`; default ``finetune -> evaluate``);
a **stage kind** builds its own stage from typed arguments (its ``create``, called through
:meth:`PlanBuilder.create`). Semi-supervised methods have no encoder: one whole-model ``semisup``
stage per split, then ``evaluate``. Identical stages are created once, so e.g. one pretraining
run serves every fold, protocol and label fraction.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

from harness.inputs import keyed_settings
from harness.plan import Cell, EncoderChain, Plan, Stage

if TYPE_CHECKING:
    from harness.data.open import Resources
    from harness.methods import Method
    from harness.plugins import Registry
    from harness.spec.models import FinetuneSettings, ResolvedSpec


class Split(NamedTuple):
    """One cell split: its test fold and ids, its label fraction and chosen training ids by group."""

    fold: str
    test_ids: list[str]
    fraction: float
    chosen: dict[str, list[str]]

    @property
    def label(self) -> str:
        """`` fold frac=F``: what a stage built for this split alone adds to its label."""
        return f" {self.fold} frac={self.fraction:g}"


class PlanBuilder:
    """What stage constructors, protocols and methods build a plan with: the spec, the
    registry, the opened datasets, and :meth:`create` (a stage of a registered kind, created
    once per key)."""

    def __init__(self, rspec: ResolvedSpec, registry: Registry, resources: Resources):
        self.rspec = rspec
        self.spec = rspec.spec
        self.registry = registry
        self.resources = resources
        self._stages: dict[str, Stage] = {}

    def create(self, kind: str, **kwargs: Any) -> Stage:
        """The stage of registered kind ``kind`` for ``kwargs`` (its ``create``'s arguments);
        an equal stage created before is returned instead."""
        stage = self.registry.stage_kind(kind).cls.create(self, **kwargs)
        return self._stages.setdefault(stage.key, stage)

    def keyed(self, method: Method, settings: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """A method's settings as they enter a key (its input files by content hash) and the
        stage info recording those files (``input_files``; nothing when it reads none)."""
        root = getattr(getattr(self.resources, "store", None), "root", None)
        keyed, files = keyed_settings(method.config, settings,
                                      None if root is None else root / "file-hashes")
        return keyed, ({"input_files": files} if files else {})

    def splits(self, folds: list[str], seed: int) -> list[Split]:
        """Every split of the spec (folds x fractions), training ids drawn with ``seed``."""
        from harness.data.fractions import select_fraction

        dataset, arrays = self.resources.dataset, self.resources.arrays
        tissues = dict(zip(arrays.ids, arrays.tissues))
        out = []
        for fold in folds:
            split = dataset.split(fold, arrays)
            for fraction in self.spec.fractions:
                out.append(Split(fold, split.test, fraction, select_fraction(split.train, tissues, fraction, seed)))
        return out


def build_plan(rspec: ResolvedSpec, registry: Registry, resources: Resources) -> Plan:
    """Expand a resolved spec into cells, sharing identical stages between them."""
    spec = rspec.spec
    plan = PlanBuilder(rspec, registry, resources)
    folds = spec.folds or resources.dataset.folds(resources.dataset.config)
    cells: list[Cell] = []
    for row, method_config in rspec.method_configs.items():
        plugin = spec.plugin_of(row)
        info = registry.method(plugin)
        method = registry.create("method", plugin, method_config)
        for seed in spec.seeds:
            splits = plan.splits(folds, seed)
            if not method.has_encoder_stage:  # one whole-model stage per split
                cells += _semisup_cells(plan, row, plugin, method, info.version, splits, seed)
                continue
            settings = spec.finetune_of(row, info.cls.row_encoder(
                method.config.model_dump(mode="json"), spec.finetune.encoder))
            by_row: dict[str, list[Cell]] = {}  # a chain's cells, grouped by its row suffix
            for chain in method.encoder_chains(plan, version=info.version, seed=seed, splits=splits,
                                               settings=settings):
                by_row.setdefault(chain.suffix, []).extend(
                    _encoder_cells(plan, row, plugin, chain, seed, settings))
            cells += [c for row_cells in by_row.values() for c in row_cells]
    return Plan(cells)


def _semisup_cells(plan: PlanBuilder, row: str, plugin: str, method: Method, version: str,
                   splits: list[Split], seed: int) -> list[Cell]:
    if "full" not in plan.spec.protocols_of(row):  # validation rejects 'frozen' for these rows
        return []
    dataset, cells = plan.resources.dataset, []
    for fold, test_ids, fraction, chosen in splits:
        model = plan.create("semisup", method=method, version=version, dataset=dataset, chosen=chosen,
                            seed=seed, label=f"{row} full frac={fraction:g} {fold} seed {seed}",
                            extra={"fold": fold, "fraction": fraction})
        ev = plan.create("evaluate", model=model, dataset=dataset, test_ids=test_ids, fold=fold)
        cells.append(Cell(row, "full", fraction, fold, seed, final=ev, model=model, plugin=plugin))
    return cells


def _encoder_cells(plan: PlanBuilder, row: str, plugin: str, chain: EncoderChain, seed: int,
                   settings: FinetuneSettings) -> list[Cell]:
    cells = []
    for split in chain.splits:
        for name in plan.spec.protocols_of(row):  # the spec's, or the row's own subset
            model, ev = plan.registry.create("protocol", name).cell_stages(
                plan, encoder=chain.encoder, split=split, seed=seed, settings=settings,
                label=f"{row}{chain.suffix} {name} frac={split.fraction:g} {split.fold} seed {seed}")
            cells.append(Cell(row + chain.suffix, name, split.fraction, split.fold, seed, final=ev,
                              model=model, plugin=plugin, info=dict(chain.info)))
    return cells
