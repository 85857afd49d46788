"""Losses against literal loop implementations of the equations, a dense autograd version of the
blockwise paths, invariances, gradcheck, and SimSiam's stop-gradient."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import harness_builtin.methods.supcon_blocks as L
from harness_builtin.methods.simclr.loss import nt_xent
from harness_builtin.methods.simsiam.loss import simsiam_loss
from harness_builtin.methods.supcon import supcon_loss


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _feats(n: int, d: int = 8, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    return torch.randn(n, d, generator=_gen(seed), dtype=dtype).requires_grad_(True)


def _labels(n: int, c: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, c, (n,), generator=_gen(seed + 100))


# --- literal implementations: python loops over anchors / pairs ----------------------------------

def _s(f, tau):
    """s_ik = exp(sim(z_i, z_k) / tau) as a table; the equations below index it in loops."""
    z = F.normalize(f, dim=1)
    return torch.exp(z @ z.t() / tau)


def literal_nt_xent(z1, z2, tau):
    """Thesis Eq. 3.1, averaged over the 2B anchors."""
    s = _s(torch.cat([z1, z2]), tau)
    b = z1.shape[0]
    terms = []
    for i in range(2 * b):
        j = (i + b) % (2 * b)
        den = sum(s[i, k] for k in range(2 * b) if k != i)
        terms.append(-torch.log(s[i, j] / den))
    return sum(terms) / len(terms)


def literal_supcon_code(f, y, tau):
    """Reference code form, mean over anchors that have a positive."""
    s = _s(f, tau)
    y = y.tolist()
    n = len(y)
    terms = []
    for i in range(n):
        pos = [k for k in range(n) if k != i and y[k] == y[i]]
        neg = [k for k in range(n) if y[k] != y[i]]
        if not pos:
            continue
        sp = sum(s[i, p] for p in pos)
        sn = sum((s[i, k] for k in neg), torch.zeros((), dtype=s.dtype))
        terms.append(-torch.log(sp / (sp + sn)))
    return sum(terms) / len(terms)


def literal_supcon_pairs(f, y, tau):
    """Thesis Eqs. 3.2/3.4 per positive pair (with s_ij in the denominator), mean over pairs."""
    s = _s(f, tau)
    y = y.tolist()
    n = len(y)
    terms = []
    for i in range(n):
        sn = sum((s[i, k] for k in range(n) if y[k] != y[i]), torch.zeros((), dtype=s.dtype))
        for j in range(n):
            if j != i and y[j] == y[i]:
                terms.append(-torch.log(s[i, j] / (s[i, j] + sn)))
    return sum(terms) / len(terms)


# --- dense autograd version of the code form (what the blockwise Functions must reproduce) ----

def dense_supcon_code(f, y, tau):
    z = F.normalize(f, dim=1)
    x = z @ z.t() / tau
    n = len(y)
    eye = torch.eye(n, dtype=torch.bool)
    same = y[:, None] == y[None, :]
    pos = same & ~eye
    keep = pos.any(dim=1)
    lse_all = torch.logsumexp(x.masked_fill(eye, -math.inf), dim=1)
    lse_pos = torch.logsumexp(x.masked_fill(~pos, -math.inf), dim=1)
    return (lse_all - lse_pos)[keep].mean()


def _grad(loss, f):
    (g,) = torch.autograd.grad(loss, f)
    return g


# --- literal checks ------------------------------------------------------------------------------

@pytest.mark.parametrize("b,tau", [(6, 0.5), (16, 0.1), (20, 0.5)])
def test_nt_xent_matches_eq_3_1(b, tau):
    z1, z2 = _feats(b, seed=1), _feats(b, seed=2)
    got = nt_xent(z1, z2, temperature=tau)
    want = literal_nt_xent(z1, z2, tau)
    assert abs(got.item() - want.item()) < 1e-5
    g_got = torch.autograd.grad(got, (z1, z2))
    g_want = torch.autograd.grad(want, (z1, z2))
    for a, b_ in zip(g_got, g_want):
        torch.testing.assert_close(a, b_, atol=1e-8, rtol=1e-6)


@pytest.mark.parametrize("n,c,tau,block", [(12, 3, 0.1, None), (40, 3, 0.1, 7), (30, 3, 0.5, 30),
                                           (25, 6, 0.2, 4)])
def test_supcon_code_matches_literal(n, c, tau, block):
    f, y = _feats(n, seed=n), _labels(n, c, seed=n)
    got = supcon_loss(f, y, temperature=tau, block_size=block)
    want = literal_supcon_code(f, y, tau)
    assert abs(got.item() - want.item()) < 1e-5
    torch.testing.assert_close(_grad(got, f), _grad(want, f), atol=1e-8, rtol=1e-6)


@pytest.mark.parametrize("n,c,tau,block", [(12, 3, 0.1, None), (22, 3, 0.1, 7), (24, 12, 0.3, 5)])
def test_supcon_pairs_matches_literal(n, c, tau, block):
    f, y = _feats(n, seed=n + 1), _labels(n, c, seed=n + 1)
    got = supcon_loss(f, y, temperature=tau, form="pairs", block_size=block)
    want = literal_supcon_pairs(f, y, tau)
    assert abs(got.item() - want.item()) < 1e-5
    torch.testing.assert_close(_grad(got, f), _grad(want, f), atol=1e-8, rtol=1e-6)


def test_supcon_pairs_label_modes_agree(monkeypatch):
    """The per-label slice path and the explicit-mask path of form='pairs' are the same loss."""
    f, y = _feats(33, seed=5), _labels(33, 4, seed=5)
    y[0] = 9  # a singleton label
    a = supcon_loss(f, y, form="pairs", block_size=8)
    ga = _grad(a, f)
    monkeypatch.setattr(L, "MAX_LABELS_SLICED", 0)
    b = supcon_loss(f, y, form="pairs", block_size=8)
    torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(ga, _grad(b, f), atol=1e-12, rtol=1e-10)


def test_nt_xent_equals_supcon_with_image_ids():
    z1, z2 = _feats(10, seed=3), _feats(10, seed=4)
    ids = torch.arange(10).repeat(2)
    a = nt_xent(z1, z2, temperature=0.5)
    for form in ("code", "pairs"):  # one positive per anchor: both forms are Eq. 3.1
        b = supcon_loss(torch.cat([z1, z2]), ids, temperature=0.5, form=form)
        assert abs(a.item() - b.item()) < 1e-10


# --- blockwise vs dense autograd ---------------------------------------------------------------

PATHS = ["symmetric", "rowblock"]


def _force(monkeypatch, path: str, sliced: bool):
    if path == "rowblock":  # the per-row-max path (used for small tau and when distributed)
        monkeypatch.setattr(L, "MAX_FIXED_SHIFT_RANGE", {})
    if not sliced:
        monkeypatch.setattr(L, "MAX_LABELS_SLICED", 0)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("sliced", [True, False])
@pytest.mark.parametrize("n,c,block", [(37, 3, 5), (37, 3, 37), (37, 3, 100), (64, 6, 16), (2, 1, 1),
                                       (3, 2, 2), (50, 30, 9), (41, 5, None)])
def test_blockwise_matches_dense(monkeypatch, path, sliced, n, c, block):
    _force(monkeypatch, path, sliced)
    f, y = _feats(n, d=16, seed=n * 7 + c), _labels(n, c, seed=n + c)
    if n > 3:
        y[3] = c + 5  # a label present once: an anchor without positive
    got = supcon_loss(f, y, temperature=0.1, block_size=block)
    want = dense_supcon_code(f, y, 0.1)
    assert abs(got.item() - want.item()) < 1e-6
    torch.testing.assert_close(_grad(got, f), _grad(want, f), atol=1e-6, rtol=0)


@pytest.mark.parametrize("path", PATHS)
def test_blockwise_matches_dense_float32(monkeypatch, path):
    _force(monkeypatch, path, True)
    f64, y = _feats(300, d=32, seed=11), _labels(300, 6, seed=11)
    f32 = f64.detach().float().requires_grad_(True)
    got = supcon_loss(f32, y, temperature=0.1, block_size=64)
    want = dense_supcon_code(f64, y, 0.1)
    assert abs(got.item() - want.item()) < 1e-5
    torch.testing.assert_close(_grad(got, f32).double(), _grad(want, f64), atol=1e-6, rtol=1e-4)


def test_small_temperature_is_stable_in_float32():
    """tau = 0.01 takes the per-row-max path; with a far-away positive the loss stays finite."""
    f64, y = _feats(40, d=8, seed=12), _labels(40, 3, seed=12)
    f64.data[1] = -f64.data[0]
    y[0], y[1] = 7, 7  # the only positive of anchor 0 is its antipode: x = -100 vs others up to 100
    f32 = f64.detach().float().requires_grad_(True)
    got = supcon_loss(f32, y, temperature=0.01, block_size=16)
    want = dense_supcon_code(f64, y, 0.01)
    assert torch.isfinite(got)
    assert abs(got.item() - want.item()) / want.item() < 1e-5
    g = _grad(got, f32)
    assert torch.isfinite(g).all()
    torch.testing.assert_close(g.double(), _grad(want, f64), atol=1e-4, rtol=1e-3)


def test_no_positive_anywhere_gives_zero_with_graph():
    f = _feats(5, seed=13)
    for form in ("code", "pairs"):
        loss = supcon_loss(f, torch.arange(5), form=form)
        assert loss.item() == 0.0
        assert torch.equal(_grad(loss, f), torch.zeros_like(f))


def test_single_label_pairs_form_is_zero():
    f = _feats(6, seed=14)
    loss = supcon_loss(f, torch.zeros(6, dtype=torch.long), form="pairs")
    assert loss.item() == 0.0
    _grad(loss, f)  # backward works


def test_half_precision_input_is_upcast():
    f = _feats(20, seed=15, dtype=torch.float32)
    y = _labels(20, 3, seed=15)
    a = supcon_loss(f.detach().half(), y)
    assert a.dtype == torch.float32 and torch.isfinite(a)
    assert abs(a.item() - supcon_loss(f.detach().half().float(), y).item()) < 1e-6


def test_autocast_region_keeps_float32():
    f = _feats(40, seed=26, dtype=torch.float32)
    y = _labels(40, 3, seed=26)
    want = supcon_loss(f, y, block_size=16)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        got = supcon_loss(f, y, block_size=16)
        got_nt = nt_xent(f[:20], f[20:])
    assert got.dtype == torch.float32 and abs(got.item() - want.item()) < 1e-6
    assert abs(got_nt.item() - nt_xent(f[:20], f[20:]).item()) < 1e-6


def test_argument_validation():
    f, y = _feats(4), _labels(4, 2)
    with pytest.raises(ValueError, match="form"):
        supcon_loss(f, y, form="thesis")
    with pytest.raises(ValueError):
        supcon_loss(f, y[:3])
    with pytest.raises(ValueError):
        supcon_loss(f, y, temperature=0.0)
    with pytest.raises(ValueError):
        nt_xent(f, f[:3])


# --- invariances --------------------------------------------------------------------------------

@pytest.mark.parametrize("form", ["code", "pairs"])
def test_permutation_invariance(form):
    f, y = _feats(30, seed=16), _labels(30, 4, seed=16)
    perm = torch.randperm(30, generator=_gen(16))
    a = supcon_loss(f, y, form=form, block_size=7)
    b = supcon_loss(f[perm], y[perm], form=form, block_size=7)
    assert abs(a.item() - b.item()) < 1e-12
    # permuting the labels' *values* changes nothing either
    c = supcon_loss(f, (y * 3 + 11) % 97, form=form, block_size=7)
    assert abs(a.item() - c.item()) < 1e-12


def test_nt_xent_symmetric_in_views():
    z1, z2 = _feats(9, seed=17), _feats(9, seed=18)
    assert abs(nt_xent(z1, z2).item() - nt_xent(z2, z1).item()) < 1e-12
    perm = torch.randperm(9, generator=_gen(18))
    assert abs(nt_xent(z1, z2).item() - nt_xent(z1[perm], z2[perm]).item()) < 1e-12


def test_scale_invariance():
    f, y = _feats(20, seed=19), _labels(20, 3, seed=19)
    assert abs(supcon_loss(f, y).item() - supcon_loss(3.7 * f, y).item()) < 1e-12


# --- gradcheck on the custom Functions ----------------------------------------------------------

def _sorted_inputs(n, c, seed):
    z = F.normalize(torch.randn(n, 3, generator=_gen(seed), dtype=torch.float64), dim=1)
    y = torch.sort(torch.randint(0, c, (n,), generator=_gen(seed + 1))).values
    _, y = torch.unique(y, return_inverse=True)
    bounds = [0] + torch.cumsum(torch.bincount(y), 0).tolist()
    return z.requires_grad_(True), y, bounds


@pytest.mark.parametrize("block", [3, 16])
def test_gradcheck_symmetric_function(block):
    z, y, bounds = _sorted_inputs(8, 3, 20)
    assert torch.autograd.gradcheck(lambda t: L._SupConCodeSymmetric.apply(t, bounds, 0.5, block), (z,))


@pytest.mark.parametrize("block", [3, 16])
@pytest.mark.parametrize("subset", [False, True])
def test_gradcheck_rowblock_function(block, subset):
    z, y, bounds = _sorted_inputs(8, 3, 21)
    anchors = torch.tensor([0, 2, 3, 7]) if subset else torch.arange(8)
    assert torch.autograd.gradcheck(
        lambda t: L._SupConCodeSum.apply(t, y, anchors, bounds, 0.5, block), (z,))


# --- SimSiam ------------------------------------------------------------------------------------

def test_simsiam_value_and_stop_gradient():
    p1, p2 = _feats(6, seed=22), _feats(6, seed=23)
    z1, z2 = _feats(6, seed=24), _feats(6, seed=25)
    loss = simsiam_loss(p1, p2, z1, z2)
    want = -0.5 * (sum(torch.dot(p1[b], z2[b]) / (p1[b].norm() * z2[b].norm()) for b in range(6)) / 6
                   + sum(torch.dot(p2[b], z1[b]) / (p2[b].norm() * z1[b].norm()) for b in range(6)) / 6)
    assert abs(loss.item() - want.item()) < 1e-10
    loss.backward()
    assert z1.grad is None and z2.grad is None
    assert p1.grad is not None and p1.grad.abs().sum() > 0


def test_simsiam_no_gradient_into_shared_projection():
    """z and p computed from shared weights: the gradient equals that of the loss with z frozen."""
    w = torch.randn(4, 4, dtype=torch.float64, requires_grad=True)
    v = torch.randn(4, 4, dtype=torch.float64, requires_grad=True)
    x1, x2 = torch.randn(5, 4, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64)
    z1, z2 = x1 @ w, x2 @ w
    gw, gv = torch.autograd.grad(simsiam_loss(z1 @ v, z2 @ v, z1, z2), (w, v), retain_graph=True)
    c1, c2 = z1.detach().clone(), z2.detach().clone()
    want = -0.5 * (F.cosine_similarity(z1 @ v, c2).mean() + F.cosine_similarity(z2 @ v, c1).mean())
    ww, wv = torch.autograd.grad(want, (w, v))
    torch.testing.assert_close(gw, ww)
    torch.testing.assert_close(gv, wv)
    assert simsiam_loss(z1, z1, z1, z1).item() == pytest.approx(-1.0)
