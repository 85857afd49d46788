"""Plugin manager: entry-point discovery, registries of methods, datasets and metric families,
isolation of broken plugins (one that fails to import, or whose hook implementation matches no
hook).

pluggy's own ``load_setuptools_entrypoints`` stops at the first module that fails to import;
here each entry point is loaded on its own so that one broken plugin is listed with its error
and the others keep working.
"""

from __future__ import annotations

import importlib.metadata as md
from dataclasses import dataclass, field
from typing import Any, Iterable

import pluggy

from harness import events, hookspecs
from harness.contract import class_problems
from harness.errors import PluginError, did_you_mean

ENTRY_POINT_GROUP = "harness"


@dataclass(frozen=True)
class PluginInfo:
    """One registered method or dataset class and where it came from."""

    name: str
    category: str  # "method", "dataset", "metric family", "stage kind" or "protocol"
    kind: str  # method kind (init/pretrain/semisupervised), dataset kind (labeled/unlabeled)
    # or a metric family's metric names
    cls: type
    distribution: str
    dist_version: str
    entry_point: str

    @property
    def version(self) -> str:
        """Version that goes into stage keys: the class's own version and its distribution's."""
        return f"{getattr(self.cls, 'version', '0')}@{self.distribution}=={self.dist_version}"


@dataclass(frozen=True)
class BrokenPlugin:
    entry_point: str
    distribution: str
    error: str
    name: str = ""  # the class's name, when one class of the entry point broke its contract


@dataclass
class Registry:
    pm: pluggy.PluginManager
    methods: dict[str, PluginInfo] = field(default_factory=dict)
    datasets: dict[str, PluginInfo] = field(default_factory=dict)
    metric_families: dict[str, PluginInfo] = field(default_factory=dict)
    stage_kinds: dict[str, PluginInfo] = field(default_factory=dict)
    protocols: dict[str, PluginInfo] = field(default_factory=dict)
    loggers: dict[str, PluginInfo] = field(default_factory=dict)
    executors: dict[str, PluginInfo] = field(default_factory=dict)
    broken: list[BrokenPlugin] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)

    # --- lookups with helpful errors ---------------------------------------------------------
    def method(self, name: str) -> PluginInfo:
        return self._get(self.methods, name, "method")

    def dataset(self, name: str) -> PluginInfo:
        return self._get(self.datasets, name, "dataset")

    def stage_kind(self, name: str) -> PluginInfo:
        return self._get(self.stage_kinds, name, "stage kind")

    def protocol(self, name: str) -> PluginInfo:
        return self._get(self.protocols, name, "protocol")

    def logger(self, name: str) -> PluginInfo:
        return self._get(self.loggers, name, "logger")

    def info(self, category: str, name: str) -> PluginInfo:
        """The registered plugin ``name`` of ``category`` ("method", "dataset", "metric family",
        "stage kind", "protocol", "logger", "executor"); a PluginError naming the installed
        ones (or why it failed to load) otherwise."""
        return self._get(getattr(self, TABLES[category]), name, category)

    # --- the one factory ---------------------------------------------------------------------
    def config(self, category: str, name: str, options: Any = None, *, source: str | None = None,
               lines: dict | None = None, prefix: tuple = ()) -> Any:
        """Plugin ``name``'s ``Config`` validated: ``options`` a mapping (None: the defaults)
        or an instance of that ``Config`` (taken as it is). A SpecError (exit 2) with one line
        per bad field otherwise, placed by ``source``/``lines`` at ``prefix`` of the spec
        (default: ``<category> '<name>'``)."""
        from pydantic import ValidationError

        config_cls = self.info(category, name).cls.Config
        if isinstance(options, config_cls):
            return options
        try:
            return config_cls.model_validate({} if options is None else options)
        except ValidationError as exc:
            from harness.errors import SpecError
            from harness.spec.problems import format_errors

            where = f"{category} '{name}'" if source is None else source
            raise SpecError(format_errors(exc, config_cls, where,
                                          lines or {}, prefix=prefix)) from None

    def create(self, category: str, name: str, config: Any = None, **kwargs: Any) -> Any:
        """The one place a plugin object is built: plugin ``name`` of ``category`` with its
        ``Config`` validated (:meth:`config`; plugins without one take no config) and
        ``kwargs`` (a dataset's ``root``, a logger's ``run_dir``)."""
        cls = self.info(category, name).cls
        if getattr(cls, "Config", None) is None:
            if config is not None:
                raise TypeError(f"{category} plugin '{name}' takes no config")
            return cls(**kwargs)
        return cls(self.config(category, name, config), **kwargs)

    def metric_family(self, name: str) -> Any:
        """The metric family (an instance) a dataset names by its ``metric_family``."""
        return self.create("metric family", name)

    def family_of_metric(self, metric: str) -> Any | None:
        """The metric family (an instance) that defines headline metric ``metric``, or None."""
        for info in self.metric_families.values():
            if metric in getattr(info.cls, "metric_names", ()):
                return self.create("metric family", info.name)
        return None

    def like_for_like(self, reference_metric: str | None) -> tuple[str, str | None] | None:
        """Our ``(metric, variant)`` that means what a published table's metric means."""
        for info in self.metric_families.values():
            target = getattr(info.cls, "like_for_like", {}).get(reference_metric or "")
            if target is not None:
                return target
        return None

    def _get(self, table: dict[str, PluginInfo], name: str, category: str) -> PluginInfo:
        self.raise_duplicates()
        if name in table:
            return table[name]
        raise PluginError(self.missing_message(name, category))

    def missing_message(self, name: str, category: str) -> str:
        table = getattr(self, TABLES.get(category, "metric_families"))
        hint = did_you_mean(name, table)
        broken = [b for b in self.broken if name in (b.entry_point, b.name)]
        if broken:
            return (f"{category} plugin '{name}' failed to load "
                    f"(from {broken[0].distribution}): {broken[0].error}")
        known = ", ".join(sorted(table)) or "none"
        plural = "metric families" if category == "metric family" else f"{category}s"
        return (f"{category} plugin '{name}' is not installed{hint}; installed {plural}: "
                f"{known}. Install the package that provides it (see `harness list`).")

    def raise_duplicates(self) -> None:
        if self.duplicates:
            raise PluginError("; ".join(self.duplicates))

    @property
    def hook(self) -> "Hooks":
        """The plugins' hooks; every lifecycle call gets its typed event added (``event=``)."""
        return Hooks(self.pm.hook)


