"""Checks of a spec against the installed plugins: plugin names, each plugin's own settings
(the method's and dataset's ``Config``), the harness's row keys, folds the dataset has and
what each method checks against the whole spec. Each check appends to (or returns) problem lines, so that validation reports
them all at once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from harness.errors import SpecError
from harness.errors import did_you_mean
from harness.plugins import Registry
from harness.spec.models import ROW_KEYS, DatasetRef, RowSettings, Spec
from harness.spec.problems import format_errors, printable, where
from harness.spec.source import Lines
from harness.spec.values import SAFE_NAME

if TYPE_CHECKING:
    from harness.data.base import DatasetConfig


def plugin_problem(at: str, path: str, name: str, category: str, registry: Registry,
                   plugin_missing: list[str]) -> str | None:
    """A misspelled plugin name (a problem, returned), or one not installed or broken (added to
    ``plugin_missing``: exit 4 when it is the only kind of problem)."""
    table = registry.methods if category == "method" else registry.datasets
    if name in table:
        return None
    if any(b.entry_point == name for b in registry.broken):  # installed but failed to load
        plugin_missing.append(f"{at}: {path}: {registry.missing_message(name, category)}")
        return None
    hint = did_you_mean(name, table)
    if hint:
        return f"{at}: {path}: unknown {category} '{name}'{hint}"
    plugin_missing.append(f"{at}: {path}: {registry.missing_message(name, category)}")
    return None


def plugin_name_problems(data: dict[str, Any], source: str, lines: Lines, registry: Registry,
                         plugin_missing: list[str]) -> list[str]:
    """The dataset and method plugins the raw document names (checked even when other fields
    are broken)."""
    problems = []
    for field in ("dataset", "unlabeled"):
        raw = data.get(field)
        ds_name = raw.get("name") if isinstance(raw, dict) else raw
        if isinstance(ds_name, str):
            problems.append(plugin_problem(where(source, lines, (field,)), field, ds_name,
                                           "dataset", registry, plugin_missing))
    raw_methods = data.get("methods")
    method_names = list(raw_methods) if isinstance(raw_methods, (list, dict)) else []
    for i, m in enumerate(method_names):
        if not isinstance(m, str):
            continue
        loc = ("methods", m) if isinstance(raw_methods, dict) else ("methods", i)
        plugin, path = m, f"methods.{m}"
        settings = raw_methods.get(m) if isinstance(raw_methods, dict) else None
        if isinstance(settings, dict) and isinstance(settings.get("method"), str):
            plugin, path, loc = settings["method"], f"methods.{m}.method", loc + ("method",)
        problems.append(plugin_problem(where(source, lines, loc), path, plugin, "method",
                                       registry, plugin_missing))
    return [p for p in problems if p]


def check_dataset(ref: DatasetRef, field: str, registry: Registry, source: str, lines: Lines,
                   problems: list[str], metric: Any = None):
    """The dataset's own options, resolved against the spec's ``metric`` settings
    (:meth:`harness.data.base.Dataset.resolve_config`)."""
    info = registry.datasets.get(ref.name)
    if info is None:
        return None
    try:
        config = registry.config("dataset", ref.name, ref.options, source=source, lines=lines,
                                 prefix=(field,))
    except SpecError as exc:
        problems.extend(exc.problems)
        return None
    if metric is None:
        return config
    config, conflicts = info.cls.resolve_config(config, metric)
    problems.extend(f"{where(source, lines, (field, option))}: {field}.{option}: {message}"
                    for option, message in conflicts)
    return config


def check_methods(spec: Spec, registry: Registry, source: str, lines: Lines,
                   problems: list[str]) -> dict[str, Any]:
    configs = {}
    for name, settings in spec.methods.items():
        if not check_row(spec, name, settings or {}, source, lines, problems, registry):
            continue
        info = registry.methods.get(spec.plugin_of(name))
        if info is None:
            continue
        settings = {k: v for k, v in (settings or {}).items() if k not in ROW_KEYS}
        try:
            configs[name] = registry.config("method", info.name, settings, source=source,
                                            lines=lines, prefix=("methods", name))
        except SpecError as exc:
            problems.extend(exc.problems)
    return configs


def check_row(spec: Spec, name: str, settings: dict[str, Any], source: str, lines: Lines,
               problems: list[str], registry: Registry) -> bool:
    """The row-level keys of ``methods.<name>``; False (with problems added) if they are bad."""
    try:
        row = RowSettings.model_validate(settings, context={"registry": registry})
    except ValidationError as exc:
        problems.extend(format_errors(exc, RowSettings, source, lines, prefix=("methods", name)))
        return False
    extra = [p for p in row.protocols or [] if p not in spec.protocols]
    if extra:
        problems.append(
            f"{where(source, lines, ('methods', name, 'protocols'))}: methods.{name}.protocols: "
            f"{', '.join(repr(p) for p in extra)} not among the spec's protocols "
            f"({', '.join(spec.protocols)}) (got {row.protocols}); a row can only narrow the "
            f"spec's protocols: drop {'it' if len(extra) == 1 else 'them'} here or add "
            f"{'it' if len(extra) == 1 else 'them'} to the top-level `protocols:`")
        return False
    return True


def fold_problems(spec: Spec, registry: Registry, dataset_config: DatasetConfig, source: str,
                  lines: Lines) -> list[str]:
    """Folds the spec names that the dataset does not have."""
    info = registry.datasets.get(spec.dataset.name)
    if info is None or spec.folds is None:
        return []
    try:
        folds = info.cls.folds(dataset_config)
    except Exception:  # noqa: BLE001 - a dataset that needs its data to list folds
        return []
    return [f"{where(source, lines, ('folds', i))}: folds: unknown fold '{printable(f)}'"
            f"{did_you_mean(f, folds)}; dataset '{spec.dataset.name}' has {', '.join(folds)}"
            for i, f in enumerate(spec.folds) if f not in folds and SAFE_NAME.match(f)]


def method_problems(spec: Spec, method_configs: dict[str, Any], registry: Registry,
                    source: str, lines: Lines) -> list[str]:
    """What each row's method finds wrong with its settings given the whole spec (its
    ``spec_problems``: e.g. a dataset its chain reads that is not installed)."""
    problems: list[str] = []
    for row, config in method_configs.items():
        info = registry.methods.get(spec.plugin_of(row))
        if info is not None:
            problems += info.cls.spec_problems(row, config, spec, registry,
                                               lambda loc: where(source, lines, loc))
    return problems


def dataset_groups(registry: Registry, name: str, options: Any) -> list[str] | None:
    """The groups (folds, or train/val/test) of dataset ``name`` with ``options`` (None: its
    defaults), known without its data (class facts); None where it cannot tell."""
    try:
        cls, config = registry.info("dataset", name).cls, registry.config("dataset", name, options)
        sizes = cls.expected_group_sizes(config)
        if sizes:
            return sorted(sizes)
        return list(cls.folds(config)) if cls.split_scheme == "kfold" else ["train", "val", "test"]
    except Exception:  # noqa: BLE001 - bad options (reported at their field), or a dataset that
        return None  # needs its data to know its groups
