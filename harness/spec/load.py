"""Loading a spec: read the YAML (with lines), apply ``--set``, validate the models, then check
plugin names, each plugin's settings and the cross-field rules, reporting every problem at once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from harness.errors import PluginError, SpecError
from harness.loggers import logger_problems
from harness.plugins import Registry
from harness.spec.checks import (check_dataset, check_methods, fold_problems, method_problems,
                                 plugin_name_problems)
from harness.spec.cross import cross_checks, metric_problems
from harness.spec.models import ResolvedSpec, Spec
from harness.spec.overrides import apply_overrides
from harness.spec.problems import format_errors, lenient
from harness.spec.source import Lines, mark_overrides, read_yaml
from harness.spec.values import name_problems, number_problems


def load_spec(path: str | Path, overrides: list[str] | None = None,
              registry: Registry | None = None) -> ResolvedSpec:
    """Read, override and validate a spec against the installed plugins of ``registry`` (None:
    :func:`harness.plugins.get_registry`, for callers outside the harness's own entry points).
    Raises :class:`SpecError` (exit 2) listing every problem, or :class:`PluginError` (exit 4)
    when the only problem is a plugin that is not installed."""
    from harness.plugins import get_registry

    path = Path(path)
    overrides = list(overrides or [])
    source = str(path)
    data, lines, problems = read_yaml(path)
    data = apply_overrides(data, overrides)
    mark_overrides(lines, overrides)
    registry = registry or get_registry()
    registry.raise_duplicates()

    plugin_missing: list[str] = []
    problems.extend(name_problems(data, source, lines))
    context = {"registry": registry}  # for the validators of plugin names (protocols)
    try:
        spec = Spec.model_validate(data, context=context)
    except ValidationError as exc:
        problems.extend(format_errors(exc, Spec, source, lines))
        spec = lenient(Spec, data, exc, context)  # the other fields' checks still run
    # Plugin names can be checked even when other fields are broken.
    problems.extend(plugin_name_problems(data, source, lines, registry, plugin_missing))

    method_configs: dict[str, Any] = {}
    dataset_config = unlabeled_config = None
    if spec is not None and not plugin_missing:
        dataset_config, unlabeled_config, method_configs = settings_checks(
            spec, registry, source, lines, problems)

    if problems:
        raise SpecError(problems + plugin_missing, source=None)
    if plugin_missing:
        raise PluginError(plugin_missing[0] if len(plugin_missing) == 1
                          else "; ".join(plugin_missing))
    assert spec is not None
    return ResolvedSpec(spec=spec, source=source, overrides=overrides,
                        method_configs=method_configs, dataset_config=dataset_config,
                        unlabeled_config=unlabeled_config)


def settings_checks(spec: Spec, registry: Registry, source: str, lines: Lines,
                    problems: list[str]) -> tuple[Any, Any, dict[str, Any]]:
    """Each plugin's own settings, folds, the methods' own spec checks, number ranges and the headline metric (even
    when other fields are broken), then the cross-field checks (only when nothing else is)."""
    dataset_config = check_dataset(spec.dataset, "dataset", registry, source, lines, problems,
                                   spec.metric)
    unlabeled_config = (check_dataset(spec.unlabeled, "unlabeled", registry, source, lines, problems,
                                      spec.metric) if spec.unlabeled is not None else None)
    method_configs = check_methods(spec, registry, source, lines, problems)
    if dataset_config is not None:
        problems.extend(fold_problems(spec, registry, dataset_config, source, lines))
    problems.extend(method_problems(spec, method_configs, registry, source, lines))
    problems.extend(number_problems({(): spec, ("dataset",): dataset_config, ("unlabeled",): unlabeled_config,
                                     **{("methods", m): c for m, c in method_configs.items()}}, source, lines))
    problems.extend(logger_problems(spec.loggers, registry, source, lines))
    metric = metric_problems(spec, registry, source, lines)  # reported, but blocks nothing
    from harness.execute.base import execution_problems

    problems.extend(execution_problems(spec, registry, source, lines))
    if not problems:
        cross_checks(spec, registry, dataset_config, source, lines, problems)
    problems.extend(metric)
    return dataset_config, unlabeled_config, method_configs
