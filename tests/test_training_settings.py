"""The settings the shared training loop reads (gradient clipping and accumulation, ``amp``,
``channels_last``) are declared on typed bases (harness/training_settings.py) that fine-tuning
and the pretraining / semi-supervised methods' settings inherit. Where a block did not declare
one before, it enters a stage key only when set off the default the engine used to assume, so
no key changed."""

from __future__ import annotations

import pytest

from harness.contract import method_problems
from harness.keying import method_settings, result_settings
from harness.methods import (MethodConfig, PretrainMethod, PretrainSettings, SemiSupervisedMethod,
                             SemiSupervisedSettings)
from harness.spec.models import FinetuneSettings
from harness.training_settings import GradClipSettings, TrainingSettings
from test_stage_keys import stage_keys


def test_every_training_block_inherits_the_loop_settings():
    assert issubclass(FinetuneSettings, TrainingSettings)
    assert issubclass(PretrainSettings, TrainingSettings)
    assert issubclass(SemiSupervisedSettings, GradClipSettings)
    assert not issubclass(SemiSupervisedSettings, TrainingSettings)  # it accumulates nothing
    assert not set(TrainingSettings.model_fields) & set(MethodConfig.model_fields)  # init methods
    for cls in (FinetuneSettings, PretrainSettings):
        s = cls()
        assert (s.grad_clip_norm, s.grad_accumulation, s.amp, s.channels_last) == (None, 1, True, True)
    assert SemiSupervisedSettings().grad_clip_norm is None


def test_added_settings_enter_keys_only_off_their_default():
    assert result_settings(FinetuneSettings()) == result_settings(
        FinetuneSettings(grad_clip_norm=None, grad_accumulation=1))
    assert not {"grad_clip_norm", "grad_accumulation"} & set(result_settings(FinetuneSettings()))
    assert result_settings(FinetuneSettings(grad_accumulation=2))["grad_accumulation"] == 2
    assert result_settings(FinetuneSettings(grad_clip_norm=1.0))["grad_clip_norm"] == 1.0
    assert "amp" in result_settings(FinetuneSettings())  # keyed since before: stays keyed
    plain = method_settings(PretrainSettings().model_dump(mode="json"))
    assert not {"amp", "grad_clip_norm", "grad_accumulation", "channels_last", "compile",
                "view_pipeline", "num_workers"} & set(plain)
    assert method_settings(PretrainSettings(amp=False).model_dump(mode="json"))["amp"] is False
    assert method_settings(SemiSupervisedSettings(grad_clip_norm=5.0).model_dump(mode="json")
                           )["grad_clip_norm"] == 5.0
    with pytest.raises(ValueError):
        FinetuneSettings(grad_accumulation=0)


def test_spec_keys_with_the_defaults_spelled_out_are_the_pinned_ones(tmp_path):
    plain = stage_keys("specs/demo.yaml", tmp_path / "a")
    spelled = stage_keys("specs/demo.yaml", tmp_path / "b", [
        "methods.simclr.amp=true", "methods.simclr.grad_accumulation=1",
        "methods.simclr.grad_clip_norm=null", "finetune.grad_accumulation=1"])
    assert spelled == plain
    clipped = stage_keys("specs/demo.yaml", tmp_path / "c", ["methods.simclr.grad_clip_norm=1.0"])
    changed = {label for (_, label, key), (_, _, old) in zip(clipped, plain) if key != old}
    assert changed and all("simclr" in label for label in changed)


def test_a_training_methods_config_must_derive_from_its_shared_settings():
    class Loose(PretrainMethod):
        name = "loose"
        Config = MethodConfig

        def build_model(self, encoder, encoder_channels):
            return encoder

        def training_step(self, model, batch, num_classes):
            raise AssertionError

    class Mixer(SemiSupervisedMethod):
        name = "mixer"
        Config = PretrainSettings

        def mix(self, images, labels, confidence):
            raise AssertionError

    assert method_problems(Loose) == [
        "`Config` does not derive from PretrainSettings (harness.methods), whose settings the "
        "pretrain engine reads; subclass it"]
    assert "does not derive from SemiSupervisedSettings" in method_problems(Mixer)[0]
