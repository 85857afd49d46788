"""The stage-kind contract.

A stage kind is a class with a ``kind`` (its registered name) and one entry point,
``run(stage, inputs, ctx, env)``: it computes the stage described by ``stage`` (its ``config``,
which the key hashes, and its ``params``), reading its dependencies' committed folders
``inputs`` (name -> folder, also ``ctx.inputs``), writes its artifact into ``ctx.out`` and
returns a JSON summary (stored with the artifact). ``env`` opens what the stage needs beyond
its data: datasets, method and protocol plugins. ``record_summary`` is what a cell's record
shows of the stage (by default its summary). ``distributed = True`` marks a kind that trains
with the shared loop, which executors may run over several processes (``gpus_per_stage``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar


@dataclass
class StageEnv:
    rspec: Any  # the resolved spec
    registry: Any  # harness.plugins.Registry
    resources: Any  # harness.data.open.Resources: the datasets, opened once

    @property
    def spec(self) -> Any:
        return self.rspec.spec

    def method(self, params: dict[str, Any]) -> Any:
        """A method object from its data (:func:`harness.planner.method_params`)."""
        info = self.registry.method(params["plugin"])
        return info.cls(info.cls.Config.model_validate(params["config"]))

    def settings(self, data: dict[str, Any]) -> Any:
        """Fine-tuning settings from their JSON dump."""
        return type(self.spec.finetune).model_validate(data)

    @property
    def file_hash_cache(self) -> Path | None:
        """Where content hashes of input files are cached (:mod:`harness.inputs`)."""
        root = getattr(getattr(self.resources, "store", None), "root", None)
        return None if root is None else Path(root) / "file-hashes"

    def labeled(self, name: str | None) -> tuple[Any, Any]:
        """``(dataset, arrays)`` of a labeled dataset plugin; None = the spec's own."""
        return self.resources.labeled(name)

    def protocol(self, name: str) -> Any:
        return self.registry.protocol(name).cls()


class StageKind:
    kind: ClassVar[str]
    name: ClassVar[str]  # = kind: the registry's key
    description: ClassVar[str] = ""
    #: Trains with the shared loop (:mod:`harness.engine.loop`), which runs over several
    #: processes (DDP): executors give such a stage ``gpus_per_stage`` processes, others one.
    distributed: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "kind" in cls.__dict__:
            cls.name = cls.kind

    def run(self, stage: Any, inputs: dict[str, Path], ctx: Any, env: StageEnv) -> dict[str, Any]:
        raise NotImplementedError

    def record_summary(self, stage: Any, result: dict[str, Any], path: Path, env: StageEnv) -> dict[str, Any]:
        """What a record's ``upstream`` shows of this stage (``path``: its committed folder)."""
        return dict(result or {})
