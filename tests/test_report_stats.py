"""Small-n statistics of the report: the exact sign-flip test, its smallest attainable p, Holm,
the paired t-interval, no significance mark from three pairs, and n = 1 shown without a spread."""

from __future__ import annotations

import itertools
import math

import pytest

from harness.report import stats
from harness.report.build import build_report
from harness.report.tables import comparison_table, main_table, to_markdown
from test_report import RUN_INFO, grid


def test_sign_flip_exact_p_of_six_pairs_equals_a_hand_enumeration():
    d = [0.06, 0.05, 0.04, 0.03, 0.02, -0.01]  # in hundredths: 6 5 4 3 2 -1, observed sum 19
    # By hand: flipping a subset S of the all-positive pattern (total 21) gives 21 - 2 sum(S);
    # |21 - 2 s| >= 19 iff s <= 1 or s >= 20: S = {}, {1} and their complements -> 4 of 64.
    p, how = stats.sign_flip(d)
    assert how == "exact" and p == pytest.approx(4 / 64)
    # the same count by listing every pattern
    observed = abs(sum(d))
    extreme = sum(1 for signs in itertools.product((1, -1), repeat=6)
                  if abs(sum(s * v for s, v in zip(signs, d))) >= observed - 1e-12)
    assert extreme == 4
    assert stats.sign_flip([0.1, -0.1, 0.2, -0.2])[0] == pytest.approx(1.0)
    assert stats.sign_flip([0.0, 0.3])[0] == pytest.approx(1.0)  # a zero flips to itself: n = 1
    assert stats.sign_flip([]) == (None, None)


def test_smallest_p_and_pairs_needed():
    assert stats.smallest_p(3) == pytest.approx(0.25) and stats.smallest_p(6) == pytest.approx(1 / 32)
    assert stats.smallest_p(0) is None
    assert stats.pairs_needed(0.05) == 6  # 2/2^5 = 0.0625, 2/2^6 = 0.031
    assert stats.pairs_needed(0.05, family=4) == 8  # Holm's first step: 4 * 2/2^8 = 0.031
    for n in range(1, 9):  # the all-positive pattern reaches exactly the smallest p
        assert stats.sign_flip([0.1 * (i + 1) for i in range(n)])[0] == pytest.approx(stats.smallest_p(n))


def test_sign_flip_monte_carlo_beyond_the_exact_limit_is_seeded():
    d = [0.01 * ((-1) ** i) * (i + 1) for i in range(8)]
    exact, _ = stats.sign_flip(d)
    mc, how = stats.sign_flip(d, exact_max=4, samples=20_000)
    assert how == "monte carlo" and mc == stats.sign_flip(d, exact_max=4, samples=20_000)[0]
    assert abs(mc - exact) < 4 * math.sqrt(exact * (1 - exact) / 20_000) + 1e-4


def test_holm_against_a_hand_computed_case():
    # sorted 0.005, 0.01, 0.03, 0.04 -> x4 = 0.02, x3 = 0.03, x2 = 0.06, x1 = 0.04 -> monotone 0.06
    assert stats.holm([0.01, 0.04, 0.03, 0.005, None]) == pytest.approx([0.03, 0.06, 0.06, 0.02, None])


def test_paired_t_interval_of_the_mean_difference():
    lo, hi = stats.paired_t_interval([0.1, 0.2, 0.3])
    half = 4.302652729911275 * 0.1 / math.sqrt(3)  # t_{0.975, 2} * s / sqrt(n)
    assert lo == pytest.approx(0.2 - half) and hi == pytest.approx(0.2 + half)
    assert stats.paired_t_interval([0.1]) is None


def test_three_pairs_never_mark_a_difference_and_the_report_says_why():
    records = grid({"scratch": [0.10, 0.11, 0.12], "better": [0.50, 0.51, 0.52]})
    report = build_report(records, [RUN_INFO], baseline="scratch").dump()
    (c,) = report["comparisons"]
    assert c["p_signflip"] == pytest.approx(0.25) and not c["significant"]
    assert c["p_bootstrap"] < 0.001  # what the old mark came from: every resample is positive
    assert report["power"]["reachable"] is False and report["power"]["pairs_needed"] == 6
    table = main_table(report)
    assert not any("▲" in cell or "▼" in cell for row in table.rows for cell in row)
    main = to_markdown(table)
    assert "2/2^3 = 0.25" in main and "no difference can be marked significant" in main
    assert "add seeds or folds (6 pairs" in to_markdown(comparison_table(report))


def test_single_value_shows_n1_without_a_spread():
    report = build_report(grid({"scratch": [0.3], "better": [0.4]}), [RUN_INFO]).dump()
    table = main_table(report)
    assert table.rows[0][1] == "0.3000 (n=1)" and not any("±" in c for row in table.rows for c in row)
    assert any("n = 1: a single run, no spread" in note for note in table.notes)
    assert report["rows"][0]["std"] is None
