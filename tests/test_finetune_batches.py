"""Fine-tuning keeps each epoch's last partial batch (the reference's DataLoader has no
drop_last): ceil(n / batch) steps per epoch; ``finetune.drop_last: true`` restores floor. A last
batch of one image must not crash where a batch-norm layer sees a single value per channel."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from harness.data.base import LabeledArrays
from harness.engine.context import StageContext
from harness.engine.finetune import finetune, single_sample_batchnorm
from harness.engine.init_encoder import run_random_encoder
from harness.engine.model import build_unet
from harness.protocols.frozen import Frozen
from harness.protocols.full import Full
from harness.spec.models import FinetuneSettings


def _arrays(n: int, size: int = 32, seed: int = 0) -> LabeledArrays:
    rng = np.random.default_rng(seed)
    cls = rng.integers(0, 3, (n, size, size)).astype(np.uint8)
    images = rng.integers(0, 256, (n, size, size, 3)).astype(np.uint8)
    return LabeledArrays(images=images, instances=cls.astype(np.int32), classes=cls,
                         ids=[f"s{i}" for i in range(n)], tissues=["t"] * n, groups=["g"] * n)


def _ctx(tmp_path, name: str, inputs=None) -> StageContext:
    out = tmp_path / name / "out"
    out.mkdir(parents=True)
    return StageContext(out=out, work=tmp_path / name / "work", inputs=inputs or {},
                        device=torch.device("cpu"), label=name, quiet=True)


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("enc")
    ctx = _ctx(tmp, "encoder")
    run_random_encoder(ctx, encoder_name="resnet18", seed=0)
    return ctx.out


@pytest.mark.parametrize("protocol, drop_last", [(Full(), False), (Frozen(), False), (Full(), True)],
                         ids=["full", "frozen-adapting-bn", "full-drop-last"])
def test_steps_per_epoch_and_a_last_batch_of_one(tmp_path, encoder, protocol, drop_last):
    """n = batch * 2 + 1 at 32 px: the last batch is one image whose ResNet layer-4 map is 1x1
    (one value per channel), which plain train-mode batch norm refuses."""
    batch, epochs = 4, 2
    n = batch * 2 + 1
    settings = FinetuneSettings(epochs=epochs, batch_size=batch, drop_last=drop_last, amp=False)
    ctx = _ctx(tmp_path, "ft", {"encoder": encoder})
    summary = finetune(ctx, arrays=_arrays(n), train_ids=[f"s{i}" for i in range(n)],
                       num_classes=3, settings=settings, protocol=protocol, seed=0)
    per_epoch = n // batch if drop_last else math.ceil(n / batch)
    assert per_epoch == (2 if drop_last else 3)
    assert summary["steps"] == per_epoch * epochs
    log = json.loads((ctx.out / "train_log.json").read_text())
    assert len(log) == epochs and all(np.isfinite(e["loss"]) for e in log)


def test_drop_last_never_drops_a_whole_epoch(tmp_path, encoder):
    settings = FinetuneSettings(epochs=1, batch_size=8, drop_last=True, amp=False)
    ctx = _ctx(tmp_path, "ft", {"encoder": encoder})
    summary = finetune(ctx, arrays=_arrays(3), train_ids=["s0", "s1", "s2"], num_classes=3,
                       settings=settings, protocol=Full(), seed=0)
    assert summary["steps"] == 1


def test_single_sample_batchnorm_uses_running_statistics_only_where_it_must():
    torch.manual_seed(0)
    model = build_unet("resnet18", 3).train()
    x = torch.randn(1, 3, 32, 32)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        model(x)
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    with single_sample_batchnorm(model):
        out = model(x)
    assert out.shape == (1, 3, 32, 32) and torch.isfinite(out).all()
    after = model.state_dict()
    frozen = {k for k in before if torch.equal(before[k], after[k])}
    # layer 4 (1x1 maps) kept its statistics; the stem and decoder (larger maps) updated theirs
    assert frozen and all(k.startswith("encoder.layer4") for k in frozen)
    assert "encoder.bn1.running_mean" not in frozen
    # hooks are gone and train mode is back: the plain model refuses the batch again
    assert all(m.training for m in model.modules())
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        model(x)
    # a batch of two is untouched by the context manager (same output, same statistics)
    y = torch.randn(2, 3, 32, 32)
    a, b = build_unet("resnet18", 3).train(), build_unet("resnet18", 3).train()
    b.load_state_dict(a.state_dict())
    with single_sample_batchnorm(b):
        out_b = b(y)
    assert torch.equal(a(y), out_b)
