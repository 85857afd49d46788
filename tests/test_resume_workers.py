"""Resume is exact whatever ``num_workers`` is: a stage interrupted in epoch 1 (of 2) and
resumed ends with exactly the weights of an uninterrupted run, with 0 and with 2 loader workers
(persistent across epochs in the uninterrupted run, fresh in the resumed one), for fine-tuning
(augmentations drawn in the workers, or on the device: ``augment_pipeline: device``) and
pretraining with both view pipelines. Also: without workers the permutations are those of PyTorch's ``RandomSampler`` sharing the loader's
generator (earlier versions of this harness), so 0-worker results are unchanged."""

from __future__ import annotations

import multiprocessing

import pytest
import torch

from byol_toy import ToyBYOL, run
from harness.engine import loop as loop_mod
from harness.engine.loader import epoch_loader
from harness.methods import PretrainSettings
from test_finetune_batches import _arrays, _ctx, encoder  # noqa: F401 - a fixture

INTERRUPT_AT = 5  # batch 5 of 6: epoch 1 (from 0), batch 1 of 3


def _interrupting(monkeypatch, at: int | None) -> None:
    """Raise KeyboardInterrupt in the loop's ``at``-th forward pass (1-based)."""
    real, calls = loop_mod.TrainLoop._forward_backward, {"n": 0}

    def forward_backward(self, batch, info, **kwargs):
        calls["n"] += 1
        if calls["n"] == at:
            raise KeyboardInterrupt
        return real(self, batch, info, **kwargs)

    monkeypatch.setattr(loop_mod.TrainLoop, "_forward_backward", forward_backward)


def _finetuned(tmp_path, encoder, name: str, workers: int, monkeypatch, interrupt: bool,
               pipeline: str = "cpu"):
    from harness.engine.finetune import finetune
    from harness.protocols.full import Full
    from harness.spec.models import FinetuneSettings

    settings = FinetuneSettings(epochs=2, batch_size=2, amp=False, num_workers=workers,
                                augment_pipeline=pipeline)
    ctx = _ctx(tmp_path, name, {"encoder": encoder})
    ctx.checkpoint_every_s = 0.0
    kwargs = dict(arrays=_arrays(6), train_ids=[f"s{i}" for i in range(6)], num_classes=3,
                  settings=settings, protocol=Full(), seed=3)
    if interrupt:
        with monkeypatch.context() as m:
            _interrupting(m, INTERRUPT_AT)
            with pytest.raises(KeyboardInterrupt):
                finetune(ctx, **kwargs)
        assert torch.load(ctx.work / "checkpoint.pt", weights_only=True)["position"] == INTERRUPT_AT - 1
    summary = finetune(ctx, **kwargs)
    assert summary["resumed_from_epoch"] == (1 if interrupt else 0)
    return torch.load(ctx.out / "model.pt", weights_only=True)


@pytest.mark.parametrize("pipeline", ["cpu", "device"])
@pytest.mark.parametrize("workers", [0, 2])
def test_finetuning_resumed_in_epoch_1_equals_uninterrupted(tmp_path, encoder, monkeypatch, workers, pipeline):
    clean = _finetuned(tmp_path, encoder, "clean", workers, monkeypatch, interrupt=False, pipeline=pipeline)
    resumed = _finetuned(tmp_path, encoder, "resumed", workers, monkeypatch, interrupt=True, pipeline=pipeline)
    assert clean.keys() == resumed.keys()
    assert all(torch.equal(clean[k], resumed[k]) for k in clean)


def _pretrained(tmp_path, name: str, workers: int, pipeline: str, monkeypatch, interrupt: bool):
    config = PretrainSettings(epochs=2, batch_size=4, optimizer="sgd", lr=0.05,
                              num_workers=workers, view_pipeline=pipeline)
    work, out = tmp_path / name / "work", tmp_path / name / "out"
    if interrupt:
        with monkeypatch.context() as m:
            _interrupting(m, INTERRUPT_AT)
            with pytest.raises(KeyboardInterrupt):
                run(work, out, ToyBYOL(config), every_s=0.0)
    result = run(work, out, ToyBYOL(config), every_s=0.0)
    assert result["resumed_from_epoch"] == (1 if interrupt else 0)
    assert not multiprocessing.active_children()  # the loop shut its workers down
    return torch.load(out / "model.pt", weights_only=True)


@pytest.mark.parametrize("pipeline", ["cpu", "device"])
@pytest.mark.parametrize("workers", [0, 2])
def test_pretraining_resumed_in_epoch_1_equals_uninterrupted(tmp_path, monkeypatch, workers, pipeline):
    clean = _pretrained(tmp_path, "clean", workers, pipeline, monkeypatch, interrupt=False)
    resumed = _pretrained(tmp_path, "resumed", workers, pipeline, monkeypatch, interrupt=True)
    assert all(torch.equal(clean[k], resumed[k]) for k in clean)


def test_zero_worker_permutations_are_random_samplers_with_a_shared_generator():
    data = list(range(13))
    shared = torch.Generator()
    before = torch.utils.data.DataLoader(
        data, batch_size=4, generator=shared,
        sampler=torch.utils.data.RandomSampler(data, generator=shared))
    loader = epoch_loader(data, batch_size=4, drop_last=False, num_workers=0,
                          device=torch.device("cpu"), worker_init_fn=None)
    for epoch in range(3):
        shared.manual_seed(7 * 100_003 + epoch)
        loader.batch_sampler.set_epoch_seed(7 * 100_003 + epoch)
        assert [b.tolist() for b in loader] == [b.tolist() for b in before]


def test_worker_draws_depend_on_the_batch_not_the_worker(tmp_path):
    """The same epoch through 1 and 3 workers (and a fresh vs a reused iterator) gives the same
    random draws per batch."""
    class Noisy(torch.utils.data.Dataset):
        def __len__(self):
            return 9

        def __getitem__(self, i):
            return torch.rand(()) + i

    def epoch(loader, seed):
        loader.batch_sampler.set_epoch_seed(seed)
        return torch.cat(list(loader))

    loaders = [epoch_loader(Noisy(), batch_size=2, drop_last=False, num_workers=w,
                            device=torch.device("cpu"), worker_init_fn=None) for w in (1, 2)]
    first = [epoch(loader, 5) for loader in loaders]
    assert torch.equal(first[0], first[1])
    epoch(loaders[1], 6)  # the persistent workers load another epoch in between
    assert torch.equal(epoch(loaders[1], 5), first[0])
