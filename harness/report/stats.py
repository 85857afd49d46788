"""Statistics of the report: mean, sample std, t-based 95% confidence interval, and paired
comparisons of a method against a baseline on identical (fold, seed) pairs.

Paired tests (two-sided), both on the differences d_i = method_i - baseline_i:

* **paired bootstrap**: resample the n differences with replacement (``n_boot`` times, fixed
  seed); p = fraction of resampled means at least as far from the observed mean as the observed
  mean is from 0, after centring the bootstrap distribution on 0 (the null of no difference);
  the 95% interval of the mean difference is the percentile interval.
* **Wilcoxon signed-rank** (scipy, exact for small n; zero differences dropped). With n pairs its
  smallest possible two-sided p is 2 / 2**n (0.25 for 3 folds), so it cannot reach 0.05 below
  n = 6; it is reported beside the bootstrap, which is the one that marks the table.

p-values of a family (every method x column against the baseline) are Holm-corrected.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

BOOTSTRAP_SAMPLES = 10_000
BOOTSTRAP_SEED = 0


def clean(values: Sequence[float | None]) -> list[float]:
    """Finite values only (None/NaN mark a metric that could not be computed)."""
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (ddof = 1; 0.0 for a single value)."""
    vals = clean(values)
    if not vals:
        return None, None
    mean = sum(vals) / len(vals)
    if len(vals) == 1:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1))


def t_interval(values: Sequence[float | None], level: float = 0.95) -> tuple[float | None, float | None]:
    """Confidence interval of the mean: mean ± t_{(1+level)/2, n-1} · s / sqrt(n); None for n < 2."""
    from scipy import stats

    vals = clean(values)
    if len(vals) < 2:
        return None, None
    mean, std = mean_std(vals)
    half = float(stats.t.ppf((1 + level) / 2, len(vals) - 1)) * std / math.sqrt(len(vals))
    return mean - half, mean + half


def paired_bootstrap(diffs: Sequence[float], n_boot: int = BOOTSTRAP_SAMPLES,
                     seed: int = BOOTSTRAP_SEED) -> tuple[float | None, list[float] | None]:
    """Two-sided p-value and 95% percentile interval of the mean paired difference."""
    d = np.asarray(clean(diffs), dtype=np.float64)
    if d.size < 2:
        return None, None
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, d.size, size=(n_boot, d.size))].mean(axis=1)
    observed = d.mean()
    extreme = np.abs(means - observed) >= abs(observed) - 1e-15
    p = float((extreme.sum() + 1) / (n_boot + 1))
    lo, hi = np.percentile(means, [2.5, 97.5])
    return min(1.0, p), [float(lo), float(hi)]


def wilcoxon(diffs: Sequence[float]) -> float | None:
    """Two-sided Wilcoxon signed-rank p-value; None when fewer than 2 non-zero differences."""
    from scipy import stats

    d = [v for v in clean(diffs) if v != 0.0]
    if len(d) < 2:
        return None if len(clean(diffs)) < 2 else 1.0
    return float(stats.wilcoxon(d, zero_method="wilcox", alternative="two-sided").pvalue)


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm-Bonferroni adjusted p-values (step-down, monotone); None entries stay None and do
    not count in the family size."""
    idx = [i for i, p in enumerate(pvalues) if p is not None]
    order = sorted(idx, key=lambda i: pvalues[i])
    m = len(order)
    adjusted: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * float(pvalues[i])))
        adjusted[i] = running
    return adjusted


def paired_diffs(method: dict[tuple, float | None], baseline: dict[tuple, float | None]) -> list[float]:
    """Differences on the (fold, seed) keys present, and finite, on both sides."""
    keys = sorted(set(method) & set(baseline))
    return [float(method[k]) - float(baseline[k]) for k in keys
            if clean([method[k]]) and clean([baseline[k]])]
