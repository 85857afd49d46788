"""The conformance kit (harness.conformance, `harness plugin check`): built-in plugins pass;
broken variants of the example plugins each fail with the line naming the contract item.

The variants subclass the example package's classes, loaded from its source files (nothing is
installed into the test environment), and are registered through ``build_registry``'s extra
plugins, so each is a plugin exactly as the registry sees an installed one."""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from pydantic import Field

from harness.conformance import check, check_plugin
from harness.hookspecs import hookimpl
from harness.methods import Method, PretrainMethod
from harness.plugins import build_registry

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "harness-example-plugin"


def example(name: str):
    """A module of the example package, from its source folder, imported as the package's own
    (its relative imports work); no distribution is put on sys.path, so the registry of other
    tests stays as it was."""
    if "harness_example" not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            "harness_example", EXAMPLE / "harness_example" / "__init__.py",
            submodule_search_locations=[str(EXAMPLE / "harness_example")])
        package = importlib.util.module_from_spec(spec)
        sys.modules["harness_example"] = package
        spec.loader.exec_module(package)
    return importlib.import_module(f"harness_example.{name}")


blur, blobs, byol = example("blur"), example("blobs"), example("byol")
byol_model = example("byol_model")


# --- the broken variants -------------------------------------------------------------------------

class NoName(blur.ExampleBlur):
    name = ""


class NoKind(Method):
    name = "bad_nokind"

    def init_encoder(self, encoder, encoder_name, seed):
        return {"mean": [0.5] * 3, "std": [0.5] * 3}


class NoStep(PretrainMethod):
    name = "bad_nostep"

    def build_model(self, encoder, encoder_channels):
        return byol_model.BYOLModel(encoder, encoder_channels[-1], byol.BYOLConfig())


class Backbone(byol.ExampleBYOL):
    name = "bad_backbone"

    def build_model(self, encoder, encoder_channels):
        model = super().build_model(encoder, encoder_channels)
        del model.encoder
        model.backbone = encoder
        return model


class NaNLoss(byol.ExampleBYOL):
    name = "bad_nan"

    def training_step(self, model, batch, num_classes):
        loss, logs = super().training_step(model, batch, num_classes)
        return loss * float("nan"), logs


class NoGradient(byol.ExampleBYOL):
    name = "bad_nograd"

    def training_step(self, model, batch, num_classes):
        feats = [model.encoder(v)[-1].detach().mean(dim=(2, 3)) for v in (batch["view1"], batch["view2"])]
        p = model.predictor(model.projector(feats[0]))
        return byol_model.byol_loss(p, model.projector(feats[1]).detach()), {}


class ShadowConfig(byol.BYOLConfig):
    momentum: float = Field(0.996, description="meant for the target network")


class Shadow(byol.ExampleBYOL):
    name = "bad_shadow"
    Config = ShadowConfig


class NoNormalization(blur.ExampleBlur):
    name = "bad_init_return"

    def init_encoder(self, encoder, encoder_name, seed):
        super().init_encoder(encoder, encoder_name, seed)


class WrongDtype(blobs.ExampleBlobs):
    name = "bad_dtype"

    def load(self):
        arrays = super().load()
        arrays.instances = np.asarray(arrays.instances).astype(np.int64)
        return arrays


class WrongShape(blobs.ExampleBlobs):
    name = "bad_shape"

    def load(self):
        arrays = super().load()
        arrays.images = np.ascontiguousarray(np.asarray(arrays.images).transpose(0, 3, 1, 2))
        return arrays


class LyingVerify(blobs.ExampleBlobs):
    name = "bad_verify"

    def verify(self):
        return []


class NoFixture(blobs.ExampleBlobs):
    name = "bad_nofixture"
    auto_prepare = False


