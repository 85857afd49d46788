"""Checkpoints keep the CUDA RNG state of the training device only and load wherever fewer or
more GPUs are visible (faked here: no GPU on the test machine); a checkpoint that cannot be
applied is set aside with one warning and the stage starts over with its parts untouched."""

from __future__ import annotations

import pytest
import torch

from harness.engine import runtime
from harness.engine.loop import EpochSource, TrainLoop
from harness.engine.runtime import Checkpoint


class FakeCuda:
    """``visible`` GPUs, the process on ``current``; records the state given to the device."""

    def __init__(self, monkeypatch, visible: int, current: int = 0):
        self.set: list[tuple[torch.Tensor, int]] = []
        cuda = torch.cuda
        monkeypatch.setattr(cuda, "is_available", lambda: visible > 0)
        monkeypatch.setattr(cuda, "is_initialized", lambda: visible > 0)
        monkeypatch.setattr(cuda, "device_count", lambda: visible)
        monkeypatch.setattr(cuda, "current_device", lambda: current)
        monkeypatch.setattr(cuda, "get_rng_state", lambda device="cuda": _state(device))
        monkeypatch.setattr(cuda, "get_rng_state_all", lambda: [_state(i) for i in range(visible)])
        monkeypatch.setattr(cuda, "set_rng_state",
                            lambda state, device="cuda": self.set.append((state, device)))


def _state(device) -> torch.Tensor:
    return torch.full((16,), int(device) + 1, dtype=torch.uint8)


def _warnings(monkeypatch) -> list[str]:
    said: list[str] = []
    monkeypatch.setattr(runtime.console, "log", lambda msg, *a, **k: said.append(str(msg)))
    return said


def test_only_the_training_devices_state_is_saved(tmp_path, monkeypatch):
    FakeCuda(monkeypatch, visible=2, current=1)
    state = runtime.rng_state()
    assert torch.equal(state["cuda"], _state(1))


@pytest.mark.parametrize("visible", [2, 1, 0])
def test_a_checkpoint_of_two_gpus_loads_where_fewer_are_visible(tmp_path, monkeypatch, visible):
    """Written by earlier versions with every visible GPU's state (a list of 2)."""
    with monkeypatch.context() as m:
        FakeCuda(m, visible=2)
        rng = runtime.rng_state()
    rng["cuda"] = [_state(0), _state(1)]
    torch.save({"x": 1, "rng": rng}, tmp_path / "checkpoint.pt")
    fake, said = FakeCuda(monkeypatch, visible=visible), _warnings(monkeypatch)
    state = Checkpoint(tmp_path).load(required=("x",))
    assert state == {"x": 1} and not said
    assert len(fake.set) == (1 if visible else 0)
    if visible:
        assert torch.equal(fake.set[0][0], _state(0)) and fake.set[0][1] == 0


def test_a_state_for_a_device_that_is_not_there_is_set_aside(tmp_path, monkeypatch):
    rng = runtime.rng_state()
    rng["cuda"] = [_state(0), _state(1)]
    torch.save({"x": 1, "rng": rng}, tmp_path / "checkpoint.pt")
    FakeCuda(monkeypatch, visible=4, current=3)
    said = _warnings(monkeypatch)
    before = torch.get_rng_state()
    assert Checkpoint(tmp_path).load(required=("x",)) is None
    assert len(said) == 1 and "none of cuda:3" in said[0] and "checkpoint.pt.unreadable" in said[0]
    assert (tmp_path / "checkpoint.pt.unreadable").exists()
    assert torch.equal(torch.get_rng_state(), before)


def _loop(tmp_path, width: int) -> TrainLoop:
    torch.manual_seed(0)
    model = torch.nn.Linear(3, width)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    data = torch.utils.data.DataLoader(list(torch.randn(4, 3)), batch_size=2)

    class Source(EpochSource):
        def batches(self, start):
            return iter(data)

    return TrainLoop(label="t", models={"model": model}, optimizer=opt,
                     scheduler=torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0),
                     scaler=torch.amp.GradScaler("cpu", enabled=False),
                     step_fn=lambda x, info: (model(x).pow(2).mean(), {}),
                     source=Source(data, 1, 0), checkpoint=Checkpoint(tmp_path), quiet=True)


def test_parts_of_another_shape_are_set_aside_and_left_untouched(tmp_path, monkeypatch):
    _loop(tmp_path, width=2).save()
    loop = _loop(tmp_path, width=5)
    initial = {k: v.clone() for k, v in loop.models["model"].state_dict().items()}
    said = _warnings(monkeypatch)
    assert loop.resume() == 0
    assert len(said) == 1 and "size mismatch" in said[0]
    assert all(torch.equal(v, initial[k]) for k, v in loop.models["model"].state_dict().items())
    assert (tmp_path / "checkpoint.pt.unreadable").exists()
