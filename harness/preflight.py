"""Every input a spec needs, checked before any work: weights files (each method's
``preflight``), the fine-tuning dataset, the unlabeled set of the methods that learn from one,
and the other datasets a method's chain reads (its ``needed_datasets``). Every missing one is
listed at once, each with its fix, in one :class:`~harness.errors.MissingInputs` (exit 3), so a
newcomer fixes them all in one go instead of one per try.

Only what is *missing* is collected here; a prepared cache that does not match its manifest is
still refused when it is opened (:mod:`harness.data.open`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from harness.data.base import prepare_command_for
from harness.data.open import dataset_in_store
from harness.errors import DataError, MissingInputs

if TYPE_CHECKING:
    from harness.plugins import Registry
    from harness.spec.models import ResolvedSpec
    from harness.store import ArtifactStore


def missing_inputs(rspec: ResolvedSpec, registry: Registry, store: ArtifactStore,
                   prepare: bool = True) -> list[str]:
    """One line per missing input (deduplicated, in the spec's order): what is missing and how
    to get it. ``prepare``: a dataset that can generate itself counts as present."""
    spec = rspec.spec
    problems: list[str] = []
    methods = []
    for row, config in rspec.method_configs.items():
        method = registry.create("method", spec.plugin_of(row), config)
        methods.append(method)
        try:
            method.preflight(spec)
        except DataError as exc:
            problems.append(str(exc))
    problems += _dataset_problem(registry, spec.dataset.name, rspec.dataset_config, store, prepare)
    if spec.unlabeled is not None and any(getattr(m, "needs_unlabeled", False) for m in methods):
        problems += _dataset_problem(registry, spec.unlabeled.name, rspec.unlabeled_config, store,
                                     prepare, role="unlabeled set")
    for method in methods:
        for name, role in method.needed_datasets(spec):
            if name != spec.dataset.name:
                problems += _dataset_problem(registry, name, None, store, prepare, role=role)
    return list(dict.fromkeys(problems))


def _dataset_problem(registry: Registry, name: str, config: Any, store: ArtifactStore,
                     prepare: bool, role: str = "") -> list[str]:
    dataset = dataset_in_store(registry, name, config, store)
    if dataset.is_prepared() or (dataset.auto_prepare and prepare):
        return []
    hint = f" ({dataset.source_hint})" if dataset.source_hint else ""
    what = f" ({role})" if role else ""
    return [f"dataset '{dataset.name}'{what} is not prepared (looked in {dataset.root}); "
            f"run `{prepare_command_for(dataset)}`{hint}"]


def check_inputs(rspec: ResolvedSpec, registry: Registry, store: ArtifactStore,
                 prepare: bool = True) -> None:
    """Raise :class:`MissingInputs` listing every missing input of the spec; nothing if none."""
    problems = missing_inputs(rspec, registry, store, prepare)
    if problems:
        raise MissingInputs(problems)
