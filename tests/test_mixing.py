"""Mixing masks of the semi-supervised baselines (CutMix box, ClassMix classes) and the mixing of
image, pseudo-label and confidence by one mask (thesis §A.2; ReCo's ``train_semisup.py``)."""

from __future__ import annotations

import itertools

import pytest
import torch

from harness_builtin.methods.classmix import ClassMix
from harness_builtin.methods.cutmix import CutMix
from harness_builtin.methods.mixing import classmix_mask, cutmix_box, cutmix_mask, mix


def _box_of(mask: torch.Tensor) -> tuple[int, int, int, int]:
    """(y0, x0, h, w) of the zero region, asserting that it is one filled rectangle."""
    ys, xs = torch.nonzero(mask == 0, as_tuple=True)
    y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
    assert int((mask == 0).sum()) == (y1 - y0) * (x1 - x0), "the box is a filled rectangle"
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    return y0, x0, y1 - y0, x1 - x0


@pytest.mark.parametrize("height,width", [(32, 32), (64, 48), (17, 33)])
def test_cutmix_fixed_box_is_half_the_image_and_inside_it(height, width):
    g = torch.Generator().manual_seed(0)
    widths = set()
    for _ in range(200):
        mask = cutmix_mask(height, width, "fixed", generator=g)
        assert mask.shape == (height, width)
        y0, x0, h, w = _box_of(mask)
        assert 0 <= y0 and y0 + h <= height and 0 <= x0 and x0 + w <= width
        # ReCo: width in [W/2 + 1, W), height = round(H*W/2 / width)  ->  |area - HW/2| <= w/2
        assert width // 2 + 1 <= w < width
        assert h == round(height * width / 2 / w)
        assert abs(w * h - height * width / 2) <= w / 2
        widths.add(w)
    assert len(widths) > 3  # the shape is drawn


@pytest.mark.parametrize("height,width", [(32, 32), (64, 48)])
def test_cutmix_up_to_box_covers_at_most_half(height, width):
    g = torch.Generator().manual_seed(1)
    fractions = []
    for _ in range(300):
        y0, x0, h, w = cutmix_box(height, width, "up_to", generator=g)
        assert 0 <= y0 and y0 + h <= height and 0 <= x0 and x0 + w <= width
        assert h >= 1 and w >= 1
        fractions.append(h * w / (height * width))
        mask = cutmix_mask(height, width, "up_to", generator=g)
        assert 0 < int((mask == 0).sum()) <= height * width / 2
    assert max(fractions) <= 0.5
    assert min(fractions) < 0.1 and max(fractions) > 0.35  # the area is drawn over (0, 0.5)


def test_cutmix_box_placement_covers_the_image():
    g = torch.Generator().manual_seed(2)
    starts = {cutmix_box(32, 32, "fixed", generator=g)[:2] for _ in range(300)}
    ys = {y for y, _ in starts}
    xs = {x for _, x in starts}
    assert min(xs) == 0 and min(ys) == 0 and len(xs) > 5 and len(ys) > 5


