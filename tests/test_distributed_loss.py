"""Losses across 2 CPU processes (gloo, loopback-free file:// rendezvous) equal the single-process
losses on the global batch.

Gradient relation checked: every process computes the *global* loss L (its own anchors' terms,
combined across processes), and ``all_gather``'s backward sums over processes the gradients that
each process's loss sends to a slice. So the gradient arriving at a process's local features is
``world_size * dL/d(local slice)``; DDP averages gradients over the processes, which gives back
exactly the single-device gradient ``dL/dtheta``.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from support import spawn_ranks
from harness.engine import distributed as D
from harness_builtin.methods.simclr.loss import nt_xent
from harness_builtin.methods.supcon import supcon_loss

WORLD = 2


def _cases():
    g = torch.Generator().manual_seed(0)
    n0, n1, d = 13, 20, 6  # unequal local sizes (as region features have)
    feats = torch.randn(n0 + n1, d, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 4, (n0 + n1,), generator=g)
    labels[5] = 9  # present once: an anchor without positive
    cases = []
    for form, block in (("code", 5), ("code", None), ("pairs", 4)):
        f = feats.clone().requires_grad_(True)
        loss = supcon_loss(f, labels, temperature=0.1, form=form, block_size=block)
        loss.backward()
        cases.append(dict(kind="supcon", form=form, block=block, feats=feats, labels=labels,
                          split=[0, n0, n0 + n1], loss=loss.item(), grad=f.grad))
    x1, x2 = (torch.randn(n0 + n1, d, generator=g, dtype=torch.float64) for _ in range(2))
    lin = torch.nn.Linear(d, 3).double()
    _two_gathers_loss(lin(x1), lin(x2)[:, :2], first=0).backward()
    cases.append(dict(kind="two_gathers", x1=x1, x2=x2, split=[0, n0, n0 + n1],
                      state={k: v.detach().clone() for k, v in lin.state_dict().items()},
                      grads=[p.grad.clone() for p in lin.parameters()]))
    b = 8
    z1 = torch.randn(b, d, generator=g, dtype=torch.float64).requires_grad_(True)
    z2 = torch.randn(b, d, generator=g, dtype=torch.float64).requires_grad_(True)
    loss = nt_xent(z1, z2, temperature=0.5)
    loss.backward()
    cases.append(dict(kind="nt_xent", z1=z1.detach(), z2=z2.detach(), split=[0, b // 2, b],
                      loss=loss.item(), g1=z1.grad, g2=z2.grad))
    return cases


def _two_gathers_loss(g1: torch.Tensor, g2: torch.Tensor, first: int) -> torch.Tensor:
    """A global loss of two gathered tensors of different widths; its terms built in an order
    that differs between processes (``first``), as data-dependent losses may."""
    def a():
        return torch.logsumexp(g1 @ g1.T, dim=1).mean()

    def b():
        x = g2
        for _ in range(10):
            x = x * 1.0
        return x.pow(3).mean() * 2

    x, y = (a(), b()) if first == 0 else tuple(reversed((b(), a())))
    return x + y


def _two_gathers(case: dict, rank: int) -> None:
    """Two gathers in one loss under DDP: DDP's averaged gradients equal one process's."""
    lo, hi = case["split"][rank], case["split"][rank + 1]
    lin = torch.nn.Linear(case["x1"].shape[1], 3).double()
    lin.load_state_dict(case["state"])
    net = torch.nn.parallel.DistributedDataParallel(lin)
    g1 = D.gather_with_grad(net(case["x1"][lo:hi]))
    g2 = D.gather_with_grad(lin(case["x2"][lo:hi])[:, :2].contiguous())
    _two_gathers_loss(g1, g2, first=rank).backward()
    for p, expected in zip(lin.parameters(), case["grads"]):
        _close(p.grad, expected)


def _close(a: torch.Tensor, b: torch.Tensor, atol: float = 1e-9, rtol: float = 1e-7) -> None:
    # (torch.testing.assert_close imports DTensor support, seconds, once a process group exists)
    assert a.shape == b.shape and torch.allclose(a, b, atol=atol, rtol=rtol), \
        f"max abs diff {(a - b).abs().max().item():.3g}"


def _worker(rank: int, init_file: str, cases: list[dict]) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        _check_rank(rank, cases)
        # Both ranks leave together: gloo's last collective can return on the sending side
        # before the peer has read its data, and a rank that tears its connections down first
        # can reset them under the other, which a slow (loaded) peer then sees as an error.
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _check_rank(rank: int, cases: list[dict]) -> None:
    assert D.is_distributed() and D.world_size() == WORLD and D.rank() == rank

    # gather_with_grad itself: values in rank order, gradient = sum over processes
    x = torch.full((rank + 1, 2), float(rank), dtype=torch.float64, requires_grad=True)
    gathered = D.gather_with_grad(x)
    assert gathered.tolist() == [[0.0, 0.0], [1.0, 1.0], [1.0, 1.0]]
    weights = torch.arange(6, dtype=torch.float64).view(3, 2)
    (gathered * weights).sum().backward()
    _close(x.grad, WORLD * weights[rank: 2 * rank + 1])

    for case in cases:
        lo, hi = case["split"][rank], case["split"][rank + 1]
        if case["kind"] == "two_gathers":
            _two_gathers(case, rank)
        elif case["kind"] == "supcon":
            f = case["feats"][lo:hi].clone().requires_grad_(True)
            loss = supcon_loss(f, case["labels"][lo:hi], temperature=0.1, form=case["form"],
                               block_size=case["block"])
            assert abs(loss.item() - case["loss"]) < 1e-5, (case["form"], loss.item(), case["loss"])
            loss.backward()
            _close(f.grad, WORLD * case["grad"][lo:hi])
        else:
            z1 = case["z1"][lo:hi].clone().requires_grad_(True)
            z2 = case["z2"][lo:hi].clone().requires_grad_(True)
            loss = nt_xent(z1, z2, temperature=0.5)
            assert abs(loss.item() - case["loss"]) < 1e-5, (loss.item(), case["loss"])
            loss.backward()
            _close(z1.grad, WORLD * case["g1"][lo:hi])
            _close(z2.grad, WORLD * case["g2"][lo:hi])


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not available")
def test_losses_across_two_processes_equal_single_process(tmp_path):
    assert not D.is_distributed() and D.world_size() == 1 and D.rank() == 0
    x = torch.ones(3, 2, requires_grad=True)
    assert D.gather_with_grad(x) is x
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cases = _cases()
    finally:
        torch.set_num_threads(before)
    spawn_ranks(_worker, (str(tmp_path / "rendezvous"), cases), WORLD)