class Hooks:
    """``pm.hook`` whose lifecycle calls also pass ``event``, the typed event of the call
    (:mod:`harness.events`), built from the dict arguments the caller gives. It goes with those
    deprecated arguments in harness 0.2 (:data:`harness.hookspecs.DICT_ARGUMENTS_END`): the
    callers then build and pass ``event`` alone."""

    def __init__(self, relay: Any):
        self._relay = relay

    def __getattr__(self, name: str) -> Any:
        caller = getattr(self._relay, name)
        build = events.BUILDERS.get(name)
        if build is None:
            return caller

        def call(**kwargs: Any) -> Any:
            kwargs.setdefault("event", build(**kwargs))
            return caller(**kwargs)

        return call


def _dist_of(ep: md.EntryPoint) -> tuple[str, str]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return "unknown", "0"
    # Each `.metadata` parses the distribution's METADATA file (with its README: ~10 ms); once
    # per distribution, not twice per entry point, keeps `harness list`/`validate` fast.
    where = str(getattr(dist, "_path", "")) or None  # a distribution without a path: no cache
    if where is None or where not in _DISTS:
        meta = dist.metadata
        found = (meta["Name"] or dist.name or "unknown", meta["Version"] or "0")
        if where is None:
            return found
        _DISTS[where] = found
    return _DISTS[where]


_DISTS: dict[str, tuple[str, str]] = {}


def _entry_points() -> list[md.EntryPoint]:
    eps = md.entry_points(group=ENTRY_POINT_GROUP)
    # The same distribution can show up twice on sys.path (e.g. editable + site); keep one.
    seen: set[tuple[str, str]] = set()
    unique = []
    for ep in eps:
        dist, _ = _dist_of(ep)
        if (dist, ep.name) in seen:
            continue
        seen.add((dist, ep.name))
        unique.append(ep)
    return unique


#: The registration hooks: hook name -> (category, the Registry table it fills).
REGISTRATIONS = {
    "harness_register_methods": ("method", "methods"),
    "harness_register_datasets": ("dataset", "datasets"),
    "harness_register_metric_families": ("metric family", "metric_families"),
    "harness_register_stage_kinds": ("stage kind", "stage_kinds"),
    "harness_register_protocols": ("protocol", "protocols"),
    "harness_register_loggers": ("logger", "loggers"),
    "harness_register_executors": ("executor", "executors"),
}


#: category -> the Registry table of its plugins.
TABLES = {category: table for category, table in REGISTRATIONS.values()}


def _kind_of(cls: type, category: str) -> str:
    if category == "method":
        return str(getattr(cls, "kind", "?"))
    if category == "metric family":
        return ",".join(getattr(cls, "metric_names", ()))
    if category != "dataset":
        return category
    return "labeled" if getattr(cls, "labeled", True) else "unlabeled"


