"""No host sync in a training step: the ops that make the host wait for the device
(``aten._local_scalar_dense`` behind ``item``/``float``/``bool``/``tolist``, data-dependent
shapes: ``nonzero``, ``unique``, ``masked_select``, boolean indexing...) are counted on the CPU
with a ``TorchDispatchMode`` over a step's forward and backward; fine-tuning, SimCLR and SimSiam
make none, PRICon two reads of data that decide its shapes, and a new one fails this test. The
loop itself reads losses and logs every ``read_every`` steps (harness/engine/loop.py)."""

from __future__ import annotations

import torch

from harness.data.torchdata import Normalizer
from harness.engine.finetune import _segmentation_step
from harness.engine.host_syncs import count_syncs
from harness.engine.loop import StepInfo
from harness.engine.model import build_encoder, build_unet
from harness.engine.runtime import Precision
from harness.heads.train import batch_loss


def _count(step) -> list[str]:
    return count_syncs(step, torch.device("cpu"))


def test_the_counter_sees_syncs():
    x = torch.randn(5, requires_grad=True)

    def step():
        y = x[x > 0].sum() + float(x.detach().sum()) + torch.unique(x.detach()).sum()
        y.backward()

    assert _count(step) == ["aten.index.Tensor", "aten._local_scalar_dense.default",
                            "aten._unique2.default", "aten.index_put.default"]  # last: backward


def test_a_fine_tuning_step_makes_no_host_sync():
    torch.manual_seed(0)
    model = build_unet("resnet18", 3).train()
    normalizer = Normalizer({"mean": [0.5] * 3, "std": [0.25] * 3})
    step_fn = _segmentation_step(model, normalizer, Precision(torch.device("cpu"), False),
                                 torch.device("cpu"), False, batch_loss("semantic", None))
    batch = (torch.rand(2, 3, 64, 64), torch.randint(0, 3, (2, 64, 64)))

    def step():
        loss, logs = step_fn(batch, StepInfo(0, 1, 0, 0))
        loss.backward()

    assert _count(step) == []


def _pretrain_step(method):
    torch.manual_seed(0)
    encoder = build_encoder("resnet18")
    model = method.build_model(encoder, list(encoder.out_channels)).train()
    batch = {"view1": torch.rand(4, 3, 32, 32), "view2": torch.rand(4, 3, 32, 32)}

    def step():
        loss, logs = method.training_step(model, batch, None)
        assert all(isinstance(v, torch.Tensor) for v in logs.values())  # read later, with the loss
        loss.backward()

    return step


def test_simclr_and_simsiam_steps_make_no_host_sync():
    from harness_builtin.methods.simclr import SimCLR
    from harness_builtin.methods.simsiam import SimSiam

    for method in (SimCLR(), SimSiam()):
        assert _count(_pretrain_step(method)) == [], method.name


def test_a_pricon_step_reads_the_device_twice():
    """PRICon's point and region counts depend on the data: its step reads the valid (image,
    class) pairs and the sampled point labels on the host, once each (``host copy``, what CUDA
    waits for); it made 14 syncs before (unique, bincount, a boolean mask and a read per SupCon
    term, two nonzeros, and F.one_hot's range checks)."""
    from harness_builtin.methods.pricon import PRICon

    method = PRICon()
    batch_masks = {f"mask{v}": torch.randint(0, 6, (4, 32, 32)) for v in (1, 2)}
    torch.manual_seed(0)
    encoder = build_encoder("resnet18")
    model = method.build_model(encoder, list(encoder.out_channels)).train()
    batch = {"view1": torch.rand(4, 3, 32, 32), "view2": torch.rand(4, 3, 32, 32), **batch_masks}

    def step():
        loss, logs = method.training_step(model, batch, 6)
        assert all(isinstance(v, torch.Tensor) for v in logs.values())
        loss.backward()

    assert _count(step) == ["host copy", "host copy"]


def test_normalisation_constants_are_copied_to_a_device_once():
    normalizer = Normalizer({"mean": [0.5] * 3, "std": [0.25] * 3})
    first = normalizer.constants(torch.device("cpu"))
    assert all(a is b for a, b in zip(normalizer.constants(torch.device("cpu")), first))


def test_larger_supcon_tiles_issue_fewer_ops_for_the_same_loss():
    """PRICon's point loss is launch-bound on a GPU with small tiles (AUTO_TILE_CUDA there):
    4x larger tiles, over 10x fewer ops, the same loss and gradients up to summation order."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from harness_builtin.methods.supcon import supcon_loss

    class Ops(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.n += 1
            return func(*args, **(kwargs or {}))

    torch.manual_seed(0)
    z, labels = torch.randn(1024, 16), torch.arange(512).repeat(2)
    out = {}
    for tile in (128, 512):
        f = z.clone().requires_grad_(True)
        with Ops() as ops:
            loss = supcon_loss(f, labels, 0.1, "code", block_size=tile)
            loss.backward()
        out[tile] = (ops.n, loss.detach(), f.grad)
    assert out[128][0] > 10 * out[512][0]
    torch.testing.assert_close(out[512][1], out[128][1], rtol=1e-6, atol=0)
    torch.testing.assert_close(out[512][2], out[128][2], rtol=1e-4, atol=1e-9)


def test_the_mean_teachers_masked_mean_needs_no_sync():
    """The unsupervised loss's mean over pixels with a positive loss, as CUDA computes it."""
    from harness.engine.semisup import masked_mean

    torch.manual_seed(0)
    values = torch.rand(2, 8, 8, requires_grad=True)
    mask = torch.rand(2, 8, 8) > 0.5
    assert _count(lambda: masked_mean(values, mask).backward()) == []
    torch.testing.assert_close(masked_mean(values, mask), values[mask].mean())
    empty = masked_mean(values, torch.zeros_like(mask))
    assert empty.item() == 0.0 and empty.requires_grad
