"""The stage-kind contract.

A stage kind is a class with a ``kind`` (its registered name), typed ``Params`` (a pydantic model
of what it needs to run beyond its keyed ``config``; stored as JSON in ``Stage.params`` so that
another process rebuilding the plan gets equal stages), a constructor ``create(plan, ...)`` that
the planner, a protocol's chain or a method's chain calls (through ``plan.create(kind, ...)``,
:class:`harness.planner.PlanBuilder`) and one entry point, ``run(stage, inputs, ctx, env)``: it
computes the stage described by ``stage`` (its ``config``, which the key hashes, and its params,
:meth:`StageKind.params_of`), reading its dependencies' committed folders
``inputs`` (name -> folder, also ``ctx.inputs``), writes its artifact into ``ctx.out`` and
returns a JSON summary (stored with the artifact). ``env`` opens what the stage needs beyond
its data: datasets, method and protocol plugins. ``record_summary`` is what a cell's record
shows of the stage (by default its summary); ``record_facts`` adds top-level facts to the record
of a cell the stage is upstream of (by default none). ``distributed = True`` marks a kind that trains
with the shared loop, which executors may run over several processes (``gpus_per_stage``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict

from harness.plan import Stage

if TYPE_CHECKING:
    from harness.data.open import Resources
    from harness.engine.context import StageContext
    from harness.keying import MethodRef
    from harness.methods import Method
    from harness.plan import Cell, Planning
    from harness.plugins import Registry
    from harness.protocols.base import TrainingProtocol
    from harness.spec.models import ResolvedSpec, Spec


@dataclass
class StageEnv:
    rspec: ResolvedSpec
    registry: Registry
    resources: Resources | None  # the datasets, opened once (None: nothing opened)

    @property
    def spec(self) -> Spec:
        return self.rspec.spec

    def method(self, ref: MethodRef) -> Method:
        """A method object from its data (:class:`harness.keying.MethodRef`)."""
        return self.registry.create("method", ref.plugin, ref.config)

    @property
    def file_hash_cache(self) -> Path | None:
        """Where content hashes of input files are cached (:mod:`harness.inputs`)."""
        root = getattr(getattr(self.resources, "store", None), "root", None)
        return None if root is None else Path(root) / "file-hashes"

    def labeled(self, name: str | None) -> tuple[Any, Any]:
        """``(dataset, arrays)`` of a labeled dataset plugin; None = the spec's own."""
        return self.resources.labeled(name)

    def protocol(self, name: str) -> TrainingProtocol:
        return self.registry.create("protocol", name)


class StageParams(BaseModel):
    """Base of a kind's ``Params``: what it needs to run beyond its config (in no key)."""

    model_config = ConfigDict(extra="forbid")


class StageKind:
    kind: ClassVar[str]
    name: ClassVar[str]  # = kind: the registry's key
    description: ClassVar[str] = ""
    #: Trains with the shared loop (:mod:`harness.engine.loop`), which runs over several
    #: processes (DDP): executors give such a stage ``gpus_per_stage`` processes, others one.
    distributed: ClassVar[bool] = False
    Params: ClassVar[type[StageParams]] = StageParams
    #: The per-epoch log its artifact holds (the report's loss curves read it), or None.
    log_file: ClassVar[str | None] = None
    #: The setting whose learning rate a diverged training of this kind should lower.
    lr_setting: ClassVar[str] = "finetune.lr"
    #: ``(key, heading)`` of the report section the kind adds from records (its entry in
    #: ``report.json``), or None: see :meth:`report_rows`, :meth:`report_table`, :meth:`report_marks`.
    report_section: ClassVar[tuple[str, str] | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "kind" in cls.__dict__:
            cls.name = cls.kind

    @classmethod
    def create(cls, plan: Planning, **kwargs: Any) -> Stage:
        """The stage of this kind for ``kwargs`` (each kind names its own); ``plan`` (a
        :class:`harness.plan.Planning`) gives the spec, the datasets and the registry."""
        raise NotImplementedError(f"stage kind '{cls.kind}' has no constructor")

    @classmethod
    def make(cls, *, label: str, config: dict[str, Any], version: str, params: StageParams,
             deps: dict[str, Stage] | None = None, info: dict[str, Any] | None = None) -> Stage:
        """A stage of this kind; ``params`` as JSON (the fields it was given, whole)."""
        data = params.model_dump(mode="json")
        return Stage(kind=cls.kind, label=label, config=config, version=version, deps=deps or {},
                     info=info or {}, params={k: v for k, v in data.items() if k in params.model_fields_set})

    @classmethod
    def params_of(cls, stage: Stage) -> Any:
        """``stage``'s params, typed (:attr:`Params`)."""
        return cls.Params.model_validate(stage.params)

    def run(self, stage: Stage, inputs: dict[str, Path], ctx: StageContext, env: StageEnv
            ) -> dict[str, Any]:
        raise NotImplementedError

    def record_summary(self, stage: Stage, result: dict[str, Any], path: Path, env: StageEnv
                       ) -> dict[str, Any]:
        """What a record's ``upstream`` shows of this stage (``path``: its committed folder)."""
        return dict(result or {})

    def record_facts(self, stage: Stage, cell: Cell, dataset: str) -> dict[str, Any]:
        """Top-level facts for the record of ``cell`` (``stage`` is the first of this kind
        upstream of its model; ``dataset``: the spec's dataset name). Default: none."""
        return {}

    @classmethod
    def report_rows(cls, records: list[dict[str, Any]], metric_of: Any) -> list[dict[str, Any]]:
        """The entries of its report section (``report.json``'s ``report_section[0]``) from the
        records; ``metric_of(record, name, variant)`` reads a metric as its family does."""
        return []

    @classmethod
    def report_table(cls, report: dict[str, Any]) -> Any:
        """Its section's table (:class:`harness.report.tables.Table`) from the report."""
        return None

    @classmethod
    def report_marks(cls, report: dict[str, Any]) -> tuple[dict[tuple[str, str, float], str], str | None]:
        """Marks for cells of the main table, by ``(method, protocol, fraction)``, and the note
        that explains them (None: no mark)."""
        return {}, None
