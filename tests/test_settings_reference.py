"""Settings reference: `harness show method|dataset NAME`, the generated docs/settings.md, and
the refusal at plugin load of a setting that silently shadows an inherited one."""

from __future__ import annotations

import types
from pathlib import Path
from typing import ClassVar

from pydantic import Field

from harness.cli.plugin import show
from harness.setting_origins import setting_origins, shadowing_problems
from harness.hookspecs import hookimpl
from harness.methods import PretrainSettings, SemiSupervisedSettings
from harness.plugins import build_registry
from harness.settings_reference import builtin_reference, render_text

DOC = Path(__file__).resolve().parent.parent / "docs" / "settings.md"


def test_docs_settings_page_is_up_to_date():
    assert DOC.read_text() == builtin_reference(), (
        "docs/settings.md is stale: run `python -m harness.settings_reference > docs/settings.md`")


def test_show_names_type_default_origin_and_description(capsys):
    show("method", "simsiam")
    text = capsys.readouterr().out
    assert text.startswith("simsiam: method (pretrain), from pathbench-harness")
    assert "  lr: float = 0.075   [overrides PretrainSettings]" in text
    assert "  momentum: float = 0.9   [inherited from PretrainSettings]" in text
    assert "  proj_dim: int = 2048   [own]\n      projector width and output dimension" in text
    assert "  augment.crop_size: int = 224   [ViewAugmentConfig (harness)]" in text


def test_show_dataset():
    registry = build_registry()
    text = render_text(registry.dataset("tcga"))
    assert "  tile_size: int = 512   [own]" in text and "dataset: {name: tcga" in text


def test_builtin_on_purpose_overrides_are_marked():
    origins = {s.name: s.origin for s in setting_origins(build_registry().method("reco").cls.Config)}
    assert origins["lr"] == "overrides SemiSupervisedSettings"
    assert origins["ema_decay"] == "inherited from SemiSupervisedSettings"


class Shadowing(PretrainSettings):
    momentum: float = Field(0.996, description="a BYOL target's momentum (but it is LARS's)")


class OnPurpose(SemiSupervisedSettings):
    overrides: ClassVar[frozenset[str]] = frozenset({"lr"})
    lr: float = Field(1e-4, gt=0)


class Needless(SemiSupervisedSettings):
    overrides: ClassVar[frozenset[str]] = frozenset({"temperature"})
    temperature: float = 0.5


def test_shadowing_is_refused_unless_declared():
    problems = shadowing_problems(Shadowing)
    assert len(problems) == 1 and problems[0].startswith(
        "setting 'momentum' of Shadowing shadows the inherited PretrainSettings.momentum; rename")
    assert "frozenset({'momentum'})" in problems[0]
    assert shadowing_problems(OnPurpose) == []
    assert shadowing_problems(Needless) == [
        "Needless.overrides names 'temperature', which re-declares no inherited setting; "
        "remove it from overrides"]


def test_shadowing_plugin_is_broken_at_load():
    from harness.methods import PretrainMethod

    class Byol(PretrainMethod):
        name = "shadow_byol"
        Config = Shadowing

        def build_model(self, encoder, encoder_channels):
            return encoder

        def training_step(self, model, batch, num_classes):
            raise AssertionError

    module = types.ModuleType("shadow_plugin")
    module.harness_register_methods = hookimpl(lambda: [Byol])
    registry = build_registry([module])
    assert "shadow_byol" not in registry.methods
    [broken] = [b for b in registry.broken if b.name == "shadow_byol"]
    assert broken.error.startswith("method class ")
    assert "shadows the inherited PretrainSettings.momentum" in broken.error
    message = registry.missing_message("shadow_byol", "method")
    assert message.startswith("method plugin 'shadow_byol' failed to load (from local)")
