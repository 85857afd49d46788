"""Plugin manager: entry-point discovery, registries of methods and datasets, isolation of
broken plugins.

pluggy's own ``load_setuptools_entrypoints`` stops at the first module that fails to import;
here each entry point is loaded on its own so that one broken plugin is listed with its error
and the others keep working.
"""

from __future__ import annotations

import difflib
import importlib.metadata as md
from dataclasses import dataclass, field
from typing import Any, Iterable

import pluggy

from harness import hookspecs
from harness.errors import PluginError

ENTRY_POINT_GROUP = "harness"


@dataclass(frozen=True)
class PluginInfo:
    """One registered method or dataset class and where it came from."""

    name: str
    category: str  # "method", "dataset", "stage kind" or "protocol"
    kind: str  # method kind (init/pretrain/semisupervised), dataset kind (labeled/unlabeled), or the category
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


@dataclass
class Registry:
    pm: pluggy.PluginManager
    methods: dict[str, PluginInfo] = field(default_factory=dict)
    datasets: dict[str, PluginInfo] = field(default_factory=dict)
    stage_kinds: dict[str, PluginInfo] = field(default_factory=dict)
    protocols: dict[str, PluginInfo] = field(default_factory=dict)
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

    def _get(self, table: dict[str, PluginInfo], name: str, category: str) -> PluginInfo:
        self.raise_duplicates()
        if name in table:
            return table[name]
        raise PluginError(self.missing_message(name, category))

    def missing_message(self, name: str, category: str) -> str:
        table = {"method": self.methods, "dataset": self.datasets, "stage kind": self.stage_kinds,
                 "protocol": self.protocols}[category]
        hint = did_you_mean(name, table)
        broken = [b for b in self.broken if b.entry_point == name]
        if broken:
            return (f"{category} plugin '{name}' failed to load "
                    f"(from {broken[0].distribution}): {broken[0].error}")
        known = ", ".join(sorted(table)) or "none"
        return (f"{category} plugin '{name}' is not installed{hint}; installed {category}s: "
                f"{known}. Install the package that provides it (see `harness list`).")

    def raise_duplicates(self) -> None:
        if self.duplicates:
            raise PluginError("; ".join(self.duplicates))

    @property
    def hook(self):
        return self.pm.hook


def did_you_mean(name: str, options: Iterable[str]) -> str:
    close = difflib.get_close_matches(str(name), list(options), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _dist_of(ep: md.EntryPoint) -> tuple[str, str]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return "unknown", "0"
    return dist.metadata["Name"] or dist.name or "unknown", dist.version or "0"


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


def _kind_of(cls: type, category: str) -> str:
    if category == "method":
        return str(getattr(cls, "kind", "?"))
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

    for hook_name, category, table in (
        ("harness_register_methods", "method", registry.methods),
        ("harness_register_datasets", "dataset", registry.datasets),
        ("harness_register_stage_kinds", "stage kind", registry.stage_kinds),
        ("harness_register_protocols", "protocol", registry.protocols),
    ):
        caller = getattr(pm.hook, hook_name)
        for impl in caller.get_hookimpls():
            dist, dist_version, ep_name = origin.get(id(impl.plugin), ("unknown", "0", impl.plugin_name))
            try:
                classes = impl.function() or []
            except Exception as exc:  # noqa: BLE001
                registry.broken.append(BrokenPlugin(ep_name, dist, f"{type(exc).__name__}: {exc}"))
                continue
            for cls in classes:
                name = getattr(cls, "name", None)
                if not name:
                    registry.broken.append(
                        BrokenPlugin(ep_name, dist, f"{category} class {cls!r} has no `name`"))
                    continue
                info = PluginInfo(name, category, _kind_of(cls, category), cls, dist,
                                  dist_version, ep_name)
                if name in table and table[name].cls is not cls:
                    other = table[name]
                    registry.duplicates.append(
                        f"two {category} plugins are named '{name}': one from distribution "
                        f"'{other.distribution}' ({other.entry_point}), one from "
                        f"'{dist}' ({ep_name}); uninstall or rename one of them")
                    continue
                table[name] = info
    return registry


_cached: Registry | None = None


def get_registry(refresh: bool = False) -> Registry:
    global _cached
    if _cached is None or refresh:
        _cached = build_registry()
    return _cached
