"""Label fractions: nested, stratified by tissue type, deterministic by seed.

For each training group (e.g. each training fold) with ``n`` images the fraction ``p`` keeps
``ceil(p * n)`` images (the thesis's rule: 1% of PanNuke folds 1+2 is 27 + 26 images). The kept
images are a prefix of one fixed, seeded order of the group, so a smaller fraction is always
inside a larger one (1% within 10%). The order interleaves tissues in proportion to their size:
the k-th image of tissue t (shuffled within the tissue) gets the score (k + u) / n_t with
u ~ U(0, 1), and images are sorted by score, so every prefix holds each tissue in proportion.
"""

from __future__ import annotations

import math
import zlib
from typing import Mapping, Sequence

import numpy as np


def fraction_count(fraction: float, n: int) -> int:
    # round() guards against 0.1 * 40 = 4.000000000000001 becoming 5
    return min(n, math.ceil(round(fraction * n, 9)))


def stratified_order(ids: Sequence[str], tissues: Mapping[str, str], seed: int,
                     group: str = "") -> list[str]:
    rng = np.random.default_rng([seed, zlib.crc32(group.encode())])
    by_tissue: dict[str, list[str]] = {}
    for sid in ids:
        by_tissue.setdefault(tissues[sid], []).append(sid)
    scored: list[tuple[float, str]] = []
    for tissue in sorted(by_tissue):
        members = by_tissue[tissue]
        perm = rng.permutation(len(members))
        jitter = rng.random(len(members))
        n_t = len(members)
        for k, idx in enumerate(perm):
            scored.append(((k + jitter[k]) / n_t, members[idx]))
    scored.sort()
    return [sid for _, sid in scored]


def select_fraction(train: Mapping[str, Sequence[str]], tissues: Mapping[str, str],
                    fraction: float, seed: int) -> dict[str, list[str]]:
    """The labeled subset of each training group, in the dataset's own order."""
    chosen: dict[str, list[str]] = {}
    for group, ids in train.items():
        if fraction >= 1.0:
            chosen[group] = list(ids)
            continue
        keep = set(stratified_order(ids, tissues, seed, group)[:fraction_count(fraction, len(ids))])
        chosen[group] = [sid for sid in ids if sid in keep]
    return chosen
