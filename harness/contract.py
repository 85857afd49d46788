"""The static part of the plugin contracts: what a method or dataset class must declare, checked
when the plugin loads (a class that fails is a BROKEN plugin) and by ``harness plugin check``.

A ``Config`` that re-declares an inherited setting without listing it in ``overrides`` is
refused (:func:`harness.setting_origins.shadowing_problems`).

Nothing here imports torch: ``harness list``/``validate``/``show`` use it.
"""

from __future__ import annotations

from harness.setting_origins import shadowing_problems

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