VARIANTS = {  # plugin -> (contract item, words of its line)
    "bad_noname": ([NoName], "load", "no `name`"),
    "bad_nokind": ([NoKind], "load", "no `kind`; subclass InitMethod, PretrainMethod"),
    "bad_nostep": ([NoStep], "load", "`training_step` is not implemented"),
    "bad_shadow": ([Shadow], "load", "'momentum' of ShadowConfig shadows the inherited "
                   "PretrainSettings.momentum; rename it (e.g. 'target_momentum')"),
    "bad_backbone": ([Backbone], "encoder attribute", "(it is `.backbone`); assign it as "
                     "`self.encoder = encoder`"),
    "bad_nan": ([NaNLoss], "training_step", "the loss is nan"),
    "bad_nograd": ([NoGradient], "gradient", "the loss sends no gradient to the encoder"),
    "bad_init_return": ([NoNormalization], "init_encoder", "returned None; return the input "
                        "normalisation"),
    "bad_dtype": ([WrongDtype], "load", "instances is int64(16, 64, 64), expected int32"),
    "bad_shape": ([WrongShape], "load", "images is uint8(16, 3, 64, 64), expected uint8 (N, H, W, 3)"),
    "bad_verify": ([LyingVerify], "verify", "finds nothing wrong after"),
    "bad_nofixture": ([NoFixture], "conformance_fixture", "needs a fixture"),
}


def plugin_module(name: str, classes: list[type]) -> types.ModuleType:
    """A plugin object as an entry point would name it: a module with registration hooks."""
    module = types.ModuleType(name)
    methods = [c for c in classes if not hasattr(c, "prepare")]
    datasets = [c for c in classes if hasattr(c, "prepare")]
    if methods:
        module.harness_register_methods = hookimpl(lambda: list(methods))
    if datasets:
        module.harness_register_datasets = hookimpl(lambda: list(datasets))
    return module


@pytest.fixture(scope="module")
def registry():
    return build_registry([plugin_module(n, c) for n, (c, _, _) in VARIANTS.items()])


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_broken_variant_fails_with_its_line(registry, name):
    _, item, words = VARIANTS[name]
    report = check(name, registry)
    assert len(report.failures) == 1, [str(f) for f in report.failures]
    failure = report.failures[0]
    assert failure.item == item, str(failure)
    assert words in failure.problem, str(failure)
    line = str(failure)
    assert line.startswith("FAIL ") and "\n" not in line and name in line or "bad_noname" == name


def test_check_plugin_asserts_with_every_line(registry):
    with pytest.raises(AssertionError) as exc:
        check_plugin("bad_nan", "bad_verify", registry=registry)
    lines = str(exc.value).splitlines()
    assert lines[0] == "plugin conformance failed:" and len(lines) == 3
    assert "bad_nan" in lines[1] and "bad_verify" in lines[2]


def test_unknown_name_suggests(registry):
    report = check("exampel_blobs", registry)
    assert not report.ok and "is installed" in report.failures[0].problem


FAST = ["scratch", "supervised", "foundation", "simclr", "classmix", "synthetic", "pannuke", "lizard", "tnbc", "tcga"]
SLOW = ["simsiam", "pricon", "cutmix", "reco", "pannuke_breast"]


@pytest.mark.parametrize("name", FAST)
def test_builtin_plugins_pass(name):
    check_plugin(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", SLOW)
def test_more_builtin_plugins_pass(name):
    check_plugin(name)


def test_every_builtin_is_tested():
    registry = build_registry()
    builtins = {n for t in (registry.methods, registry.datasets) for n, i in t.items()
                if i.distribution == "pathbench-harness"}
    assert builtins == set(FAST) | set(SLOW)


def test_check_lists_every_contract_method_it_ran():
    """`harness plugin check` prints `ok NAME: <items>`: every contract method it called."""
    module = plugin_module("example_byol_module", [byol.ExampleBYOL])
    report = check("example_byol", build_registry([module]))
    assert report.ok, [str(f) for f in report.failures]
    assert report.passed == ["contract", "Config", "view_config", "init_encoder", "build_model",
                             "param_groups", "training_step", "after_step"]
