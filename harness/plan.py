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

#: Bump when the shared fine-tuning/evaluation code changes results: part of their stage keys.
ENGINE_VERSION = "1"

#: Settings that do not change a result (where or how fast it is computed): not in stage keys.
_RUNTIME_ONLY = {"device", "num_workers", "eval_batch_size", "channels_last"}


def build_plan(rspec: Any, registry: Any, dataset: Any, arrays: Any) -> Plan:
    """Expand a resolved spec into cells, sharing identical stages between them."""
    from harness.data.fractions import select_fraction
    from harness.engine.evaluate import evaluate
    from harness.engine.finetune import finetune
    from harness.engine.init_encoder import run_init_encoder
    from harness.errors import PluginError

    spec = rspec.spec
    settings = spec.finetune
    ds_fp = dataset.fingerprint()
    ds_version = registry.dataset(spec.dataset.name).version
    ft_settings = {k: v for k, v in settings.model_dump(mode="json").items() if k not in _RUNTIME_ONLY}
    tissues = dict(zip(arrays.ids, arrays.tissues))
    folds = spec.folds or dataset.folds()
    encoders: dict[tuple, Stage] = {}
    cells: list[Cell] = []

    for method_name, method_config in rspec.method_configs.items():
        info = registry.method(method_name)
        method = info.cls(method_config)
        for seed in spec.seeds:
            enc_seed = seed if method.seed_dependent else None
            if method.kind == "init":
                cfg = {"method": method_name, "settings": method_config.model_dump(mode="json"),
                       "encoder": settings.encoder, "seed": enc_seed}
                stage = Stage(
                    kind="encoder", label=f"{method_name} encoder" + (f" seed {seed}" if enc_seed is not None else ""),
                    config=cfg, version=info.version,
                    run=lambda ctx, m=method, s=seed: run_init_encoder(
                        ctx, method=m, encoder_name=settings.encoder, seed=s))
            elif hasattr(method, "encoder_stage"):
                stage = method.encoder_stage(rspec=rspec, registry=registry, seed=seed,
                                             version=info.version)
            else:
                raise PluginError(f"method '{method_name}' of kind '{method.kind}' does not "
                                  f"provide an encoder stage this harness version can run")
            encoder = encoders.setdefault((method_name, stage.key), stage)
            for fold in folds:
                split = dataset.split(fold, arrays)
                for fraction in spec.fractions:
                    chosen = select_fraction(split.train, tissues, fraction, seed)
                    train_ids = [sid for ids in chosen.values() for sid in ids]
                    for protocol in spec.protocols:
                        ft = Stage(
                            kind="finetune",
                            label=f"{method_name} {protocol} frac={fraction:g} {fold} seed {seed}",
                            config={"dataset": ds_fp, "dataset_version": ds_version, "fold": fold,
                                    "fraction": fraction, "seed": seed, "protocol": protocol,
                                    "train_ids": hash_key(train_ids), "settings": ft_settings},
                            version=ENGINE_VERSION, deps={"encoder": encoder},
                            info={"train_ids": chosen},
                            run=lambda ctx, ids=train_ids, p=protocol, s=seed: finetune(
                                ctx, arrays=arrays, train_ids=ids, num_classes=dataset.num_classes,
                                settings=settings, protocol=p, seed=s))
                        ev = Stage(
                            kind="evaluate", label=f"evaluate {ft.label}",
                            config={"dataset": ds_fp, "dataset_version": ds_version, "fold": fold,
                                    "test_ids": hash_key(split.test),
                                    "metric_family": dataset.metric_family},
                            version=ENGINE_VERSION, deps={"model": ft},
                            info={"test_ids": split.test},
                            run=lambda ctx, t=split.test: evaluate(
                                ctx, arrays=arrays, test_ids=t, num_classes=dataset.num_classes,
                                class_names=dataset.class_names, metric_family=dataset.metric_family,
                                settings=settings))
                        cells.append(Cell(method_name, protocol, fraction, fold, seed, final=ev))
    return Plan(cells)
