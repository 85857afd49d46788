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


def test_scoring_processes_decode_hover_chunks_as_inline(maps):
    """The PQ family's scorer post-processes hover chunks in its worker processes with the same
    result as in the calling process, and hands the decoded maps back in order."""
    from harness.data.base import LabeledArrays
    from harness.heads.readers import decoded
    from plugins.metrics.pq import PanopticQuality

    sub = maps[2:8]
    nuclei = np.stack([n for n, _, _ in sub])
    hv = np.stack([h for _, h, _ in sub])
    types = np.stack([t for _, _, t in sub])
    truth, truth_inst = HoverMaps(nuclei, hv, types, NUM_CLASSES).decode()  # scores 1 exactly
    arrays = LabeledArrays(images=np.zeros(truth.shape + (3,), np.uint8), instances=truth_inst,
                           classes=truth, ids=[str(i) for i in range(len(sub))],
                           tissues=["a", "b"] * 3, groups=["g"] * len(sub))
    names = [f"c{i}" for i in range(1, NUM_CLASSES)]
    results = []
    for workers in (0, 2):
        scorer = PanopticQuality().scorer(arrays, np.arange(len(sub)), names, workers)
        parts = [HoverMaps(nuclei[i:i + 2], hv[i:i + 2], types[i:i + 2], NUM_CLASSES)
                 for i in range(0, len(sub), 2)]
        for part in parts:
            scorer.add(part)
        metrics = scorer.finish()
        results.append((metrics, decoded(scorer, parts)))
    (m0, d0), (m2, d2) = results
    assert m0 == m2 and m0["instance"]["bpq"] > 0.999 and m0["instance"]["mpq"] > 0.999
    assert all(np.array_equal(d0[k], d2[k]) for k in ("classes", "instances"))
    assert np.array_equal(canonical(d0["instances"][0]), canonical(arrays.instances[0]))
