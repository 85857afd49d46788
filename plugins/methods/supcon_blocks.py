"""The blockwise computation of :func:`.supcon.supcon_loss` over row blocks or square tiles of
the similarity matrix, so that memory stays bounded at thesis scale (n = 16,384 vectors): the
reference code's form as custom autograd Functions (forward and backward by blocks), the
thesis's per-pair form through recomputation (activation checkpointing)."""

from __future__ import annotations

import bisect
import math

import torch
import torch.nn.functional as F

#: The all-anchor path shifts every logit by the constant 1/tau, the largest value a cosine
#: similarity over tau can take, instead of by a per-row max; exp(x - 1/tau) >= exp(-2/tau) then
#: stays a normal float as long as 2/tau is at most this (per dtype). Below that temperature the
#: per-row-max path is used.
MAX_FIXED_SHIFT_RANGE = {torch.float32: 80.0, torch.float64: 700.0}
#: A block whose anchors span at most this many labels handles the positives per label with
#: contiguous slices (labels are sorted); above it (e.g. NT-Xent's one label per image) an
#: explicit ``label_i == label_k`` mask over the block is used instead. Both are exact.
MAX_LABELS_SLICED = 64


# ----------------------------------------------------------------------------------------------
# form="code": blockwise custom autograd Function
# ----------------------------------------------------------------------------------------------

def _fixed_shift_is_safe(tau: float, dtype: torch.dtype) -> bool:
    return 2.0 / tau <= MAX_FIXED_SHIFT_RANGE.get(dtype, 0.0)


def _tiles(n: int, block: int) -> list[tuple[int, int]]:
    return [(s, min(s + block, n)) for s in range(0, n, block)]


def _shared_labels(bounds: list[int], a0: int, a1: int, b0: int, b1: int
                   ) -> list[tuple[int, int, int, int]]:
    """For sorted labels with label c at [bounds[c], bounds[c+1]): each label present in both
    ranges [a0, a1) and [b0, b1), as (rows start, rows end, cols start, cols end)."""
    lo = max(bisect.bisect_right(bounds, max(a0, b0)) - 1, 0)
    hi = bisect.bisect_left(bounds, min(a1, b1))
    out = []
    for c in range(lo, min(hi, len(bounds) - 1)):
        r0, r1 = max(a0, bounds[c]), min(a1, bounds[c + 1])
        k0, k1 = max(b0, bounds[c]), min(b1, bounds[c + 1])
        if r0 < r1 and k0 < k1:
            out.append((r0, r1, k0, k1))
    return out


def _n_labels_in(bounds: list[int], a0: int, a1: int) -> int:
    return bisect.bisect_left(bounds, a1) - (bisect.bisect_right(bounds, a0) - 1)


