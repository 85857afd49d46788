"""HoVer-Net's HV targets (harness/heads/hover_targets.py) against hand-computed maps, and the
fine-tuning samples that make them after augmentation."""

from __future__ import annotations

import numpy as np
import torch

from harness.data.base import LabeledArrays
from harness.heads.hover_targets import hv_maps
from harness.heads.train import HoverSamples


def test_one_instance_by_hand():
    # a 6x6 square at rows 2..7, cols 3..8: centre of mass (4.5, 5.5) -> rounded half up to
    # (5, 6); offsets col + 1 - 6 = -2..3, row + 1 - 5 = -2..3 (HoVer-Net's grid starts at 1)
    inst = np.zeros((12, 12), np.int32)
    inst[2:8, 3:9] = 7
    hv = hv_maps(inst)
    x = np.array([-2, -1, 0, 1, 2, 3], np.float32)
    x_norm = np.where(x < 0, x / 2, x / 3)
    assert np.array_equal(hv[0, 2:8, 3:9], np.tile(x_norm, (6, 1)))
    assert np.array_equal(hv[1, 2:8, 3:9], np.tile(x_norm[:, None], (1, 6)))
    assert not hv[:, inst == 0].any()


def test_border_instance_and_sides_normalised_apart():
    # a 3x12 bar cut by the left border: cols 0..11 -> com col 5.5 -> 6; offsets
    # col + 1 - 6 = -5..6; negative side / 5, positive side / 6
    inst = np.zeros((10, 20), np.int32)
    inst[0:3, 0:12] = 1
    hv = hv_maps(inst)
    x = np.arange(12) + 1 - 6.0
    assert np.allclose(hv[0, 1, 0:12], np.where(x < 0, x / 5, x / 6))
    # rows 0..2 -> com 1: offsets row + 1 - 1 = 0, 1, 2 (no negative side) -> 0, 0.5, 1
    assert np.array_equal(hv[1, 0:3, 4], np.array([0, 0.5, 1], np.float32))
    assert hv.min() == -1 and hv.max() == 1


def test_small_instances_and_split_ids():
    inst = np.zeros((16, 16), np.int32)
    inst[0:5, 0:5] = 1     # 25 px < 30: no HV (HoVer-Net's remove_small_objects(min_size=30))
    inst[8:14, 8:14] = 2   # 36 px
    inst[8:14, 0:6] = 3    # id 3 in two 4-connected pieces: each is its own instance
    inst[0:6, 10:16] = 3
    hv = hv_maps(inst)
    assert not hv[:, 0:5, 0:5].any()
    assert np.array_equal(hv[:, 8:14, 0:6], hv[:, 8:14, 8:14])  # same shape, own centre
    assert np.array_equal(hv[:, 0:6, 10:16], hv[:, 8:14, 8:14])
    assert hv_maps(inst, min_area=0)[:, 0:5, 0:5].any()


def test_targets_follow_the_augmented_instances():
    rng = np.random.default_rng(0)
    inst = np.zeros((1, 32, 32), np.int32)
    inst[0, 3:12, 5:20] = 1
    inst[0, 12:25, 10:18] = 2
    arrays = LabeledArrays(images=rng.integers(0, 255, (1, 32, 32, 3), dtype=np.uint8),
                           instances=inst, classes=(inst > 0).astype(np.uint8), ids=["a"],
                           tissues=["t"], groups=["g"])
    flip = lambda image, mask, ins: (image.flip(-1), mask.flip(-1), ins.flip(-1))  # noqa: E731
    image, classes, hv = HoverSamples(arrays, ["a"], flip)[0]
    expected = hv_maps(inst[0][:, ::-1])
    assert torch.equal(hv, torch.from_numpy(expected))
    assert torch.equal(classes, torch.from_numpy((inst[0][:, ::-1] > 0).astype(np.int64)))
    assert not np.array_equal(expected, hv_maps(inst[0])[:, :, ::-1])  # targets are not flipped maps
