"""PRICon's mask pooling, valid classes, point sampling, region and image pooling."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from harness_builtin.methods.supcon import supcon_loss
from harness_builtin.methods.pricon.ops import (
    image_pool,
    pool_masks,
    region_pool,
    sample_point_indices,
    sample_points,
    upsample_dense,
    valid_classes,
)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _one_hot(labels: torch.Tensor, c: int) -> torch.Tensor:
    """(B, H, W) class ids -> (B, C, H, W) one-hot, as the reference's mask transform."""
    return F.one_hot(labels, c).permute(0, 3, 1, 2)


def _masks(seed=0, b=4, c=4, h=16, r=4):
    """Two views' pooled masks with blocky random label maps (some classes absent)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randint(0, c, (2, b, h // 4, h // 4), generator=g)
    full = coarse.repeat_interleave(4, -1).repeat_interleave(4, -2)
    full[:, :, 0, 0] = 0  # a single pixel of background: a tiny fraction in one cell
    return pool_masks(_one_hot(full[0], c), r), pool_masks(_one_hot(full[1], c), r)


# --- pool_masks / valid_classes --------------------------------------------------------------

def test_pool_masks_is_class_fraction_per_cell():
    labels = torch.tensor([[[0, 0, 1, 1], [0, 2, 1, 1], [2, 2, 2, 2], [2, 2, 2, 0]]])
    pooled = pool_masks(_one_hot(labels, 3), 2)
    assert pooled.shape == (1, 3, 2, 2) and pooled.dtype == torch.float32
    want = torch.tensor([[[0.75, 0.0], [0.0, 0.25]],
                         [[0.0, 1.0], [0.0, 0.0]],
                         [[0.25, 0.0], [1.0, 0.75]]])
    torch.testing.assert_close(pooled[0], want)
    torch.testing.assert_close(pooled.sum(1), torch.ones(1, 2, 2))


def test_valid_classes_requires_both_views():
    m1 = torch.zeros(2, 3, 2, 2)
    m2 = torch.zeros(2, 3, 2, 2)
    m1[0, 0, 0, 0] = m2[0, 0, 1, 1] = 0.5  # class 0 of image 0 in both views (other cells)
    m1[0, 1, 0, 0] = 1.0  # class 1 of image 0 only in view 1
    m2[1, 2, 0, 1] = 0.1  # class 2 of image 1 only in view 2
    want = torch.tensor([[True, False, False], [False, False, False]])
    assert torch.equal(valid_classes(m1, m2), want)
    assert torch.equal(valid_classes(m1.flatten(2), m2.flatten(2)), want)


# --- point sampling ---------------------------------------------------------------------------

def test_point_sampling_respects_masks_and_classes():
    m1, m2 = _masks(seed=1)
    valid = valid_classes(m1, m2)
    g = torch.Generator().manual_seed(0)
    img, cls, c1, c2 = sample_point_indices(m1, m2, n_points=400, generator=g)
    assert img.shape == cls.shape == c1.shape == c2.shape == (400, 4)
    f1, f2 = m1.flatten(2), m2.flatten(2)
    # only valid classes; never a cell where the chosen class has zero fraction (in either view)
    assert valid[img, cls].all()
    assert (f1[img, cls, c1] > 0).all()
    assert (f2[img, cls, c2] > 0).all()
    # every valid class of every image gets drawn (uniform among valid: 1/|valid| each)
    for b in range(4):
        drawn = set(cls[:, b].tolist())
        assert drawn == set(valid[b].nonzero().flatten().tolist())


def test_point_sampling_frequencies_follow_fractions():
    """One image, one class with fractions 0.1 / 0.3 / 0.6 in three cells of view 1."""
    m1 = torch.zeros(1, 2, 2, 2)
    m2 = torch.zeros(1, 2, 2, 2)
    m1[0, 1].view(-1)[:3] = torch.tensor([0.1, 0.3, 0.6])
    m1[0, 0].view(-1)[3] = 1.0  # class 0 only in view 1: invalid
    m2[0, 1, 1, 1] = 1.0
    g = torch.Generator().manual_seed(3)
    _, cls, c1, c2 = sample_point_indices(m1, m2, n_points=20000, generator=g)
    assert (cls == 1).all() and (c2 == 3).all()
    freq = torch.bincount(c1.flatten(), minlength=4).float() / c1.numel()
    torch.testing.assert_close(freq, torch.tensor([0.1, 0.3, 0.6, 0.0]), atol=0.015, rtol=0)


def test_point_sampling_is_deterministic_with_generator():
    m1, m2 = _masks(seed=2)
    a = sample_point_indices(m1, m2, 32, generator=torch.Generator().manual_seed(7))
    b = sample_point_indices(m1, m2, 32, generator=torch.Generator().manual_seed(7))
    c = sample_point_indices(m1, m2, 32, generator=torch.Generator().manual_seed(8))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))


def test_sample_points_features_labels_and_order():
    b, d, r, n_pts = 3, 5, 4, 6
    m1, m2 = _masks(seed=4, b=b, r=r)
    z1 = torch.randn(b, d, r, r)
    z2 = torch.randn(b, d, r, r)
    feats, labels = sample_points(z1, z2, m1, m2, n_pts, generator=torch.Generator().manual_seed(1))
    img, cls, c1, c2 = sample_point_indices(m1, m2, n_pts, generator=torch.Generator().manual_seed(1))
    assert feats.shape == (2 * b * n_pts, d) and labels.shape == (2 * b * n_pts,)
    # view 1 then view 2; iteration-major inside each view; labels repeated for view 2
    for t in range(n_pts):
        for j in range(b):
            row = t * b + j
            torch.testing.assert_close(feats[row], z1[img[t, j], :, c1[t, j] // r, c1[t, j] % r])
            torch.testing.assert_close(feats[b * n_pts + row],
                                       z2[img[t, j], :, c2[t, j] // r, c2[t, j] % r])
            assert labels[row] == labels[b * n_pts + row] == cls[t, j]


def test_sampling_skips_images_without_valid_class():
    m1, m2 = _masks(seed=5, b=3)
    m2[1] = 0
    m2[1, 3] = 1.0  # image 1: view 2 entirely class 3, absent from view 1
    m1[1, 3] = 0
    m1[1, 0] = 1.0
    assert not valid_classes(m1, m2)[1].any()
    img, cls, _, _ = sample_point_indices(m1, m2, 10, generator=torch.Generator().manual_seed(0))
    assert img.shape == (10, 2) and set(img.flatten().tolist()) == {0, 2}
    z = torch.randn(3, 4, 4, 4)
    feats, labels = sample_points(z, z, m1, m2, 10)
    assert feats.shape == (2 * 2 * 10, 4)
    # no image valid at all: empty, and the loss on it is a graph-attached zero
    m2_none = torch.zeros_like(m2)
    m2_none[:, 3] = 1.0
    m1_none = torch.zeros_like(m1)
    m1_none[:, 0] = 1.0
    zg = z.clone().requires_grad_(True)
    feats, labels = sample_points(zg, zg, m1_none, m2_none, 10)
    assert feats.shape == (0, 4) and labels.shape == (0,)
    loss = supcon_loss(feats, labels)
    assert loss.item() == 0.0
    loss.backward()


# --- region / image pooling ----------------------------------------------------------------------

def test_region_pool_is_weighted_mean():
    b, c, d, r = 2, 3, 4, 2
    m1 = torch.zeros(b, c, r, r)
    m2 = torch.zeros(b, c, r, r)
    m1[0, 0] = torch.tensor([[0.5, 1.0], [0.0, 0.25]])
    m1[0, 2] = torch.tensor([[0.5, 0.0], [1.0, 0.75]])
    m2[0, 0] = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    m2[0, 2] = torch.tensor([[0.0, 1.0], [1.0, 1.0]])
    m1[1, 1] = 1.0
    m2[1, 1] = 1.0
    m2[1, 2, 0, 0] = 0.2  # class 2 of image 1 only in view 2: not pooled
    z1 = torch.randn(b, d, r, r)
    z2 = torch.randn(b, d, r, r)
    feats, labels = region_pool(z1, z2, m1, m2)
    assert labels.tolist() == [0, 2, 1, 0, 2, 1]
    z = z1[0]
    h00 = (0.5 * z[:, 0, 0] + 1.0 * z[:, 0, 1] + 0.25 * z[:, 1, 1]) / 1.75
    h02 = (0.5 * z[:, 0, 0] + 1.0 * z[:, 1, 0] + 0.75 * z[:, 1, 1]) / 2.25
    h11 = z1[1].mean(dim=(1, 2))
    v = z2[0]
    g00 = v[:, 0, 0]
    g02 = (v[:, 0, 1] + v[:, 1, 0] + v[:, 1, 1]) / 3
    g11 = z2[1].mean(dim=(1, 2))
    torch.testing.assert_close(feats, torch.stack([h00, h02, h11, g00, g02, g11]))


def test_region_pool_gradient_and_skip():
    m1, m2 = _masks(seed=6, b=3)
    m2[1] = 0
    m2[1, 3] = 1.0
    m1[1, 3] = 0
    m1[1, 0] = 1.0
    valid = valid_classes(m1, m2)
    z1 = torch.randn(3, 6, 4, 4, requires_grad=True)
    z2 = torch.randn(3, 6, 4, 4, requires_grad=True)
    feats, labels = region_pool(z1, z2, m1, m2)
    assert feats.shape == (2 * int(valid.sum()), 6) and torch.isfinite(feats).all()
    supcon_loss(feats, labels).backward()
    assert torch.equal(z1.grad[1], torch.zeros_like(z1.grad[1]))  # skipped image: no gradient
    assert z1.grad[0].abs().sum() > 0


def test_image_pool_and_upsample():
    z = torch.randn(2, 3, 7, 7)
    torch.testing.assert_close(image_pool(z), z.mean(dim=(2, 3)))
    torch.testing.assert_close(image_pool(z.flatten(2)), z.mean(dim=(2, 3)))
    up = upsample_dense(z, 14)
    assert up.shape == (2, 3, 14, 14)
    torch.testing.assert_close(up, F.interpolate(z, size=(14, 14), mode="bilinear", align_corners=False))
    assert upsample_dense(z, 7) is z
    # a constant map stays constant under bilinear upsampling
    torch.testing.assert_close(upsample_dense(torch.ones(1, 2, 7, 7), 28), torch.ones(1, 2, 28, 28))


def test_pipeline_at_upsampled_resolution():
    """Masks pooled at R' = 14 match a dense map upsampled to 14; all three terms run."""
    g = torch.Generator().manual_seed(9)
    labels = torch.randint(0, 3, (2, 2, 56, 56), generator=g)
    m1, m2 = pool_masks(_one_hot(labels[0], 3), 14), pool_masks(_one_hot(labels[1], 3), 14)
    z1 = upsample_dense(torch.randn(2, 8, 7, 7, requires_grad=True), 14)
    z2 = upsample_dense(torch.randn(2, 8, 7, 7, requires_grad=True), 14)
    pf, pl = sample_points(z1, z2, m1, m2, 8, generator=g)
    rf, rl = region_pool(z1, z2, m1, m2)
    loss = supcon_loss(pf, pl) + supcon_loss(rf, rl)
    assert torch.isfinite(loss)
    loss.backward()


