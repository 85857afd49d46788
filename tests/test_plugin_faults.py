"""Plugin faults are plugin errors: an exception raised inside plugin code (at load, validation
or run time) is one line naming the plugin, its distribution, the contract method and the
exception, exit 4 (`--debug`: the traceback); a bug in the harness core stays exit 1."""

from __future__ import annotations

import types

import pytest

from harness.hookspecs import hookimpl
from harness.methods import HALF_NORMALIZATION, InitMethod, PretrainMethod
from harness.plugin_faults import PluginFault, plugin_fault
from harness.plugins import build_registry
from test_plugins import DEMO, TINY_DEMO, error_lines, harness, make_package, pip_install


class Boom(PretrainMethod):
    name = "boom"

    def build_model(self, encoder, encoder_channels):
        raise ValueError("projector width must be even")

    def training_step(self, model, batch, num_classes):
        return super().training_step(model, batch, num_classes)  # the base: not implemented


class KeepsBackbone(Boom):
    name = "keeps_backbone"

    def build_model(self, encoder, encoder_channels):
        import torch

        model = torch.nn.Module()
        model.backbone = encoder
        return model


@pytest.fixture(scope="module")
def registry():
    module = types.ModuleType("boom_plugin")
    module.harness_register_methods = hookimpl(lambda: [Boom, KeepsBackbone])
    return build_registry([module])


def raised(fn, *args):
    try:
        fn(*args)
    except Exception as exc:  # noqa: BLE001
        return exc
    raise AssertionError("nothing raised")


def test_exception_in_plugin_code_names_plugin_and_contract_method(registry):
    from harness.engine.pretrain import _initial_model

    exc = raised(_initial_model, Boom(), "resnet18", 0, None)
    fault = plugin_fault(exc, registry)
    assert isinstance(fault, PluginFault) and fault.exit_code == 4
    assert str(fault).startswith("method plugin 'boom' (from local 0): build_model raised "
                                 "ValueError: projector width must be even (a fault in the plugin")
    assert fault.__cause__ is exc


def test_unimplemented_contract_method_is_named(registry):
    exc = raised(Boom().training_step, None, {}, None)
    assert isinstance(exc, NotImplementedError) and str(exc) == ""
    fault = plugin_fault(exc, registry)
    assert "method plugin 'boom' (from local 0): `training_step` is not implemented" in str(fault)


def test_encoder_kept_as_backbone_is_a_plugin_error(registry):
    from harness.engine.pretrain import _initial_model

    exc = raised(_initial_model, KeepsBackbone(), "resnet18", 0, None)
    assert isinstance(exc, PluginFault)
    assert "build_model returned a Module that does not keep the module it was given as " \
           "`.encoder` (it is `.backbone`)" in str(exc)


def test_a_bug_in_the_core_is_not_a_plugin_fault(registry):
    from harness.setting_origins import setting_origins

    exc = raised(setting_origins, 42)  # harness code failing on its own
    assert plugin_fault(exc, registry) is None
    assert plugin_fault(raised(Boom().param_groups, 42), registry) is None  # core, via timm


# --- through the CLI: a package with a faulty and a contract-breaking method ---------------------

@pytest.fixture(scope="module")
def faulty_site(tmp_path_factory):
    base = tmp_path_factory.mktemp("faulty_plugin")
    pkg = make_package(base / "pkg", "harness-faulty-plugin", "harness_faulty", "faulty", """\
        from harness.hookspecs import hookimpl
        from harness.methods import InitMethod, Method


        class Faulty(InitMethod):
            name = "faulty_init"

            def init_encoder(self, encoder, encoder_name, seed):
                raise RuntimeError("weights server down")


        class NoKind(Method):
            name = "no_kind"


        @hookimpl
        def harness_register_methods():
            return [Faulty, NoKind]
        """)
    pip_install(pkg, base / "site", base)
    return base / "site"


def test_cli_reports_plugin_faults_in_one_line(faulty_site, tmp_path):
    store = tmp_path / "store"
    result = harness("run", DEMO, "--set", "methods=[faulty_init]", *TINY_DEMO, "--store", store,
                     "--output", tmp_path / "out", "--quiet", site=faulty_site, store=store)
    assert result.returncode == 4, (result.stdout, result.stderr)
    lines = [x for x in error_lines(result.stderr) if x.startswith("error")]  # + progress logs
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert line.startswith("error: method plugin 'faulty_init' (from harness-faulty-plugin 0.0.1):"
                           " init_encoder raised RuntimeError: weights server down")
    assert "Traceback" not in result.stderr

    result = harness("validate", DEMO, "--set", "methods=[no_kind]", site=faulty_site, store=store)
    assert result.returncode == 4, (result.stdout, result.stderr)
    [line] = error_lines(result.stderr)
    assert "'no_kind' failed to load (from harness-faulty-plugin)" in line
    assert "no `kind`; subclass InitMethod, PretrainMethod or SemiSupervisedMethod" in line

    result = harness("plugin", "check", "no_kind", "faulty_init", site=faulty_site, store=store)
    assert result.returncode == 4, (result.stdout, result.stderr)
    fails = [x for x in result.stdout.splitlines() if x.startswith("FAIL")]
    assert len(fails) == 2, result.stdout
    assert "no `kind`" in fails[0]
    assert "init_encoder: raised RuntimeError: weights server down" in fails[1]


def test_debug_shows_the_traceback(faulty_site, tmp_path):
    store = tmp_path / "store"
    result = harness("run", DEMO, "--set", "methods=[faulty_init]", *TINY_DEMO, "--store", store,
                     "--output", tmp_path / "out", "--quiet", "--debug", site=faulty_site,
                     store=store)
    assert result.returncode != 0 and "Traceback" in result.stderr
    assert "RuntimeError: weights server down" in result.stderr


def test_fault_in_a_lifecycle_hook_names_the_hook():
    module = types.ModuleType("flaky_logger")  # a logger plugin: lifecycle hooks only
    exec(compile("from harness.hookspecs import hookimpl\n\n"
                 "@hookimpl\n"
                 "def harness_cell_finished(event):\n"
                 "    raise ConnectionError('tracking server down')\n", "flaky_logger.py", "exec"),
         module.__dict__)
    registry = build_registry([module])
    exc = raised(lambda: registry.pm.hook.harness_cell_finished(cell={}, record={}, event=None))
    fault = plugin_fault(exc, registry)
    assert fault is not None, exc
    assert "plugin package 'flaky_logger'" in str(fault)
    assert "harness_cell_finished raised ConnectionError: tracking server down" in str(fault)
