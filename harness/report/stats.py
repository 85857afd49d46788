"""Statistics of the report: mean, sample std, t-based 95% confidence interval, and paired
comparisons of a method against a baseline on identical (fold, seed) pairs.

Paired comparisons (two-sided), all on the differences d_i = method_i - baseline_i:

* **sign-flip (paired permutation) test**, the one that marks the table: under the null of no
  difference each d_i is as likely to be +|d_i| as -|d_i|; p = the fraction of the 2^n sign
  patterns whose |mean| is at least the observed |mean|. Exact (every pattern) up to
  :data:`EXACT_MAX_PAIRS` pairs, Monte Carlo beyond (:data:`MONTE_CARLO_SAMPLES` patterns,
  seed :data:`MONTE_CARLO_SEED`, p = (hits + 1) / (samples + 1)). With n pairs no pattern
  set can give less than 2 / 2^n (:func:`smallest_p`): 0.25 for the thesis's 3 folds, so no
  3-fold table can show a significant difference, whatever the numbers.
* **Holm** step-down correction of the sign-flip p-values over every compared row and column.
* **paired t-interval** of the mean difference (scipy.stats.t), and the paired **bootstrap**
  percentile interval (descriptive; its p-value is kept in the JSON but marks nothing: with 3
  positive differences every resample is positive, so it says p = 0.0001 where no test can
  go below 0.25).
* **Wilcoxon signed-rank** (scipy, exact for small n), beside the sign-flip test.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

BOOTSTRAP_SAMPLES = 10_000
BOOTSTRAP_SEED = 0
#: Sign-flip test: exact enumeration of all 2^n patterns up to this many pairs (2^20 sums).
EXACT_MAX_PAIRS = 20
MONTE_CARLO_SAMPLES = 100_000
MONTE_CARLO_SEED = 0
#: The significance level of the table's marks (after Holm).
ALPHA = 0.05


def clean(values: Sequence[float | None]) -> list[float]:
    """Finite values only (None/NaN mark a metric that could not be computed)."""
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (ddof = 1; None for a single value: undefined)."""
    vals = clean(values)
    if not vals:
        return None, None
    mean = sum(vals) / len(vals)
    if len(vals) == 1:
        return mean, None  # a sample std needs two values
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


def smallest_p(n_pairs: int) -> float | None:
    """The smallest two-sided p any paired sign-flip test can reach with ``n_pairs`` pairs:
    2 / 2^n (the all-positive and all-negative patterns); None without pairs."""
    return None if n_pairs < 1 else min(1.0, 2.0 / 2.0 ** n_pairs)


def pairs_needed(alpha: float = ALPHA, family: int = 1) -> int:
    """The fewest pairs for which the smallest p, times the Holm factor ``family`` of the
    first-ranked comparison, can be below ``alpha``."""
    n = 1
    while family * 2.0 / 2.0 ** n >= alpha:
        n += 1
    return n


def sign_flip(diffs: Sequence[float], exact_max: int = EXACT_MAX_PAIRS,
              samples: int = MONTE_CARLO_SAMPLES, seed: int = MONTE_CARLO_SEED
              ) -> tuple[float | None, str | None]:
    """Two-sided paired permutation (sign-flip) p-value of the mean difference and how it was
    computed (``"exact"``: all 2^n patterns; ``"monte carlo"``); ``(None, None)`` without
    pairs. A zero difference flips to itself, so it leaves p as if it were dropped."""
    d = np.asarray(clean(diffs), dtype=np.float64)
    if d.size == 0:
        return None, None
    observed = abs(d.sum())
    tol = 1e-12 * max(1.0, float(np.abs(d).sum()))  # sums equal up to float rounding count
    if d.size <= exact_max:
        sums = np.zeros(1)
        for v in d:  # every sign pattern's sum: 2^n values, built by doubling
            sums = np.concatenate([sums + v, sums - v])
        return float(np.mean(np.abs(sums) >= observed - tol)), "exact"
    rng = np.random.default_rng(seed)
    hits = 0
    for start in range(0, samples, 10_000):
        signs = rng.choice((-1.0, 1.0), size=(min(10_000, samples - start), d.size))
        hits += int((np.abs(signs @ d) >= observed - tol).sum())
    return float((hits + 1) / (samples + 1)), "monte carlo"


def paired_t_interval(diffs: Sequence[float], level: float = 0.95) -> list[float] | None:
    """The t-interval of the mean paired difference (None for fewer than 2 pairs)."""
    lo, hi = t_interval(diffs, level)
    return None if lo is None else [lo, hi]


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
