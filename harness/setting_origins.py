"""Where each setting of a plugin's ``Config`` comes from (:func:`setting_origins`): the
plugin's own, or inherited from the shared settings (``PretrainSettings``,
``SemiSupervisedSettings``) or another base. Re-declaring an inherited setting is refused unless
the ``Config`` lists it in ``overrides`` (a ``ClassVar``), so that a plugin cannot silently
change a shared setting (a BYOL ``momentum`` meant for the target network would otherwise
replace LARS's momentum): :func:`shadowing_problems`, part of the plugin contract
(:mod:`harness.contract`). Nothing here imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Setting:
    """One field of a plugin's settings and where it comes from."""

    name: str
    type: str
    default: Any
    description: str
    origin: str  # "own", "inherited from PretrainSettings", "overrides PretrainSettings"
    defined_in: str  # class that declares it last
    inherited_from: str | None  # the base class it shadows or comes from


def _own_fields(model: type) -> set[str]:
    return set(model.__dict__.get("__annotations__", {})) & set(
        getattr(model, "model_fields", {}))


def _is_core(cls: type) -> bool:
    return cls.__module__.split(".")[0] == "harness"


def _models(config: type) -> list[type]:
    return [k for k in config.__mro__ if hasattr(k, "model_fields") and k.__module__ != "pydantic.main"]


def _type_name(annotation: Any) -> str:
    text = getattr(annotation, "__name__", None) if isinstance(annotation, type) else None
    text = text or str(annotation)
    return text.replace("typing.", "").replace("NoneType", "None").replace("pathlib.", "")


def setting_origins(config: type) -> list[Setting]:
    """Every field of ``config`` (a pydantic model) with its type, default, description and
    origin, in declaration order."""
    models = _models(config)
    out = []
    for name, field in config.model_fields.items():
        definers = [k for k in models if name in _own_fields(k)]
        last = definers[0] if definers else config
        base = definers[1] if len(definers) > 1 else None
        if base is not None:
            origin = f"overrides {base.__name__}"
        elif _is_core(last):
            origin = f"inherited from {last.__name__}"
        elif last is not config:
            origin = f"inherited from {last.__name__} ({last.__module__})"
        else:
            origin = "own"
        if field.default_factory is not None:
            try:
                default = field.default_factory()
            except Exception:  # noqa: BLE001 - a factory that needs arguments
                default = "<factory>"
            if hasattr(default, "model_dump"):
                default = default.model_dump(mode="json")
        elif field.is_required():
            default = "(required)"
        else:
            default = field.default
        source = base or (last if last is not config else None)
        out.append(Setting(name, _type_name(field.annotation), default, field.description or "",
                           origin, last.__name__, source.__name__ if source else None))
    return out


def shadowing_problems(config: type) -> list[str]:
    """Settings of ``config`` (or of its plugin-side bases) that re-declare an inherited one
    without the declaring class listing them in ``overrides``, and ``overrides`` entries that
    re-declare nothing."""
    problems = []
    models = _models(config)
    for i, model in enumerate(models):
        if _is_core(model):
            continue
        allowed = set(getattr(model, "overrides", ()) or ())
        shadows = set()
        for name in sorted(_own_fields(model)):
            base = next((k for k in models[i + 1:] if name in _own_fields(k)), None)
            if base is None:
                continue
            shadows.add(name)
            if name not in allowed:
                problems.append(
                    f"setting '{name}' of {model.__name__} shadows the inherited "
                    f"{base.__name__}.{name}; rename it (e.g. '{_suggest(name)}') if it is a new "
                    f"setting, or declare `overrides: ClassVar[frozenset[str]] = "
                    f"frozenset({{'{name}'}})` in {model.__name__} if it changes the inherited "
                    f"one on purpose")
        own_overrides = set(model.__dict__.get("overrides", ()) or ())
        for name in sorted(own_overrides - shadows):
            problems.append(f"{model.__name__}.overrides names '{name}', which re-declares no "
                            f"inherited setting; remove it from overrides")
    return problems


def _suggest(name: str) -> str:
    return f"target_{name}" if name in ("momentum", "lr", "weight_decay") else f"my_{name}"
