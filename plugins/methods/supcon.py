"""The label-supervised contrastive loss (SupCon) behind SimCLR's NT-Xent and PRICon's point,
region and image terms, as a pure function (no module state); its blockwise autograd lives in
:mod:`.supcon_blocks`.

Notation: ``z`` are L2-normalised feature vectors, ``x_ik = z_i . z_k / tau`` the scaled cosine
similarities and ``s_ik = exp(x_ik)``. For an anchor ``i`` with label ``y_i``:

* ``P(i) = {k != i : y_k = y_i}`` (positives: same label, never the anchor itself),
* ``N(i) = {k : y_k != y_i}`` (negatives).

:func:`supcon_loss` computes it in the reference code's form (``form="code"``, default) or in the
thesis's per-pair form (``form="pairs"``).

Distributed behaviour
---------------------
When a process group is initialised, features and labels are gathered from all processes with
:func:`harness.engine.distributed.gather_with_grad`, so positives and negatives span the global
batch, as in the reference (``pricon:src/loss.py``, solo-learn's ``gather``). Each process then
computes the loss terms of its *own* anchors only (no work is duplicated), and the per-process
sums are combined with a differentiable gather, so every process returns the loss of the
**whole global batch** (the single-device value). The gradient that reaches a process's local
features is ``world_size`` times the single-device gradient of those features; DDP's gradient
averaging over processes then reproduces the single-device gradient exactly. Processes may hold
different numbers of vectors (e.g. region features).

Precision: half-precision inputs are upcast to float32 before normalisation, and the loss is
computed with autocast disabled.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from harness.engine.distributed import gather_sizes, gather_with_grad, is_distributed, rank
from harness.engine.host_syncs import to_host

from .supcon_blocks import (_fixed_shift_is_safe, _supcon_pairs_sum,
                            _SupConCodeSum, _SupConCodeSymmetric)

__all__ = ["supcon_loss"]

#: ``block_size=None`` on the row-block paths: rows per block are chosen so that one block of
#: similarities holds about this many elements (2**24 floats = 64 MiB in float32, i.e. 1024 rows
#: at n = 16,384).
AUTO_BLOCK_ELEMENTS = 1 << 24
#: ``block_size=None`` on the all-anchor path: the side of its square tiles (4 MiB in float32).
AUTO_TILE = 1024
#: ... on CUDA (64 MiB tiles): a step of PRICon's point loss at thesis scale (n = 16,384) issues
#: 674 ATen ops instead of 8,426 at 1024 (launch-bound on a GPU otherwise); same loss, gradients
#: within 1e-6 relative (float32 summation order), measured on CPU.
AUTO_TILE_CUDA = 4096


def supcon_loss(
    features: torch.Tensor,
    labels: torch.Tensor | np.ndarray,
    temperature: float = 0.1,
    form: str = "code",
    block_size: int | None = None,
) -> torch.Tensor:
    """Label-supervised contrastive loss over ``features`` (n, D) with integer ``labels`` (n,): a
    tensor (read on the host once, :func:`harness.engine.host_syncs.to_host`: the blocks depend
    on it) or a host array (no copy).

    ``form="code"`` (default): the reference implementation's semantics
    (``pricon:src/loss.py L10-44``, used for PRICon's point, region and image terms)::

        l_i = -log( sum_{p in P(i)} s_ip / (sum_{p in P(i)} s_ip + sum_{n in N(i)} s_in) )
            = logsumexp_{k != i} x_ik - logsumexp_{p in P(i)} x_ip
        loss = mean of l_i over the anchors that have at least one positive.

    The numerator sums over *all* same-label vectors (SupCon "L_in"-style log of a sum) and the
    denominator runs over every ``k != i``. Anchors without a positive (a label that occurs once)
    are **excluded from the mean**; the reference would return ``inf`` for them (log 0), which
    cannot happen in PRICon's own use (every label occurs in both views) but can in other uses.

    ``form="pairs"``: thesis Eqs. 3.2 / 3.4, one term per ordered positive pair ``(i, j)``,
    ``j in P(i)``::

        l_ij = -log( s_ij / (s_ij + sum_{n in N(i)} s_in) ),   loss = mean over all pairs.

    The printed equations sum only ``1[a_k != a_i]`` terms in the denominator; here the pair's
    own ``s_ij`` is added (the usual InfoNCE/DetCon reading, which keeps ``l_ij >= 0``). An anchor
    with no negatives contributes ``l_ij = 0``.

    Both forms L2-normalise ``features`` inside and, when distributed, gather features and labels
    from all processes (see the module docstring); ``labels`` must then be globally meaningful
    (class ids). If no anchor has a positive the loss is 0 (still attached to the graph).

    Memory: the ``n x n`` similarity matrix is never materialised. ``form="code"`` is a custom
    autograd Function with a hand-derived backward that recomputes the similarities blockwise
    (saved state: O(n*D + n)). When every vector is an anchor (single process) and
    ``2/tau`` is small enough for a fixed shift (:data:`MAX_FIXED_SHIFT_RANGE`; tau >= 0.025 in
    float32) it works on ``block_size x block_size`` tiles of one triangle of the symmetric
    matrix (``None``: :data:`AUTO_TILE`, :data:`AUTO_TILE_CUDA` on CUDA); otherwise
    (distributed, very small tau) on blocks of
    ``block_size`` anchor rows against all vectors with a per-row max shift (``None``: about
    :data:`AUTO_BLOCK_ELEMENTS` similarities per block). ``form="pairs"`` uses the row blocks and
    recomputes each block in backward (activation checkpointing). Small inputs fit one block.
    """
    if form not in ("code", "pairs"):
        raise ValueError(f"supcon_loss: form must be 'code' or 'pairs', got {form!r}")
    if features.dim() != 2 or labels.ndim != 1 or labels.shape[0] != features.shape[0]:
        raise ValueError(f"supcon_loss expects features (n, D) and labels (n,), got "
                         f"{tuple(features.shape)} and {tuple(labels.shape)}")
    if temperature <= 0:
        raise ValueError(f"supcon_loss: temperature must be > 0, got {temperature}")
    if block_size is not None and block_size < 1:
        raise ValueError(f"supcon_loss: block_size must be >= 1, got {block_size}")

    # float32 at least, also inside an autocast region (the blocks' matmuls must not drop to fp16)
    with torch.autocast(device_type=features.device.type, enabled=False):
        return _supcon_loss(features, labels, float(temperature), form, block_size)


def _supcon_loss(features, labels, temperature, form, block_size):
    if features.dtype in (torch.float16, torch.bfloat16):
        features = features.float()
    z = F.normalize(features, dim=1)
    n_local = z.shape[0]

    if is_distributed():
        labels = torch.as_tensor(labels).to(device=z.device, dtype=torch.long)
        sizes = gather_sizes(n_local, z.device)
        z_all = gather_with_grad(z, sizes=sizes)
        y_host = to_host(gather_with_grad(labels, sizes=sizes))
        offset = sum(sizes[: rank()])
    else:  # labels given as a host array need no copy
        z_all, offset = z, 0
        y_host = labels if isinstance(labels, np.ndarray) else to_host(labels)

    # relabel to 0..C-1 and sort the vectors by label, so that each label's vectors are
    # contiguous. The blocks' structure depends on the labels, so they are read on the host
    # once (one device-to-host copy instead of unique, bincount, a boolean mask and the reads
    # of n_terms and bounds); the rest is integer work on the host, the same numbers
    relabeled = np.unique(y_host, return_inverse=True)[1].reshape(-1).astype(np.int64)
    counts = np.bincount(relabeled)
    if form == "code":
        n_terms = int(counts[counts >= 2].sum())
    else:
        n_terms = int((counts * (counts - 1)).sum())
    if n_terms == 0:
        # no anchor with a positive anywhere (every process takes this branch together):
        # a zero that keeps the graph connected
        return z.sum() * 0.0
    perm = np.argsort(relabeled, kind="stable")
    inv = np.empty_like(perm)
    inv[perm] = np.arange(perm.size)
    zc = z_all[torch.from_numpy(perm).to(z.device)]
    yc = torch.from_numpy(relabeled[perm]).to(z.device)
    anchor_pos = torch.from_numpy(np.sort(inv[offset: offset + n_local])).to(z.device)
    bounds = [0] + np.cumsum(counts).tolist()
    return _supcon_sorted(z, zc, yc, anchor_pos, bounds, n_terms, temperature, form, block_size)


def _supcon_sorted(z, zc, yc, anchor_pos, bounds, n_terms, temperature, form, block_size):
    """The loss from the vectors sorted by label (``zc``, ``yc``, label c at
    ``bounds[c]:bounds[c + 1]``), the anchors' columns and the number of terms."""
    n = zc.shape[0]
    symmetric = (form == "code" and anchor_pos.numel() == n
                 and _fixed_shift_is_safe(temperature, zc.dtype))
    if block_size is None:
        tile = AUTO_TILE_CUDA if zc.device.type == "cuda" else AUTO_TILE
        block_size = tile if symmetric else AUTO_BLOCK_ELEMENTS // max(n, 1)
    block_size = max(1, min(block_size, max(anchor_pos.numel(), 1)))

    if anchor_pos.numel() == 0:
        local_sum = zc.sum() * 0.0
    elif symmetric:
        local_sum = _SupConCodeSymmetric.apply(zc, bounds, float(temperature), block_size, yc)
    elif form == "code":
        local_sum = _SupConCodeSum.apply(zc, yc, anchor_pos, bounds, float(temperature), block_size)
    else:
        local_sum = _supcon_pairs_sum(zc, yc, anchor_pos, bounds, float(temperature), block_size)

    if is_distributed():
        local_sum = gather_with_grad(local_sum.reshape(1)).sum()
    return local_sum / n_terms
