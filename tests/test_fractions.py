"""Label fractions: ceil(p * n) images per training group, nested (1% within 10% within 100%),
deterministic by seed, stratified by tissue, in the dataset's own order, groups independent."""

from __future__ import annotations

import math
from collections import Counter
from fractions import Fraction

import pytest

from harness.data.fractions import fraction_count, select_fraction, stratified_order

LADDER = [0.01, 0.05, 0.1, 0.25, 0.5, 1.0]


def make_group(prefix: str, sizes: dict[str, int], interleave: bool = True):
    """Ids of one group with ``sizes`` images per tissue, and the id -> tissue map. With
    ``interleave`` the tissues are mixed in a fixed (non-sorted) order, as in a real fold."""
    ids, tissues = [], {}
    per_tissue = [[f"{prefix}/{t}{i:05d}" for i in range(n)] for t, n in sizes.items()]
    for t, members in zip(sizes, per_tissue):
        for sid in members:
            tissues[sid] = t
    if interleave:
        # deterministic interleaving: round-robin over tissues while they last
        queues = [list(m) for m in per_tissue]
        while any(queues):
            for q in queues:
                if q:
                    ids.append(q.pop(0))
    else:
        ids = [sid for members in per_tissue for sid in members]
    return ids, tissues


# Two training groups shaped like PanNuke folds 1 and 2 (2656 and 2523 images, several tissues
# of very different size).
FOLD1, T1 = make_group("fold1", {"Breast": 700, "Colon": 520, "Adrenal": 230, "Lung": 96,
                                 "Kidney": 110, "Skin": 1000})
FOLD2, T2 = make_group("fold2", {"Breast": 680, "Colon": 430, "Adrenal": 260, "Lung": 120,
                                 "Kidney": 93, "Skin": 940})
TRAIN = {"fold1": FOLD1, "fold2": FOLD2}
TISSUES = {**T1, **T2}


def test_groups_have_pannuke_sizes():
    assert len(FOLD1) == 2656 and len(FOLD2) == 2523


# --- counts --------------------------------------------------------------------------------------

@pytest.mark.parametrize("p,n,expected", [
    (0.01, 2656, 27), (0.01, 2523, 26),  # the thesis's 1% of PanNuke folds 1+2
    (0.1, 40, 4),                         # 0.1 * 40 = 4.000000000000001 must not become 5
    (0.1, 2656, 266), (0.1, 2523, 253),
    (0.01, 40, 1), (0.01, 1, 1),          # never zero for a non-empty group
    (0.3, 10, 3), (0.7, 10, 7), (0.07, 100, 7), (0.5, 3, 2),
    (1.0, 40, 40), (0.25, 0, 0),
])
def test_fraction_count(p, n, expected):
    assert fraction_count(p, n) == expected


@pytest.mark.parametrize("p", [0.01, 0.03, 0.05, 0.07, 0.1, 0.15, 0.2, 0.25, 0.3, 0.33, 0.5,
                               0.6, 0.7, 0.9, 1.0])
def test_fraction_count_is_exact_ceil(p):
    """ceil(p * n) with p read as the decimal the user wrote, for every n up to 3000."""
    exact = Fraction(str(p))
    for n in range(0, 3001):
        assert fraction_count(p, n) == math.ceil(exact * n), (p, n)


def test_selected_counts_per_group():
    for p in LADDER:
        chosen = select_fraction(TRAIN, TISSUES, p, seed=0)
        assert set(chosen) == {"fold1", "fold2"}
        assert len(chosen["fold1"]) == fraction_count(p, 2656)
        assert len(chosen["fold2"]) == fraction_count(p, 2523)
    one = select_fraction(TRAIN, TISSUES, 0.01, seed=0)
    assert (len(one["fold1"]), len(one["fold2"])) == (27, 26)


def test_small_group_counts():
    ids, tissues = make_group("g", {"A": 14, "B": 13, "C": 13})
    assert len(ids) == 40
    assert len(select_fraction({"g": ids}, tissues, 0.1, seed=3)["g"]) == 4
    assert len(select_fraction({"g": ids}, tissues, 0.01, seed=3)["g"]) == 1


def test_no_duplicates_and_only_group_members():
    for p in (0.01, 0.1, 0.5):
        chosen = select_fraction(TRAIN, TISSUES, p, seed=1)
        for group, ids in chosen.items():
            assert len(set(ids)) == len(ids)
            assert set(ids) <= set(TRAIN[group])


# --- nesting and determinism ----------------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 1, 2, 7, 12345])
def test_nested(seed):
    selections = [select_fraction(TRAIN, TISSUES, p, seed) for p in LADDER]
    for group in TRAIN:
        for smaller, larger in zip(selections, selections[1:]):
            assert set(smaller[group]) <= set(larger[group]), group
        assert set(selections[0][group]) < set(selections[2][group])  # 1% strictly within 10%


def test_deterministic_by_seed():
    a = select_fraction(TRAIN, TISSUES, 0.1, seed=5)
    b = select_fraction({g: list(ids) for g, ids in TRAIN.items()}, dict(TISSUES), 0.1, seed=5)
    assert a == b
    c = select_fraction(TRAIN, TISSUES, 0.1, seed=6)
    for group in TRAIN:
        assert set(a[group]) != set(c[group])
    # many seeds give many different subsets
    subsets = {tuple(select_fraction(TRAIN, TISSUES, 0.01, seed=s)["fold1"]) for s in range(10)}
    assert len(subsets) == 10


