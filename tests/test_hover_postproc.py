"""The ``hover`` head's post-processing equals HoVer-Net's.

``tests/data/hover_postproc_expected.npz`` holds what vqdang/hover_net's
``models/hovernet/post_proc.py:process(pred_map, nr_types=6)`` returned (run once outside this
repository, its code not part of it) for the 110 maps of ``tests/hover_maps.py``: 256x256 maps
from synthetic instance maps with touching (crowded), tiny (1-20 px) and border nuclei plus
noise; two maps without nuclei. Instance maps are compared after renumbering in raster order
(:func:`hover_maps.canonical`), and each instance's class (``inst_info_dict[id]['type']``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from harness.heads.hover_post import HoverMaps, instance_classes, instances_from_maps
from harness.heads.hover_targets import hv_maps
from hover_maps import NUM_CLASSES, canonical, digest, make_maps

EXPECTED = Path(__file__).parent / "data" / "hover_postproc_expected.npz"


@pytest.fixture(scope="module")
def maps():
    return make_maps()


def test_equal_to_hovernet_on_110_maps(maps):
    expected = np.load(EXPECTED)
    assert str(expected["digest"]) == digest(maps), \
        "tests/hover_maps.py makes other maps than those the expected outputs were made from"
    offsets = expected["offsets"]
    equal, n_instances = 0, 0
    for i, (nuclei, hv, types) in enumerate(maps):
        inst = instances_from_maps(nuclei, hv[0], hv[1])
        can = canonical(inst)
        assert np.array_equal(can, expected["instances"][i]), f"map {i}: instances differ"
        classes = instance_classes(inst, types, NUM_CLASSES)
        first = np.unique(can.ravel(), return_index=True)[1][1:]  # each instance's first pixel
        ours = classes[inst.ravel()[first]]
        assert np.array_equal(ours, expected["types"][offsets[i]:offsets[i + 1]]), \
            f"map {i}: instance classes differ"
        equal += 1
        n_instances += len(first)
    assert equal == len(maps) >= 100
    assert n_instances > 1000  # the maps hold real work for the watershed


def test_class_rule_majority_background_excluded_ties_low():
    inst = np.array([[1, 1, 1, 1, 2, 2, 2, 3, 3]])
    types = np.array([[0, 0, 0, 4, 2, 3, 0, 0, 0]], np.uint8)
    # 1: background 3 px, class 4 1 px -> 4; 2: classes 2 and 3 tie -> 2; 3: background only -> 0
    assert instance_classes(inst, types, 5).tolist() == [0, 4, 2, 0]


def test_decode_drops_background_only_instances():
    nuclei = np.zeros((1, 32, 32), np.float32)
    nuclei[0, 4:14, 4:14] = nuclei[0, 18:28, 18:28] = 1.0
    types = np.zeros((1, 32, 32), np.uint8)
    types[0, 4:14, 4:14] = 3
    hv = hv_maps(np.where(nuclei[0] > 0, 1 + (np.arange(32) > 16)[:, None], 0))[None]
    classes, instances = HoverMaps(nuclei, hv, types, 6).decode()
    assert set(np.unique(classes)) == {0, 3}
    assert np.array_equal(instances > 0, classes > 0)
