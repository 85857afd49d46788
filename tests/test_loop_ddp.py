"""DDP details of the loop without processes: gradient accumulation keeps all but the last
micro-batch of a group local (``no_sync``); a process batch of one tiny image is refused with a
one-line error naming the batch size; the local batch sizes a world size gives."""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch

from harness.engine import distributed
from harness.engine.loader import rank_batch_sizes
from harness.engine.loop import IterationSource, TrainLoop
from harness.engine.runtime import Checkpoint


class FakeDDP:
    """Records, per forward pass, whether it ran inside ``no_sync``."""

    def __init__(self, model):
        self.model, self.local, self.calls = model, False, []

    @contextmanager
    def no_sync(self):
        self.local = True
        try:
            yield
        finally:
            self.local = False

    def __call__(self, x):
        self.calls.append(self.local)
        return self.model(x)


def test_accumulation_all_reduces_once_per_optimizer_step(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    ddp = FakeDDP(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    data = [torch.randn(2, 3) for _ in range(5)]
    loop = TrainLoop(label="t", models={"model": model}, optimizer=opt,
                     scheduler=torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0),
                     scaler=torch.amp.GradScaler("cpu", enabled=False),
                     step_fn=lambda x, info: (ddp(x).pow(2).mean(), {}),
                     source=IterationSource(lambda start: data[start:], total=5, period=5),
                     checkpoint=Checkpoint(tmp_path), quiet=True, accumulation=2, ddp=ddp)
    loop.run()
    # groups of 2 in a period of 5: batches 2, 4 and the period's last (5) synchronise
    assert ddp.calls == [True, False, True, False, False]


def test_one_image_per_process_is_refused(tmp_path, monkeypatch):
    from harness.engine.finetune import _check_one_image_per_process
    from harness.errors import SpecError
    from harness.spec.models import FinetuneSettings

    monkeypatch.setattr(distributed, "world_size", lambda: 4)
    settings = FinetuneSettings(batch_size=4)
    with pytest.raises(SpecError, match=r"finetune.batch_size 4 \(8 images\) over 4 processes"):
        _check_one_image_per_process(8, settings, False, (32, 32))
    _check_one_image_per_process(8, settings, False, (256, 256))  # a 8x8 map: fine
    _check_one_image_per_process(8, FinetuneSettings(batch_size=8), False, (32, 32))
    with pytest.raises(SpecError):  # the last batch of 9: 1 image on a process
        _check_one_image_per_process(9, FinetuneSettings(batch_size=8), False, (32, 32))


def test_rank_batch_sizes():
    assert rank_batch_sizes(16, 16, False, 8) == {2}
    assert rank_batch_sizes(18, 16, False, 8) == {2, 1, 0}
    assert rank_batch_sizes(18, 16, True, 8) == {2}
    assert rank_batch_sizes(7, 7, False, 3) == {3, 2}