def test_stratified_order_is_a_seeded_permutation():
    order = stratified_order(FOLD1, TISSUES, seed=0, group="fold1")
    assert sorted(order) == sorted(FOLD1)
    assert order == stratified_order(FOLD1, TISSUES, seed=0, group="fold1")
    assert order != stratified_order(FOLD1, TISSUES, seed=1, group="fold1")
    assert order != FOLD1  # shuffled


# --- stratification ---------------------------------------------------------------------------------

UNEQUAL = {"Breast": 60, "Colon": 30, "Lung": 10}


@pytest.mark.parametrize("sizes", [UNEQUAL, {"Breast": 70, "Colon": 23, "Lung": 7},
                                   {"Breast": 1200, "Colon": 900, "Lung": 556}])
@pytest.mark.parametrize("interleave", [True, False])
def test_stratified_by_tissue(sizes, interleave):
    """Each tissue's share of a 10% subset is within one image of proportional."""
    ids, tissues = make_group("g", sizes, interleave=interleave)
    n = len(ids)
    for seed in range(40):
        chosen = select_fraction({"g": ids}, tissues, 0.1, seed)["g"]
        m = len(chosen)
        assert m == fraction_count(0.1, n)
        counts = Counter(tissues[s] for s in chosen)
        for tissue, n_t in sizes.items():
            assert abs(counts[tissue] - m * n_t / n) <= 1, (seed, tissue, counts)


def test_stratified_in_every_group_of_pannuke_shape():
    for seed in range(5):
        chosen = select_fraction(TRAIN, TISSUES, 0.1, seed)
        for group, ids in TRAIN.items():
            sizes = Counter(TISSUES[s] for s in ids)
            counts = Counter(TISSUES[s] for s in chosen[group])
            m = len(chosen[group])
            for tissue, n_t in sizes.items():
                # Each tissue's count in a prefix is within one image of its own quantile, so it
                # is off proportional by less than 1 + (tissues - 2) * its share.
                share = n_t / len(ids)
                bound = 1 + (len(sizes) - 2) * share
                assert abs(counts[tissue] - m * share) < bound, (group, tissue)


def test_every_prefix_is_close_to_proportional():
    """The fixed order behind all fractions interleaves tissues: with 3 tissues every prefix is
    within 2 images of each tissue's proportional share (so any fraction is stratified)."""
    ids, tissues = make_group("g", UNEQUAL)
    n = len(ids)
    for seed in range(20):
        counts: Counter = Counter()
        for m, sid in enumerate(stratified_order(ids, tissues, seed, "g"), 1):
            counts[tissues[sid]] += 1
            for tissue, n_t in UNEQUAL.items():
                assert abs(counts[tissue] - m * n_t / n) < 2, (seed, m, tissue)


def test_every_tissue_kept_when_fraction_allows():
    ids, tissues = make_group("g", UNEQUAL)
    for seed in range(20):
        chosen = select_fraction({"g": ids}, tissues, 0.1, seed)["g"]
        assert {tissues[s] for s in chosen} == set(UNEQUAL)


def test_single_tissue_group():
    ids, tissues = make_group("g", {"Breast": 50})
    chosen = select_fraction({"g": ids}, tissues, 0.2, seed=0)["g"]
    assert len(chosen) == 10 and set(chosen) <= set(ids)


# --- order ------------------------------------------------------------------------------------------

def test_full_fraction_returns_everything_in_order():
    for seed in (0, 1):
        chosen = select_fraction(TRAIN, TISSUES, 1.0, seed)
        assert chosen == {"fold1": FOLD1, "fold2": FOLD2}
        assert chosen["fold1"] is not FOLD1  # a copy, not the caller's list


@pytest.mark.parametrize("p", [0.01, 0.1, 0.5, 0.99])
def test_selected_ids_keep_dataset_order(p):
    chosen = select_fraction(TRAIN, TISSUES, p, seed=4)
    for group, ids in TRAIN.items():
        keep = set(chosen[group])
        assert chosen[group] == [sid for sid in ids if sid in keep]
    # also for a group whose ids are not sorted
    shuffled = list(reversed(FOLD1))
    picked = select_fraction({"fold1": shuffled}, TISSUES, p, seed=4)["fold1"]
    keep = set(picked)
    assert picked == [sid for sid in shuffled if sid in keep]


# --- groups independent ----------------------------------------------------------------------------

def test_groups_drawn_independently():
    # a group's subset does not depend on which other groups are present, or their order
    alone = select_fraction({"fold1": FOLD1}, TISSUES, 0.1, seed=2)["fold1"]
    together = select_fraction(TRAIN, TISSUES, 0.1, seed=2)
    reordered = select_fraction({"fold2": FOLD2, "fold1": FOLD1}, TISSUES, 0.1, seed=2)
    assert together["fold1"] == alone == reordered["fold1"]
    assert together["fold2"] == reordered["fold2"]


def test_identical_groups_get_different_draws():
    """Two groups of the same shape are not drawn with the same random stream."""
    sizes = {"A": 50, "B": 30, "C": 20}
    a_ids, a_t = make_group("a", sizes)
    b_ids, b_t = make_group("b", sizes)
    chosen = select_fraction({"a": a_ids, "b": b_ids}, {**a_t, **b_t}, 0.1, seed=0)
    pos_a = [a_ids.index(s) for s in chosen["a"]]
    pos_b = [b_ids.index(s) for s in chosen["b"]]
    assert len(pos_a) == len(pos_b) == 10
    assert pos_a != pos_b