def test_point_gradients_identical_across_runs_with_two_threads():
    """A cell drawn several times gets its gradient summed in a fixed order: backward passes with
    2 threads give bit-identical gradients. Advanced indexing's backward did not: this case
    differed between runs on an idle machine (on a loaded one the threads rarely overlap, so
    this check can miss a regression there)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        g = torch.Generator().manual_seed(3)
        z = torch.randn(32, 128, 8, 8, generator=g)
        labels = torch.randint(0, 6, (32, 8, 8), generator=g).repeat_interleave(8, 1).repeat_interleave(8, 2)
        pooled = pool_masks(F.one_hot(labels, 6).permute(0, 3, 1, 2), 8)
        weights = torch.randn(2 * 32 * 16, 128, generator=g)
        grads = []
        for _ in range(8):  # a race shows only when both threads run at once: repeat
            z1 = z.clone().requires_grad_()
            feats, _ = sample_points(z1, z1, pooled, pooled, 16, generator=torch.Generator().manual_seed(0))
            (feats * weights).sum().backward()
            grads.append(z1.grad)
        assert all(torch.equal(grads[0], gr) for gr in grads[1:])
        img, _, c1, _ = sample_point_indices(pooled, pooled, 16, generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(feats[: img.numel()], z.flatten(2)[img.flatten(), :, c1.flatten()])
    finally:
        torch.set_num_threads(threads)