def build_registry(extra_plugins: Iterable[Any] = ()) -> Registry:
    """Discover every plugin of the ``harness`` entry-point group.

    ``extra_plugins`` are modules/objects registered in addition (used by embedding code);
    tests of third-party behaviour install real packages instead.
    """
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    registry = Registry(pm=pm)
    origin = _register_plugins(pm, registry, extra_plugins)
    _check_pending(pm, registry, origin)
    for hook_name, (category, table) in REGISTRATIONS.items():
        for impl in getattr(pm.hook, hook_name).get_hookimpls():
            dist, dist_version, ep_name = origin.get(id(impl.plugin), ("unknown", "0", impl.plugin_name))
            try:
                classes = impl.function() or []
            except Exception as exc:  # noqa: BLE001
                registry.broken.append(BrokenPlugin(
                    ep_name, dist, f"{hook_name}() raised {type(exc).__name__}: {exc}"))
                continue
            for cls in classes:
                _add_class(registry, getattr(registry, table), cls, category,
                           (dist, dist_version, ep_name))
    _check_metric_names(registry)
    return registry


def _register_plugins(pm: pluggy.PluginManager, registry: Registry,
                      extra_plugins: Iterable[Any]) -> dict[int, tuple[str, str, str]]:
    """Register each entry point's object (a failed import is a broken plugin) and the extra
    plugins; returns ``id(object) -> (distribution, version, entry point)``."""
    origin: dict[int, tuple[str, str, str]] = {}
    for ep in _entry_points():
        dist, dist_version = _dist_of(ep)
        try:
            obj = ep.load()
            if pm.is_registered(obj):
                continue
            pm.register(obj, name=f"{dist}:{ep.name}")
        except Exception as exc:  # noqa: BLE001 - any import failure isolates the plugin
            registry.broken.append(BrokenPlugin(ep.name, dist, f"{type(exc).__name__}: {exc}"))
            continue
        origin[id(obj)] = (dist, dist_version, ep.name)
    for obj in extra_plugins:
        if pm.is_registered(obj):
            continue
        pm.register(obj)
        origin[id(obj)] = ("local", "0", getattr(obj, "__name__", repr(obj)))
    return origin


def _check_pending(pm: pluggy.PluginManager, registry: Registry,
                   origin: dict[int, tuple[str, str, str]]) -> None:
    """A hook implementation that matches no hook (a misspelled name would be silently never
    called) makes its plugin broken: unregistered, and listed with the name it should have."""
    known = [name for name in dir(hookspecs) if name.startswith(f"{hookspecs.PROJECT}_")]
    for name in list(vars(pm.hook)):
        caller = getattr(pm.hook, name)
        if caller.has_spec():
            continue
        for impl in caller.get_hookimpls():
            dist, _, ep_name = origin.get(id(impl.plugin), ("unknown", "0", impl.plugin_name))
            registry.broken.append(BrokenPlugin(
                ep_name, dist, f"hook implementation '{name}' matches no hook of the harness"
                f"{did_you_mean(name, known)}; see harness/hookspecs.py"))
            if pm.is_registered(impl.plugin):
                pm.unregister(impl.plugin)
    pm.check_pending()  # nothing is left pending: raises only on a bug here


def _add_class(registry: Registry, table: dict[str, PluginInfo], cls: type, category: str,
               where: tuple[str, str, str]) -> None:
    dist, dist_version, ep_name = where
    name = getattr(cls, "name", None)
    try:
        problems = class_problems(cls, category)
    except Exception as exc:  # noqa: BLE001 - plugin code (a Config default factory...) failed
        problems = [f"checking its contract raised {type(exc).__name__}: {exc}"]
    if problems:
        label = getattr(cls, "__qualname__", repr(cls))
        registry.broken.append(BrokenPlugin(
            ep_name, dist, f"{category} class {label}: " + "; ".join(problems),
            name if isinstance(name, str) else ""))
        return
    if name in table and table[name].cls is not cls:
        other = table[name]
        registry.duplicates.append(
            f"two {category} plugins are named '{name}': one from distribution "
            f"'{other.distribution}' ({other.entry_point}), one from "
            f"'{dist}' ({ep_name}); uninstall or rename one of them")
        return
    table[name] = PluginInfo(name, category, _kind_of(cls, category), cls, dist, dist_version,
                             ep_name)


def _check_metric_names(registry: Registry) -> None:
    """A headline metric name belongs to one family (records and reports find it by name)."""
    owner: dict[str, PluginInfo] = {}
    for info in registry.metric_families.values():
        for metric in getattr(info.cls, "metric_names", ()):
            if metric in owner:
                other = owner[metric]
                registry.duplicates.append(
                    f"two metric families define the metric '{metric}': '{other.name}' from "
                    f"'{other.distribution}' ({other.entry_point}) and '{info.name}' from "
                    f"'{info.distribution}' ({info.entry_point}); uninstall or rename one")
            owner.setdefault(metric, info)


_cached: Registry | None = None


def get_registry(refresh: bool = False) -> Registry:
    global _cached
    if _cached is None or refresh:
        _cached = build_registry()
    return _cached
