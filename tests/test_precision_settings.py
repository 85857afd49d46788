"""Precision: fp16 with a grad scaler where bf16 is only emulated (V100, T4); evaluation in fp32
by default with TF32 off while predicting (as the reference evaluated); ``eval_precision`` is a
runtime setting, in no stage key."""

from __future__ import annotations

import numpy as np
import torch

from harness.data.torchdata import Normalizer
from harness.engine.evaluate import predict
from harness.engine.runtime import Precision, no_tf32
from harness.keying import result_settings
from harness.spec.models import FinetuneSettings


def test_fp16_where_bf16_is_emulated(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported",
                        lambda including_emulation=True: including_emulation)
    assert Precision(torch.device("cuda"), True).dtype == torch.float16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert Precision(torch.device("cuda"), True).dtype == torch.bfloat16
    assert Precision(torch.device("cuda"), False).dtype is None
    assert Precision(torch.device("cpu"), True).dtype is None


def test_no_tf32_inside_and_restored_after():
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    try:
        with no_tf32():
            assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
        assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


def test_predictions_run_without_tf32():
    seen = []

    class Model(torch.nn.Module):
        def forward(self, x):
            seen.append(torch.backends.cudnn.allow_tf32)
            return torch.zeros(len(x), 2, *x.shape[-2:])

    images = np.zeros((3, 32, 32, 3), np.uint8)
    normalizer = Normalizer({"mean": [0.5] * 3, "std": [0.5] * 3}, "encoder")
    list(predict(Model(), images, [0, 1, 2], normalizer, torch.device("cpu"), 2,
                 Precision(torch.device("cpu"), False), quiet=True))
    assert seen == [False, False]


def test_eval_precision_is_in_no_stage_key():
    default = FinetuneSettings()
    assert default.eval_precision == "fp32"
    assert result_settings(FinetuneSettings(eval_precision="amp")) == result_settings(default)