def test_cutmix_mask_is_reproducible_with_a_generator():
    a = cutmix_mask(32, 32, "fixed", generator=torch.Generator().manual_seed(5))
    b = cutmix_mask(32, 32, "fixed", generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


def test_classmix_picks_half_of_the_present_classes():
    labels = torch.zeros(16, 16, dtype=torch.long)
    labels[:8, :8], labels[:8, 8:], labels[8:, :8], labels[8:, 8:12] = 1, 2, 4, 5  # 0 present too
    present = {0, 1, 2, 4, 5}
    g = torch.Generator().manual_seed(0)
    chosen_sets = set()
    for _ in range(100):
        mask = classmix_mask(labels, generator=g)
        chosen = set(labels[mask.bool()].unique().tolist())
        assert len(chosen) == len(present) // 2 and chosen <= present
        # every pixel of a chosen class is in the mask, no other pixel is
        assert torch.equal(mask.bool(), torch.isin(labels, torch.tensor(sorted(chosen))))
        chosen_sets.add(frozenset(chosen))
    assert len(chosen_sets) > 4  # the classes are drawn, background included
    assert any(0 in s for s in chosen_sets)


def test_classmix_two_classes_pick_one():
    labels = torch.tensor([[0, 0, 3], [3, 0, 3]])
    for seed in range(10):
        mask = classmix_mask(labels, generator=torch.Generator().manual_seed(seed))
        assert torch.equal(mask.bool(), labels == 0) or torch.equal(mask.bool(), labels == 3)


def test_classmix_single_class_gives_an_all_zero_mask():
    """ReCo's behaviour: len // 2 == 0 classes picked, the mixed image is all image i+1."""
    labels = torch.full((8, 8), 2, dtype=torch.long)
    mask = classmix_mask(labels)
    assert mask.shape == (8, 8) and mask.sum() == 0


def _indexed_batch(b: int = 4, h: int = 8, w: int = 8):
    """Image i, its labels and confidences all encode i, so mixing is traceable per pixel."""
    idx = torch.arange(b, dtype=torch.float32)
    images = idx.view(b, 1, 1, 1).expand(b, 3, h, w).clone() / 10
    labels = idx.long().view(b, 1, 1).expand(b, h, w).clone()
    confidence = idx.view(b, 1, 1).expand(b, h, w).clone() / 100
    return images, labels, confidence


def test_mix_uses_one_mask_for_image_label_and_confidence():
    b, h, w = 4, 8, 8
    images, labels, confidence = _indexed_batch(b, h, w)
    masks = torch.stack([cutmix_mask(h, w, "fixed", generator=torch.Generator().manual_seed(i))
                         for i in range(b)])
    mi, ml, mc = mix(images, labels, confidence, masks)
    for i in range(b):
        expected = torch.where(masks[i].bool(), torch.tensor(i), torch.tensor((i + 1) % b))
        assert torch.equal(ml[i], expected)
        assert torch.allclose(mi[i], expected.float().expand(3, h, w) / 10)
        assert torch.allclose(mc[i], expected.float() / 100)
    assert ml.dtype == torch.long


@pytest.mark.parametrize("method", [CutMix(), ClassMix()], ids=["cutmix", "classmix"])
def test_method_mix_keeps_image_label_and_confidence_aligned(method):
    torch.manual_seed(0)
    b, h, w = 3, 16, 16
    images, _, _ = _indexed_batch(b, h, w)
    # pseudo-labels with a few classes so that ClassMix has something to pick; encode the
    # source image in the confidence and the image, the class in the label
    labels = torch.randint(0, 4, (b, h, w))
    confidence = torch.arange(b, dtype=torch.float32).view(b, 1, 1).expand(b, h, w).clone() / 100
    mi, ml, mc = method.mix(images, labels, confidence)
    assert mi.shape == images.shape and ml.shape == labels.shape and mc.shape == confidence.shape
    for i in range(b):
        source = torch.round(mc[i] * 100).long()
        assert set(source.unique().tolist()) <= {i, (i + 1) % b}
        assert torch.allclose(mi[i], source.float().expand(3, h, w) / 10)
        for s in (i, (i + 1) % b):
            where = source == s
            assert torch.equal(ml[i][where], labels[s][where])
    if isinstance(method, ClassMix):
        # the pixels kept from image i are exactly those of the classes picked from image i
        for i in range(b):
            kept = torch.round(mc[i] * 100).long() == i
            kept_classes = labels[i][kept].unique()
            assert len(kept_classes) == len(labels[i].unique()) // 2
            assert torch.equal(kept, torch.isin(labels[i], kept_classes))


def test_cutmix_config_default_is_the_reference_box():
    assert CutMix().config.box_area == "fixed"
    assert CutMix(CutMix.Config(box_area="up_to")).config.box_area == "up_to"
    with pytest.raises(Exception):
        CutMix.Config(box_area="half")


def test_all_pairs_of_classes_can_be_picked():
    labels = torch.arange(4).repeat_interleave(4).view(4, 4)
    g = torch.Generator().manual_seed(3)
    seen = {frozenset(labels[classmix_mask(labels, generator=g).bool()].unique().tolist())
            for _ in range(200)}
    assert seen == {frozenset(p) for p in itertools.combinations(range(4), 2)}