class _SupConCodeSymmetric(torch.autograd.Function):
    """Sum over all anchors (with >= 1 positive) of ``l_i``, every vector being an anchor.

    Same quantity as :class:`_SupConCodeSum` with ``anchor_pos = arange(n)``, computed over
    square tiles ``(I, K)`` with ``K >= I`` only: ``x_IK = z_I z_K^T / tau`` serves both the rows
    of ``I`` (against the columns ``K``) and, transposed, the rows of ``K``; ``e = exp(x - 1/tau)``
    is computed once per pair of vectors. The shift ``1/tau`` bounds every logit of unit vectors
    from above (it is the row max up to the excluded diagonal), so ``e`` is in
    ``[exp(-2/tau), 1]``; it is used only when that range is representable
    (:data:`MAX_FIXED_SHIFT_RANGE`). Forward accumulates ``S_all_i = sum_{k != i} e_ik`` and
    ``S_pos_i = sum_{P(i)} e_ip`` (the shift cancels in ``l_i = log S_all_i - log S_pos_i``).

    Backward with ``a = 1/S_all``, ``q = 1/S_pos`` (both 0 for anchors without a positive)::

        G_ik = e_ik a_i - 1[k in P(i)] e_ik q_i ,     dL/dz = (G + G^T) z / tau,

    and per tile ``H = G_IK + G_KI^T = e * (a_I + a_K^T) - pos * e * (q_I + q_K^T)``, so that
    ``grad_I += H z_K`` and ``grad_K += H^T z_I``: half the matrix products of the row-block
    path. Saved: zc and the two (n,) sums.
    """

    @staticmethod
    def forward(ctx, zc, bounds, tau, block, yc=None):
        n = zc.shape[0]
        inv_tau = 1.0 / tau
        shift = zc.new_full((1,), -inv_tau)
        s_all = zc.new_zeros(n)
        s_pos = zc.new_zeros(n)
        tiles = _tiles(n, block)
        buf = zc.new_empty(min(block, n) ** 2)
        if yc is None:
            yc = _labels_from_bounds(bounds, zc.device)
        for ti, (i0, i1) in enumerate(tiles):
            zi = zc[i0:i1] * inv_tau
            for k0, k1 in tiles[ti:]:
                e = buf[: (i1 - i0) * (k1 - k0)].view(i1 - i0, k1 - k0)
                torch.addmm(shift, zi, zc[k0:k1].t(), out=e)
                e.exp_()
                same_tile = k0 == i0
                if same_tile:
                    e.fill_diagonal_(0.0)
                s_all[i0:i1] += e.sum(dim=1)
                if not same_tile:
                    s_all[k0:k1] += e.sum(dim=0)
                if _n_labels_in(bounds, i0, i1) <= MAX_LABELS_SLICED:
                    for r0, r1, c0, c1 in _shared_labels(bounds, i0, i1, k0, k1):
                        sub = e[r0 - i0: r1 - i0, c0 - k0: c1 - k0]
                        s_pos[r0:r1] += sub.sum(dim=1)
                        if not same_tile:
                            s_pos[c0:c1] += sub.sum(dim=0)
                else:
                    em = e * (yc[i0:i1, None] == yc[None, k0:k1])
                    s_pos[i0:i1] += em.sum(dim=1)
                    if not same_tile:
                        s_pos[k0:k1] += em.sum(dim=0)
        # sorted labels: a vector has a positive iff a neighbour shares its label (no bincount,
        # no boolean indexing: nothing waits for the device); where every anchor has one (always
        # in NT-Xent and PRICon), the sum is over the same values as a masked select's
        same = yc[1:] == yc[:-1]
        has_pos = torch.zeros_like(yc, dtype=torch.bool)
        has_pos[1:] |= same
        has_pos[:-1] |= same
        terms = s_all.log() - s_pos.log()
        loss = torch.where(has_pos, terms, torch.zeros_like(terms)).sum()
        ctx.save_for_backward(zc, yc, has_pos, s_all, s_pos)
        ctx.bounds, ctx.tau, ctx.block = bounds, tau, block
        return loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        zc, yc, has_pos, s_all, s_pos = ctx.saved_tensors
        bounds, tau, block = ctx.bounds, ctx.tau, ctx.block
        n = zc.shape[0]
        inv_tau = 1.0 / tau
        a = torch.where(has_pos, s_all.reciprocal(), torch.zeros_like(s_all))
        q = torch.where(has_pos, s_pos.reciprocal(), torch.zeros_like(s_pos))
        shift = zc.new_full((1,), -inv_tau)
        grad = torch.zeros_like(zc)
        tiles = _tiles(n, block)
        buf = zc.new_empty(min(block, n) ** 2)
        for ti, (i0, i1) in enumerate(tiles):
            zi = zc[i0:i1]
            zis = zi * inv_tau
            for k0, k1 in tiles[ti:]:
                zk = zc[k0:k1]
                e = buf[: (i1 - i0) * (k1 - k0)].view(i1 - i0, k1 - k0)
                torch.addmm(shift, zis, zk.t(), out=e)
                e.exp_()
                same_tile = k0 == i0
                if same_tile:
                    e.fill_diagonal_(0.0)
                if _n_labels_in(bounds, i0, i1) <= MAX_LABELS_SLICED:
                    qs = [(r0 - i0, r1 - i0, c0 - k0, c1 - k0,
                           e[r0 - i0: r1 - i0, c0 - k0: c1 - k0] * (q[r0:r1, None] + q[None, c0:c1]))
                          for r0, r1, c0, c1 in _shared_labels(bounds, i0, i1, k0, k1)]
                    e.mul_(a[i0:i1, None] + a[None, k0:k1])
                    for r0, r1, c0, c1, sub in qs:
                        e[r0:r1, c0:c1].sub_(sub)
                else:
                    same = yc[i0:i1, None] == yc[None, k0:k1]
                    pos_part = (e * (q[i0:i1, None] + q[None, k0:k1])).mul_(same)
                    e.mul_(a[i0:i1, None] + a[None, k0:k1]).sub_(pos_part)
                # e now holds H = G_IK + G_KI^T
                grad[i0:i1].addmm_(e, zk)
                if not same_tile:
                    grad[k0:k1].addmm_(e.t(), zi)
        grad.mul_(grad_out * inv_tau)
        return grad, None, None, None, None


def _labels_from_bounds(bounds: list[int], device) -> torch.Tensor:
    counts = torch.tensor([bounds[c + 1] - bounds[c] for c in range(len(bounds) - 1)], device=device)
    return torch.repeat_interleave(torch.arange(len(counts), device=device), counts)


