"""``unfreeze`` under DDP (2 CPU processes, gloo): the fine-tuning loop's wrapper
(:class:`harness.engine.distributed.TrainableDDP`) follows the protocol's switch from a frozen to
a training encoder, so after unfreezing the encoder's gradients are averaged over the processes:
equal on both ranks and equal to one process's gradients on the global batch; the weights after
both phases equal the single-process weights. Without the re-wrap (one DDP built over every
parameter, ``find_unused_parameters=False``) the frozen epoch already fails: DDP waits for
gradients the frozen encoder never produces."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from support import spawn_ranks
from harness.engine import distributed as D
from harness.engine.model import no_grad_when_frozen
from harness.protocols.unfreeze import Unfreeze

WORLD = 2
EPOCHS, STEPS, LOCAL = 2, 2, 3  # epoch 0 frozen, epoch 1 trains everything


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU())
        self.decoder = torch.nn.Conv2d(4, 2, 1)
        no_grad_when_frozen(self.encoder)

    def forward(self, x):
        return self.decoder(self.encoder(x))


def _batches():
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(WORLD * LOCAL, 3, 6, 6, generator=g, dtype=torch.float64),
             torch.randn(WORLD * LOCAL, 2, 6, 6, generator=g, dtype=torch.float64))
            for _ in range(EPOCHS * STEPS)]


def _train(model, call, follow, batches, lo, hi):
    """SGD over every parameter (as fine-tuning's Adam holds them all); the encoder gradients
    of each step of the unfrozen epoch."""
    protocol = Unfreeze()
    protocol.unfreeze_epochs = 1
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    grads = []
    for epoch in range(EPOCHS):
        protocol.set_train_mode(model, "adapt", epoch)
        follow()
        for x, y in batches[epoch * STEPS:(epoch + 1) * STEPS]:
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.mse_loss(call(x[lo:hi]), y[lo:hi]).backward()
            if epoch:
                grads.append([p.grad.clone() for p in model.encoder.parameters()])
            else:
                assert all(p.grad is None for p in model.encoder.parameters())
            opt.step()
    return grads


def _worker(rank: int, init_file: str, state: dict, batches: list, expected: dict) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        model = Tiny().double()
        model.load_state_dict(state)
        net = D.TrainableDDP(model, torch.device("cpu"), sync_batchnorm=False)
        assert net.distributed
        grads = _train(model, net, net.follow, batches, rank * LOCAL, (rank + 1) * LOCAL)
        both = D.gather_objects(grads)
        for mine, other, single in zip(both[0], both[1], expected["grads"]):
            for a, b, c in zip(mine, other, single):
                assert torch.equal(a, b), "encoder gradients differ between ranks"
                assert torch.allclose(a, c, atol=1e-12, rtol=1e-9), (a - c).abs().max().item()
        for name, value in model.state_dict().items():
            assert torch.allclose(value, expected["state"][name], atol=1e-12, rtol=1e-9), name
        dist.barrier()  # leave together (gloo can reset a slow peer's connections)
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not available")
def test_unfreeze_under_ddp_averages_encoder_gradients(tmp_path):
    torch.manual_seed(0)
    model = Tiny().double()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    batches = _batches()
    grads = _train(model, model, lambda: None, batches, 0, WORLD * LOCAL)
    assert len(grads) == STEPS and all(g.abs().sum() > 0 for g in grads[0])
    expected = {"grads": grads, "state": model.state_dict()}
    spawn_ranks(_worker, (str(tmp_path / "rendezvous"), state, batches, expected), WORLD)
