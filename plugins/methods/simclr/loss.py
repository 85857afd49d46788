"""SimCLR's NT-Xent loss (thesis Eq. 3.1), a :func:`..supcon.supcon_loss` with one label per
image."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from harness.engine.distributed import is_distributed, rank, world_size

from ..supcon import _supcon_sorted, supcon_loss

__all__ = ["nt_xent"]


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """SimCLR NT-Xent (thesis Eq. 3.1) averaged over all 2B anchors.

    ``z1`` and ``z2`` are (B, D) projections of the two views of the same B images (row b of
    ``z1`` and row b of ``z2`` are a positive pair). With ``z = [z1; z2]`` L2-normalised,

        l_i = -log( s_ij / sum_{k != i} s_ik ),   loss = mean over the 2B anchors,

    where ``j`` is the other view of ``i``'s image. This is ``solo:solo/losses/simclr.py``
    ``simclr_loss_func`` (copied in ``pricon:src/loss.py``) with ``indexes = arange(B).repeat(2)``,
    i.e. :func:`supcon_loss` with one label per image (every anchor has exactly one positive, so
    the code and pair forms coincide). Distributed: the negatives span the global batch (see the
    module docstring). PRICon's image term is this loss at ``temperature=0.1``.
    """
    if z1.shape != z2.shape or z1.dim() != 2:
        raise ValueError(f"nt_xent expects two (B, D) tensors of equal shape, got "
                         f"{tuple(z1.shape)} and {tuple(z2.shape)}")
    b = z1.shape[0]
    if not is_distributed() and b > 0 and temperature > 0:
        with torch.autocast(device_type=z1.device.type, enabled=False):
            return _nt_xent_local(z1, z2, float(temperature))
    # ids unique across processes without knowing the other processes' batch sizes
    ids = rank() + world_size() * torch.arange(b, device=z1.device)
    return supcon_loss(torch.cat([z1, z2]), torch.cat([ids, ids]), temperature=temperature, form="code")


def _nt_xent_local(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """:func:`supcon_loss` of ``[z1; z2]`` with labels ``[0..B-1, 0..B-1]`` in one process,
    the same operations on the same values, but the label structure built from ``B`` (label b
    at rows b and B + b) instead of ``unique``/``bincount``/``tolist`` on the device: no host
    sync in a SimCLR step."""
    features = torch.cat([z1, z2])
    if features.dtype in (torch.float16, torch.bfloat16):
        features = features.float()
    z = F.normalize(features, dim=1)
    b, device = z1.shape[0], z.device
    perm = torch.arange(2 * b, device=device).view(2, b).t().reshape(-1)  # [0, B, 1, B+1, ...]
    labels = torch.arange(b, device=device).view(b, 1).expand(b, 2).reshape(-1)
    return _supcon_sorted(z, z[perm], labels, torch.arange(2 * b, device=device),
                          list(range(0, 2 * b + 1, 2)), 2 * b, temperature, "code", None)