def _label_runs(y_block: torch.Tensor) -> list[tuple[int, int, int]]:
    """(label, first row, end row) for each run of equal labels in a sorted label block."""
    uniq, cnt = torch.unique_consecutive(y_block, return_counts=True)
    runs, r0 = [], 0
    for c, k in zip(uniq.tolist(), cnt.tolist()):
        runs.append((c, r0, r0 + k))
        r0 += k
    return runs


class _SupConCodeSum(torch.autograd.Function):
    """Sum over anchors (with >= 1 positive) of ``logsumexp_{k!=i} x_ik - logsumexp_{P(i)} x_ip``.

    Inputs: ``zc`` (n, D) normalised features sorted by label, ``yc`` (n,) their labels 0..C-1
    (sorted), ``anchor_pos`` (A,) increasing column indices of the anchors (their own column is
    the excluded diagonal), ``bounds`` (C+1 ints: label c occupies columns bounds[c]:bounds[c+1]),
    ``tau``, ``block`` rows per block.

    Forward, per block of anchor rows: ``X = (z_a / tau) z^T`` into a reused buffer, the
    diagonal set to -inf, the row max ``m`` (excluding the diagonal) subtracted before ``exp``:
    ``lse_all = m + log sum exp(X - m)``; ``lse_pos`` = logsumexp over the anchor's label slice
    (its own stabilisation). Saved: zc, labels, anchor indices and the two (A,) log-sum-exps.

    Backward: ``dl_i/dx_ik = exp(x_ik - lse_all_i) - 1[k in P(i)] exp(x_ik - lse_pos_i)``, with
    ``x`` recomputed blockwise; ``dL/dz_a = G z / tau`` and ``dL/dz_k += G^T z_a / tau``. Anchors
    without a positive get ``lse_* = +inf``, i.e. a zero row of G.
    """

    @staticmethod
    def forward(ctx, zc, yc, anchor_pos, bounds, tau, block):
        n = zc.shape[0]
        a = anchor_pos.numel()
        inv_tau = 1.0 / tau
        ya = yc[anchor_pos]
        counts = torch.tensor([bounds[c + 1] - bounds[c] for c in range(len(bounds) - 1)],
                              device=zc.device)
        has_pos = counts[ya] >= 2
        lse_all = zc.new_empty(a)
        lse_pos = zc.new_empty(a)
        buf = zc.new_empty(min(block, a), n)
        zt = zc.t()
        for s in range(0, a, block):
            e = min(s + block, a)
            rows = anchor_pos[s:e]
            b = e - s
            x = buf[:b]
            torch.mm(zc[rows] * inv_tau, zt, out=x)
            x[torch.arange(b, device=x.device), rows] = -math.inf
            yb = ya[s:e]
            runs = _label_runs(yb)
            if len(runs) <= MAX_LABELS_SLICED:
                for c, r0, r1 in runs:
                    lse_pos[s + r0: s + r1] = torch.logsumexp(x[r0:r1, bounds[c]: bounds[c + 1]], dim=1)
            else:
                same = yb[:, None] == yc[None, :]
                lse_pos[s:e] = torch.logsumexp(x.masked_fill(~same, -math.inf), dim=1)
            m = x.amax(dim=1)
            x.sub_(m[:, None]).exp_()
            lse_all[s:e] = m + x.sum(dim=1).log()
        loss = (lse_all - lse_pos)[has_pos].sum()
        inf = torch.full_like(lse_all, math.inf)
        ctx.save_for_backward(zc, yc, anchor_pos, torch.where(has_pos, lse_all, inf),
                              torch.where(has_pos, lse_pos, inf))
        ctx.bounds, ctx.tau, ctx.block = bounds, tau, block
        return loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        zc, yc, anchor_pos, lse_all, lse_pos = ctx.saved_tensors
        bounds, tau, block = ctx.bounds, ctx.tau, ctx.block
        n = zc.shape[0]
        a = anchor_pos.numel()
        inv_tau = 1.0 / tau
        ya = yc[anchor_pos]
        grad = torch.zeros_like(zc)
        buf = zc.new_empty(min(block, a), n)
        zt = zc.t()
        for s in range(0, a, block):
            e = min(s + block, a)
            rows = anchor_pos[s:e]
            b = e - s
            x = buf[:b]
            za = zc[rows]
            torch.mm(za * inv_tau, zt, out=x)
            x[torch.arange(b, device=x.device), rows] = -math.inf
            yb = ya[s:e]
            lp = lse_pos[s:e, None]
            runs = _label_runs(yb)
            if len(runs) <= MAX_LABELS_SLICED:
                # q = softmax over the positives: nonzero only inside each label's own slice
                qs = [(r0, r1, c, (x[r0:r1, bounds[c]: bounds[c + 1]] - lp[r0:r1]).exp_())
                      for c, r0, r1 in runs]
                x.sub_(lse_all[s:e, None]).exp_()  # p = softmax over all k != i
                for r0, r1, c, q in qs:
                    x[r0:r1, bounds[c]: bounds[c + 1]].sub_(q)
            else:
                same = yb[:, None] == yc[None, :]
                q = (x - lp).masked_fill_(~same, -math.inf).exp_()
                x.sub_(lse_all[s:e, None]).exp_().sub_(q)
            # x now holds G = dl/dx for this block
            grad.index_add_(0, rows, x @ zc)
            grad.addmm_(x.t(), za)
        grad.mul_(grad_out * inv_tau)
        return grad, None, None, None, None, None


