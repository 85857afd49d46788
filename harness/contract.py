"""The static part of the plugin contracts: what a method or dataset class must declare, checked
when the plugin loads (a class that fails is a BROKEN plugin) and by ``harness plugin check``.

Also where each setting of a plugin's ``Config`` comes from (:func:`setting_origins`): the
plugin's own, or inherited from the shared settings (``PretrainSettings``,
``SemiSupervisedSettings``) or another base. Re-declaring an inherited setting is refused unless
the ``Config`` lists it in ``overrides`` (a ``ClassVar``), so that a plugin cannot silently
change a shared setting (a BYOL ``momentum`` meant for the target network would otherwise
replace LARS's momentum).

Nothing here imports torch: ``harness list``/``validate``/``show`` use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

METHOD_KINDS = ("init", "pretrain", "semisupervised")


def shared_settings(cls: type) -> type | None:
    """The shared settings a method class must derive its ``Config`` from, as its kind's base
    class (``PretrainMethod``, ``SemiSupervisedMethod``) declares them in ``settings_base``: the
    engine of that kind reads them (``batch_size``, ``grad_clip_norm``...) as attributes."""
    return next((vars(base)["settings_base"] for base in cls.__mro__ if "settings_base" in vars(base)), None)


#: Contract methods a class of each method kind must implement itself (the harness's base
#: classes only raise NotImplementedError).
REQUIRED = {
    "init": ("init_encoder",),
    "pretrain": ("build_model", "training_step"),
    "semisupervised": ("mix",),
}
DATASET_REQUIRED = ("prepare", "load", "folds")
#: What a dataset class tells without its data, from its validated ``Config`` (classmethods).
DATASET_CLASS_FACTS = ("folds", "expected_group_sizes", "cache_identity")

#: Modules of the harness's own base classes: a method still defined there is unimplemented.
_BASE_MODULES = ("harness.methods", "harness.data.base")


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


def _implemented(cls: type, method: str) -> bool:
    owner = next((k for k in cls.__mro__ if method in k.__dict__), None)
    return owner is not None and owner.__module__ not in _BASE_MODULES


def method_problems(cls: type) -> list[str]:
    """What a method class lacks (each a sentence with the fix); empty when it is fine."""
    problems = []
    if not isinstance(getattr(cls, "name", None), str) or not cls.name:
        problems.append("no `name`; add `name: ClassVar[str] = \"my_method\"` (the key specs use)")
    kind = getattr(cls, "kind", None)
    if kind not in METHOD_KINDS:
        got = "no `kind`" if kind is None else f"`kind` is {kind!r}"
        problems.append(f"{got}; subclass InitMethod, PretrainMethod or SemiSupervisedMethod "
                        f"(harness.methods), or set kind to one of {', '.join(METHOD_KINDS)}")
    else:
        for method in REQUIRED[kind]:
            if not _implemented(cls, method):
                problems.append(f"`{method}` is not implemented (a {kind} method must define "
                                f"it; see docs/writing-plugins.md)")
    problems += _config_problems(cls, "MethodConfig (harness.methods)")
    shared = shared_settings(cls)
    config = getattr(cls, "Config", None)
    if shared is not None and isinstance(config, type) and not issubclass(config, shared):
        problems.append(f"`Config` does not derive from {shared.__name__} (harness.methods), "
                        f"whose settings the {kind} engine reads; subclass it")
    return problems


def dataset_problems(cls: type) -> list[str]:
    problems = []
    if not isinstance(getattr(cls, "name", None), str) or not cls.name:
        problems.append("no `name`; add `name = \"my_dataset\"` (the key specs use)")
    required = DATASET_REQUIRED if getattr(cls, "labeled", True) else ("prepare", "unlabeled_images")
    for method in required:
        if not _implemented(cls, method):
            problems.append(f"`{method}` is not implemented (every dataset defines it; see "
                            f"docs/writing-plugins.md)")
    for fact in DATASET_CLASS_FACTS:
        owner = next((k for k in cls.__mro__ if fact in k.__dict__), None)
        if owner is not None and not isinstance(owner.__dict__[fact], classmethod):
            problems.append(f"`{fact}` is not a classmethod; define `@classmethod def {fact}(cls, "
                            f"config)`: it is known without the data, from the validated Config")
    if getattr(cls, "labeled", True) and not tuple(getattr(cls, "class_names", ()) or ()):
        problems.append("a labeled dataset with no `class_names`; list its foreground classes")
    if getattr(cls, "labeled", True) and getattr(cls, "split_scheme", "kfold") not in ("kfold", "fixed"):
        problems.append(f"`split_scheme` is {cls.split_scheme!r}; use 'kfold' or 'fixed'")
    problems += _config_problems(cls, "DatasetConfig (harness.data.base)")
    return problems


def _config_problems(cls: type, base: str) -> list[str]:
    config = getattr(cls, "Config", None)
    if not (isinstance(config, type) and hasattr(config, "model_fields")):
        return [f"`Config` is not a pydantic model; subclass {base}"]
    if config.model_config.get("extra") != "forbid":
        return [f"`Config` accepts unknown keys (a typo would be ignored); subclass {base}"]
    problems = shadowing_problems(config)
    if any(f.is_required() for f in config.model_fields.values()):
        return problems  # a spec must give those; the defaults of the others are checked then
    try:
        config()
    except Exception as exc:  # noqa: BLE001 - a default that fails its own validation
        problems.append(f"`Config()` fails with its own defaults ({type(exc).__name__}: "
                        f"{' '.join(str(exc).split())[:200]}); give every setting a valid default")
    return problems


def class_problems(cls: type, category: str) -> list[str]:
    """Static contract problems of a registered class of ``category`` (methods, datasets)."""
    if not isinstance(cls, type):
        return [f"registered {cls!r}, not a class; return the class itself from the hook"]
    if category == "method":
        return method_problems(cls)
    if category == "dataset":
        return dataset_problems(cls)
    return []
