"""A spec expanded into cells and the stage graph behind them.

A cell is one (method, protocol, fraction, fold, seed). Its result comes from a chain of stages,
e.g. ``encoder -> finetune -> evaluate`` for an ``init`` method. A stage's key hashes its kind,
its resolved config, its upstream keys and the versions of the plugins involved, so the same
stage (the ImageNet encoder, say) appears once in the plan however many cells use it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from harness.store import hash_key


@dataclass
class Stage:
    kind: str
    label: str
    config: dict[str, Any]
    version: str
    run: Callable[["Any"], dict[str, Any]] = field(repr=False, compare=False)
    deps: dict[str, "Stage"] = field(default_factory=dict)
    #: Facts for records and reports that the key already covers (e.g. the chosen image ids).
    info: dict[str, Any] = field(default_factory=dict, compare=False)
    key: str = ""

    def __post_init__(self) -> None:
        self.key = hash_key({
            "kind": self.kind,
            "config": self.config,
            "version": self.version,
            "deps": {name: dep.key for name, dep in sorted(self.deps.items())},
        })

    def upstream(self) -> list["Stage"]:
        """This stage and everything it depends on, dependencies first."""
        order: list[Stage] = []
        seen: set[str] = set()

        def visit(s: Stage) -> None:
            if s.key in seen:
                return
            for dep in s.deps.values():
                visit(dep)
            seen.add(s.key)
            order.append(s)

        visit(self)
        return order


@dataclass
class Cell:
    method: str
    protocol: str
    fraction: float
    fold: str
    seed: int
    final: Stage  # the evaluation stage; its upstream chain is the cell's work

    @property
    def cell_id(self) -> str:
        return f"{self.method}__{self.protocol}__frac{self.fraction:g}__{self.fold}__seed{self.seed}"

    @property
    def coordinates(self) -> dict[str, Any]:
        return {"method": self.method, "protocol": self.protocol, "fraction": self.fraction,
                "fold": self.fold, "seed": self.seed}

    def stages(self) -> list[Stage]:
        return self.final.upstream()


@dataclass
class Plan:
    cells: list[Cell]

    def stages(self) -> list[Stage]:
        """Every distinct stage, in an order where dependencies come first."""
        order: list[Stage] = []
        seen: set[str] = set()
        for cell in self.cells:
            for stage in cell.stages():
                if stage.key not in seen:
                    seen.add(stage.key)
                    order.append(stage)
        return order


# --- building the plan of a spec ----------------------------------------------------------

def build_plan(rspec: Any, registry: Any, resources: Any) -> Plan:
    """Expand a resolved spec into cells, sharing identical stages between them."""
    from harness.data.fractions import select_fraction
    from harness.stages import StageFactory

    spec = rspec.spec
    factory = StageFactory(rspec, registry, resources)
    dataset, arrays = resources.dataset, resources.arrays
    tissues = dict(zip(arrays.ids, arrays.tissues))
    folds = spec.folds or dataset.folds()
    cells: list[Cell] = []
    for method_name, method_config in rspec.method_configs.items():
        info = registry.method(spec.plugin_of(method_name))
        method = info.cls(method_config)
        protocols = spec.protocols_of(method_name)  # the spec's, or the row's own subset
        for seed in spec.seeds:
            if method.kind == "semisupervised":  # no encoder stage: one whole-model stage per split
                if "full" not in protocols:  # validation rejects 'frozen' for these rows
                    continue
                for fold in folds:
                    split = dataset.split(fold, arrays)
                    for fraction in spec.fractions:
                        chosen = select_fraction(split.train, tissues, fraction, seed)
                        model = factory.semisup_stage(
                            method, info.version, dataset, arrays, chosen, seed,
                            label=f"{method_name} full frac={fraction:g} {fold} seed {seed}",
                            extra={"fold": fold, "fraction": fraction})
                        ev = factory.evaluate_stage(model, dataset, arrays, split.test, fold)
                        cells.append(Cell(method_name, "full", fraction, fold, seed, final=ev))
                continue
            for suffix, encoder in factory.encoder_stages(method, info.version, seed):
                row = method_name + suffix
                for fold in folds:
                    split = dataset.split(fold, arrays)
                    for fraction in spec.fractions:
                        chosen = select_fraction(split.train, tissues, fraction, seed)
                        for protocol in protocols:
                            ft = factory.finetune_stage(
                                encoder, dataset, arrays, chosen, protocol, seed, spec.finetune,
                                label=f"{row} {protocol} frac={fraction:g} {fold} seed {seed}",
                                extra={"fold": fold, "fraction": fraction})
                            ev = factory.evaluate_stage(ft, dataset, arrays, split.test, fold)
                            cells.append(Cell(row, protocol, fraction, fold, seed, final=ev))
    return Plan(cells)