# ----------------------------------------------------------------------------------------------
# form="pairs": blockwise through activation checkpointing
# ----------------------------------------------------------------------------------------------

def _pairs_block(zc: torch.Tensor, yc: torch.Tensor, rows: torch.Tensor, bounds: list[int],
                 tau: float) -> torch.Tensor:
    """Sum of ``l_ij = softplus(log N_i - x_ij)`` over the pairs of the anchor rows ``rows``."""
    x = (zc[rows] / tau) @ zc.t()
    yb = yc[rows]
    runs = _label_runs(yb)
    n = zc.shape[0]
    if len(runs) <= MAX_LABELS_SLICED:
        # labels are sorted: the positives of a run of label c are the columns bounds[c]:bounds[c+1]
        # and its negatives every other column
        total = x[:, :0].sum()  # 0, attached to the graph
        for c, r0, r1 in runs:
            c0, c1 = bounds[c], bounds[c + 1]
            if c1 - c0 < 2 or (c0 == 0 and c1 == n):
                continue  # no positive, or no negative (then every l_ij = log(s_ij/s_ij) = 0)
            xr = x[r0:r1]
            parts = [torch.logsumexp(xr[:, sl], dim=1) for sl in (slice(0, c0), slice(c1, n))
                     if sl.stop > sl.start]
            lse_neg = parts[0] if len(parts) == 1 else torch.logaddexp(parts[0], parts[1])
            terms = F.softplus(lse_neg[:, None] - xr[:, c0:c1])
            own = torch.zeros_like(terms, dtype=torch.bool)
            own[torch.arange(r1 - r0, device=x.device), rows[r0:r1] - c0] = True
            total = total + terms.masked_fill(own, 0.0).sum()
        return total
    same = yb[:, None] == yc[None, :]
    diag = torch.zeros_like(same)
    diag[torch.arange(rows.numel(), device=rows.device), rows] = True
    pos = same & ~diag
    has_neg = (~same).any(dim=1)
    # log sum_{n in N(i)} s_in; rows without negatives get -inf (their pair terms are 0)
    xn = x.masked_fill(same, -math.inf).masked_fill(~has_neg[:, None], 0.0)
    lse_neg = torch.where(has_neg, torch.logsumexp(xn, dim=1), torch.full_like(xn[:, 0], -math.inf))
    # -log(s_ij / (s_ij + N_i)) = softplus(log N_i - x_ij)
    terms = F.softplus(lse_neg[:, None] - x)
    return terms.masked_fill(~pos, 0.0).sum()


class _RecomputedPairsBlock(torch.autograd.Function):
    """Activation checkpointing of one :func:`_pairs_block`: the forward keeps no graph, the
    backward recomputes the block with autograd (``torch.utils.checkpoint`` without its one-off
    import of ``torch._dynamo``)."""

    @staticmethod
    def forward(ctx, zc, yc, rows, bounds, tau):
        ctx.save_for_backward(zc, yc, rows)
        ctx.bounds, ctx.tau = bounds, tau
        with torch.no_grad():
            return _pairs_block(zc, yc, rows, bounds, tau)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        zc, yc, rows = ctx.saved_tensors
        with torch.enable_grad():
            z = zc.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(_pairs_block(z, yc, rows, ctx.bounds, ctx.tau), z, grad_out)
        return grad, None, None, None, None


def _supcon_pairs_sum(zc, yc, anchor_pos, bounds, tau, block):
    total = None
    single = anchor_pos.numel() <= block
    for s in range(0, anchor_pos.numel(), block):
        rows = anchor_pos[s: s + block]
        if single or not (torch.is_grad_enabled() and zc.requires_grad):
            part = _pairs_block(zc, yc, rows, bounds, tau)
        else:
            part = _RecomputedPairsBlock.apply(zc, yc, rows, bounds, tau)
        total = part if total is None else total + part
    return total
