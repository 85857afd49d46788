"""Binary foreground Dice (TNBC)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from harness.metrics import dice_per_image, evaluate_dice


def test_hand_computed_dice() -> None:
    pred = np.zeros((1, 4, 4), np.uint8)
    true = np.zeros((1, 4, 4), np.uint8)
    pred[0, 0, :4] = 1  # 4 px
    true[0, 0, 1:4] = 1
    true[0, 1, :3] = 2  # 6 px, any class > 0 is foreground; overlap 3 px
    assert dice_per_image(pred, true) == pytest.approx([2 * 3 / (4 + 6)])


def test_edge_cases() -> None:
    z = np.zeros((4, 4), np.uint8)
    o = np.ones((4, 4), np.uint8)
    assert dice_per_image(z, z).tolist() == [1.0]  # both empty
    assert dice_per_image(o, z).tolist() == [0.0]
    assert dice_per_image(z, o).tolist() == [0.0]
    assert dice_per_image(o, 2 * o).tolist() == [1.0]


def test_evaluate_dice_is_a_per_image_mean() -> None:
    pred = np.zeros((3, 4, 4), np.uint8)
    true = np.zeros((3, 4, 4), np.uint8)
    pred[0] = true[0] = 1  # 1.0
    pred[1, :2] = 1
    true[1] = 1  # 2*8/(8+16) = 2/3
    # image 2 empty on both sides: 1.0
    res = evaluate_dice(pred, true)
    assert res["per_image"] == pytest.approx([1.0, 2 / 3, 1.0])
    assert res["dice"] == pytest.approx((2 + 2 / 3) / 3)
    assert all(isinstance(v, float) for v in res["per_image"])


def test_dice_validation_and_empty_set() -> None:
    with pytest.raises(ValueError):
        dice_per_image(np.zeros((2, 4, 4)), np.zeros((2, 4, 5)))
    with pytest.raises(ValueError):
        dice_per_image(np.zeros(4), np.zeros(4))
    assert math.isnan(evaluate_dice(np.zeros((0, 4, 4)), np.zeros((0, 4, 4)))["dice"])
