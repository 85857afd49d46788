"""Telling a fault in plugin code from a bug in the harness.

An exception that escapes a command is a bug of the harness (exit 1) unless it was raised inside
plugin code: then it is a plugin problem (exit 4), reported in one line naming the plugin, its
distribution, the contract method the harness called (``training_step``, ``prepare``...) and the
exception. "Inside plugin code" is read off the traceback: the innermost frame that is not a
third-party library (torch, numpy...) belongs to a plugin's package rather than to ``harness``.
A ``NotImplementedError`` from one of the harness's contract base classes, raised on a plugin's
instance, is the plugin's too (a contract method it does not implement).

Only the plugins that loaded are known, so this needs no import of torch.
"""

from __future__ import annotations

import traceback
from types import FrameType
from typing import TYPE_CHECKING, Any

from harness.errors import PluginError

if TYPE_CHECKING:
    from harness.plugins import PluginInfo, Registry

_CONTRACT_MODULES = ("harness.methods", "harness.data.base")


class PluginFault(PluginError):
    """An exception raised inside plugin code (exit 4); ``__cause__`` is the original."""


def _registry() -> Any:
    from harness import plugins

    return plugins._cached


def _packages(registry: Registry) -> dict[str, str]:
    """Top-level package of every loaded plugin's code -> its distribution."""
    packages: dict[str, str] = {}
    for table in (registry.methods, registry.datasets, registry.metric_families,
                  registry.stage_kinds, registry.protocols):
        for info in table.values():
            top = info.cls.__module__.split(".")[0]
            if top != "harness":
                packages.setdefault(top, info.distribution)
    for obj in registry.pm.get_plugins():  # hook-only plugins too (loggers: lifecycle hooks)
        module = getattr(obj, "__name__", None) if isinstance(getattr(obj, "__name__", None), str) \
            else type(obj).__module__
        top = str(module).split(".")[0]
        if top not in ("harness", "builtins"):
            name = str(registry.pm.get_name(obj) or "")  # "distribution:entry point"
            packages.setdefault(top, name.split(":")[0] if ":" in name else "unknown")
    return packages


def _top(frame: FrameType) -> str:
    return str(frame.f_globals.get("__name__", "")).split(".")[0]


def _info_for(registry: Registry, frame: FrameType) -> PluginInfo | None:
    """The registered plugin a frame runs for: its ``self``/``cls``, else its module's class."""
    owner = frame.f_locals.get("self", frame.f_locals.get("cls"))
    owner_cls = owner if isinstance(owner, type) else type(owner) if owner is not None else None
    tables = (registry.methods, registry.datasets, registry.metric_families,
              registry.stage_kinds, registry.protocols)
    if owner_cls is not None:
        for table in tables:
            for info in table.values():
                if issubclass(owner_cls, info.cls):
                    return info
    module = frame.f_globals.get("__name__", "")
    for table in tables:
        for info in table.values():
            if info.cls.__module__ == module:
                return info
    return None


def describe(info: Any) -> str:
    """``method plugin 'x' (from dist 1.0)``."""
    return f"{info.category} plugin '{info.name}' (from {info.distribution} {info.dist_version})"


def describe_object(obj: Any, fallback: str) -> str:
    """:func:`describe` of the registered plugin ``obj`` is an instance of, or ``fallback``."""
    registry = _registry()
    if registry is not None:
        for table in (registry.methods, registry.datasets, registry.protocols):
            for info in table.values():
                if isinstance(obj, info.cls):
                    return describe(info)
    return fallback


def plugin_fault(exc: BaseException, registry: Registry | None = None) -> PluginFault | None:
    """The plugin error ``exc`` is, or None when it is not raised by plugin code (``registry``:
    the plugins that loaded; default the one the command built)."""
    registry = registry if registry is not None else _registry()
    if registry is None or isinstance(exc, (KeyboardInterrupt, SystemExit)):
        return None
    packages = _packages(registry)
    frames = [frame for frame, _ in traceback.walk_tb(exc.__traceback__)]
    where = ["plugin" if _top(f) in packages else "core" if _top(f) == "harness" else "lib"
             for f in frames]
    own = [i for i, w in enumerate(where) if w != "lib"]
    if not own:
        return None
    last = own[-1]
    if where[last] == "core":
        return _unimplemented(registry, exc, frames[last])
    entry = last
    while entry > 0 and where[entry - 1] != "core":  # back to where the harness called in
        entry -= 1
    entry = next(i for i in range(entry, last + 1) if where[i] == "plugin")
    frame = frames[entry]
    info = _info_for(registry, frame)
    who = describe(info) if info is not None else \
        f"plugin package '{_top(frame)}' (from {packages[_top(frame)]})"
    return _fault(f"{who}: {frame.f_code.co_name} raised {_exception(exc)}", exc)


def _unimplemented(registry: Registry, exc: BaseException, frame: FrameType) -> PluginFault | None:
    if not isinstance(exc, NotImplementedError) or \
            frame.f_globals.get("__name__") not in _CONTRACT_MODULES:
        return None
    info = _info_for(registry, frame)
    if info is None or info.cls.__module__.split(".")[0] == "harness":
        return None
    method = frame.f_code.co_name
    return _fault(f"{describe(info)}: `{method}` is not implemented (the harness called it; "
                  f"define {info.cls.__name__}.{method}, see docs/writing-plugins.md)", exc)


def _exception(exc: BaseException) -> str:
    message = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {message}" if message else f"{type(exc).__name__} (no message)"


def _fault(message: str, exc: BaseException) -> PluginFault:
    fault = PluginFault(f"{message} (a fault in the plugin, not in the harness: fix it or report "
                        f"it to its authors; --debug shows the traceback)")
    fault.__cause__ = exc
    return fault


def require_attribute(method: Any, model: Any, attribute: str, expected: Any, hook: str) -> None:
    """A method's ``build_model`` must keep ``expected`` (the module it was given) as
    ``model.<attribute>``: the engine saves and evaluates that part."""
    if model is expected or getattr(model, attribute, None) is expected:
        return
    others = [name for name, value in vars(model).get("_modules", {}).items() if value is expected]
    found = f" (it is `.{others[0]}`)" if others else ""
    who = describe_object(method, f"method {getattr(method, 'name', '?')!r}")
    raise PluginFault(
        f"{who}: {hook} returned "
        f"a {type(model).__name__} that does not keep the module it was given as "
        f"`.{attribute}`{found}; assign it as `self.{attribute} = {attribute}` (the harness saves "
        f"and fine-tunes `model.{attribute}`)")
