"""Pseudo-labels in fp32 by default (the reference labeled in fp32), mixed precision only with
``finetune.pseudolabel_amp: true``, which then enters the pseudo-label key and no other."""

from __future__ import annotations

import numpy as np
import torch

from support import REPO
from harness.engine.runtime import Precision
from harness.plugins import build_registry
from harness.runner import Runner
from harness.spec import load_spec
from harness.spec.models import FinetuneSettings
from harness.stages.pseudolabel import PseudolabelStage
from harness.store import ArtifactStore

REGISTRY = build_registry()


def _keys(tmp_path, overrides):
    rspec = load_spec(REPO / "specs/demo_full.yaml", ["folds=[fold1]", *overrides], registry=REGISTRY)
    plan, _, _ = Runner(rspec, REGISTRY, ArtifactStore(tmp_path / "store"), tmp_path / "out",
                        quiet=True).plan()
    return {(s.kind, s.label): s for s in plan.stages()}


def test_default_is_fp32_and_amp_is_keyed_only_for_pseudo_labels(tmp_path):
    assert FinetuneSettings().pseudolabel_amp is False
    # fp32 on a GPU too: no autocast when the setting is off
    assert Precision(torch.device("cuda"), FinetuneSettings().pseudolabel_amp).dtype is None
    fp32, amp = _keys(tmp_path, []), _keys(tmp_path, ["finetune.pseudolabel_amp=true"])
    changed = {k for k in fp32 if fp32[k].key != amp[k].key}
    pseudo = next(k for k in fp32 if k[0] == "pseudolabel")
    assert pseudo in changed and amp[pseudo].config["amp"] is True and "amp" not in fp32[pseudo].config
    # what is built on the pseudo-labels changes with them; the labeler and fine-tunes of the
    # other rows do not (the setting is not theirs)
    assert all(k[0] in ("pseudolabel", "pretrain", "finetune", "evaluate") for k in changed)
    assert all("pricon" in k[1] or k[0] == "pseudolabel" for k in changed)
    assert not any(k[0] in ("labeler", "labeler_eval") for k in changed)


def test_the_stage_passes_the_pseudolabel_setting_not_the_training_amp(monkeypatch, tmp_path):
    seen = {}

    def fake_pseudolabel(ctx, **kw):
        seen.update(kw)
        return {}

    monkeypatch.setattr("harness.engine.pseudolabel.pseudolabel", fake_pseudolabel)

    class Env:
        resources = type("R", (), {"unlabeled_images": staticmethod(lambda: np.zeros((1, 8, 8, 3), np.uint8))})

        @staticmethod
        def settings(data):
            return FinetuneSettings.model_validate(data)

    stage = type("S", (), {"params": {"settings": FinetuneSettings(amp=True).model_dump(mode="json")},
                           "config": {"num_classes": 3}})
    PseudolabelStage().run(stage, {}, None, Env())
    assert seen["amp"] is False  # training AMP on, pseudo-labels still fp32
