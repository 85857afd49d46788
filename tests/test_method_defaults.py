"""A partial override (``--set`` or a spec value) replaces only the field it names: a method's
own defaults that differ from the shared ones survive it (SimSiam's weak jitter, ReCo's lr)."""

from __future__ import annotations

import pytest
import yaml
from pydantic import BaseModel

from support import REPO, write_spec
from harness import methods as shared
from harness.plugins import build_registry
from harness.spec import load_spec

REGISTRY = build_registry()
SHARED = (shared.PretrainSettings, shared.SemiSupervisedSettings, shared.MethodConfig)


def _base(config_cls: type) -> type:
    return next(b for b in config_cls.__mro__ if b in SHARED)


def own_defaults(config_cls: type) -> dict[tuple[str, ...], object]:
    """Path -> value of every default of a method's Config that differs from the shared base
    class's default, or (inside a nested model) from that model's class default."""
    base, config = _base(config_cls), config_cls()
    out: dict[tuple[str, ...], object] = {}
    for name in config_cls.model_fields:
        value = getattr(config, name)
        if isinstance(value, BaseModel):
            plain = type(value)()
            out.update({(name, f): getattr(value, f) for f in type(value).model_fields
                        if getattr(value, f) != getattr(plain, f)})
        elif name in base.model_fields and value != getattr(base(), name):
            out[(name,)] = value
    return out


def _buildable(config_cls: type) -> bool:
    """Whether the Config has a default for every field (a method that must be told what to
    load, such as ``foundation``'s model, has no defaults to keep)."""
    return not any(f.is_required() for f in config_cls.model_fields.values())


CASES = {name: own_defaults(info.cls.Config) for name, info in REGISTRY.methods.items()
         if _buildable(info.cls.Config) and own_defaults(info.cls.Config)}


def test_the_known_differences_are_found():
    """The discovery is not vacuous: the thesis's per-method settings are among them."""
    assert CASES["simsiam"][("augment", "jitter")] == (0.4, 0.4, 0.4, 0.1)
    assert CASES["simsiam"][("lr",)] == 0.075
    assert CASES["reco"][("lr",)] == 1e-4


SPEC = """name: defaults
dataset: {name: synthetic, image_size: 32, images_per_fold: 4, unlabeled_images: 4}
methods: [METHOD]
protocols: [full]
folds: [fold1]
finetune: {epochs: 1, batch_size: 2}
"""


def _other_field(config_cls: type, path: tuple[str, ...], own: dict) -> tuple[str, ...]:
    """A field next to ``path`` (same nested model, or top level) that is not one of the
    method's own defaults: the one a partial override names."""
    if len(path) == 2:
        nested = type(getattr(config_cls(), path[0]))
        return (path[0], next(f for f in nested.model_fields if (path[0], f) not in own))
    return next((f,) for f in config_cls.model_fields
                if (f,) not in own and not isinstance(getattr(config_cls(), f), BaseModel))


@pytest.mark.parametrize("method", sorted(CASES))
@pytest.mark.parametrize("how", ["set", "spec"])
def test_partial_override_keeps_the_methods_own_defaults(method, how, tmp_path):
    config_cls = REGISTRY.methods[method].cls.Config
    own = CASES[method]
    targets = {_other_field(config_cls, path, own) for path in own}
    defaults = config_cls()
    values = {}
    for target in targets:  # set the neighbour to its own default: only the naming matters
        node = defaults
        for part in target:
            node = getattr(node, part)
        values[target] = list(node) if isinstance(node, tuple) else node
    if how == "set":
        spec = write_spec(tmp_path, SPEC.replace("METHOD", method))
        overrides = [f"methods.{method}.{'.'.join(t)}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}"
                     for t, v in values.items()]
    else:
        row: dict = {}
        for target, value in values.items():
            node = row
            for part in target[:-1]:
                node = node.setdefault(part, {})
            node[target[-1]] = value
        text = SPEC.replace("methods: [METHOD]", "methods: " + yaml.safe_dump({method: row}, default_flow_style=True).strip())
        spec, overrides = write_spec(tmp_path, text), []
    config = load_spec(spec, overrides, registry=REGISTRY).method_configs[method]
    for path, expected in own.items():
        node = config
        for part in path:
            node = getattr(node, part)
        assert node == expected, (method, path)


def test_simsiam_crop_override_of_the_shipped_spec_keeps_its_weak_jitter():
    """The issue's case: specs/pannuke_frozen.yaml with a SimSiam crop override."""
    rspec = load_spec(REPO / "specs/pannuke_frozen.yaml", ["methods.simsiam.augment.crop_size=64"],
                      registry=REGISTRY)
    augment = rspec.method_configs["simsiam"].augment
    assert augment.crop_size == 64 and augment.jitter == (0.4, 0.4, 0.4, 0.1)
    assert rspec.resolved()["methods"]["simsiam"]["augment"]["jitter"] == [0.4, 0.4, 0.4, 0.1]
    # SimCLR's (the shared Table A.1 views) are untouched by SimSiam's override
    assert rspec.method_configs["simclr"].augment.jitter == (0.8, 0.8, 0.8, 0.2)
