"""A spec expanded into cells and the stage graph behind them, as plain data.

A cell is one (method, protocol, fraction, fold, seed). Its result comes from a chain of stages,
e.g. ``encoder -> finetune -> evaluate`` for an ``init`` method: the method's chain up to its
encoder (an :class:`EncoderChain`), then the protocol's (its ``model`` stage, then the evaluation). A stage is data: its kind (the
name of a registered stage kind, :mod:`harness.stages`), its resolved config, its dependencies
and its version; its key hashes those, so the same stage (the ImageNet encoder, say) appears
once in the plan however many cells use it. ``params`` (what the kind needs to run beyond its
config, e.g. the chosen image ids whose hash the config holds) and ``info`` (facts for records)
are JSON-serialisable and in no key. The plan is built by :mod:`harness.planner`; any process
that builds it from the same resolved spec and store gets the same stages.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from harness.store import hash_key

if TYPE_CHECKING:
    from harness.data.open import Resources
    from harness.plugins import Registry
    from harness.spec.models import Spec


@dataclass
class Stage:
    kind: str
    label: str
    config: dict[str, Any]
    version: str
    deps: dict[str, "Stage"] = field(default_factory=dict)
    #: Facts for records and reports that the key already covers (e.g. the chosen image ids).
    info: dict[str, Any] = field(default_factory=dict, compare=False)
    #: What the stage kind needs to run beyond ``config`` (JSON-serialisable, in no key).
    params: dict[str, Any] = field(default_factory=dict, compare=False)
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

    def describe(self) -> dict[str, Any]:
        """The stage as JSON data (dependencies by key)."""
        return {"kind": self.kind, "key": self.key, "label": self.label, "config": self.config,
                "version": self.version, "deps": {n: d.key for n, d in self.deps.items()},
                "params": self.params, "info": self.info}


@dataclass
class EncoderChain:
    """What a method's chain gives a row: the stage whose artifact is its encoder, the splits
    whose cells fine-tune it (all of them, or one for a chain built per split), the suffix of
    its row name (e.g. ``@cycle2``: a chain reported as its own row) and facts for those cells'
    records."""

    encoder: Stage
    splits: list[Any]  # harness.planner.Split
    suffix: str = ""
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class Cell:
    method: str  # the row name: a ``methods:`` key, plus e.g. ``@cycle2`` for a pretraining cycle
    protocol: str
    fraction: float
    fold: str
    seed: int
    final: Stage  # the evaluation stage; its upstream chain is the cell's work
    #: The stage whose artifact ``final`` evaluates (a fine-tuned model, a k-NN feature bank...):
    #: the record's ``train`` summary and training ids.
    model: Stage
    plugin: str = ""  # the method plugin behind the row
    #: Facts for the cell's record that no stage holds (from its :class:`EncoderChain`); in no key.
    info: dict[str, Any] = field(default_factory=dict)

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

    def find(self, key: str) -> list[Stage]:
        """The stages whose key starts with ``key`` (or ``kind/key``)."""
        kind, _, prefix = key.rpartition("/")
        return [s for s in self.stages() if s.key.startswith(prefix) and (not kind or s.kind == kind)]


class Planning(Protocol):
    """What stage kinds' ``create``, methods' ``encoder_chains`` and protocols' ``cell_stages``
    build a plan with (:class:`harness.planner.PlanBuilder`, which imports this module): the
    spec, the registry, the opened datasets, a stage of a registered kind (:meth:`create`)
    and a method's settings as they enter a key (:meth:`keyed`)."""

    spec: Spec
    registry: Registry
    resources: Resources

    def create(self, kind: str, **kwargs: Any) -> Stage: ...

    def keyed(self, method: Any, settings: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]: ...
