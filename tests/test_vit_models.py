"""ViT encoders under the dense heads (unetr, dpt, linear), frozen encoders without grad, and the
lora and unfreeze protocols, on tiny random models (vit_tiny_patch16_224 at 64 px)."""

from __future__ import annotations

import pytest
from test_fast_validate import cache_home  # noqa: F401 - fixture
import torch

from harness.engine.model import build_model, freeze_encoder
from harness.models.vit import build_vit_encoder
from harness.protocols.linear import Linear
from harness.protocols.lora import LoRA
from harness.protocols.unfreeze import Unfreeze

TINY, ARGS = "vit_tiny_patch16_224", {"img_size": 64}


@pytest.mark.parametrize("arch", ["unetr", "dpt"])
def test_dense_heads_predict_at_input_size_for_any_size(arch):
    torch.manual_seed(0)
    model = build_model(TINY, 5, arch, ARGS)
    for h, w in ((64, 64), (50, 70)):  # 50x70: not a multiple of the patch (padded, cropped)
        assert model(torch.randn(2, 3, h, w)).shape == (2, 5, h, w)
    model(torch.randn(1, 3, 48, 48)).mean().backward()
    assert model.encoder.model.blocks[0].attn.qkv.weight.grad is not None


def test_padding_leaves_the_image_content_where_it_was():
    """The pad is on the right/bottom: the crop of a padded prediction is the image's own."""
    torch.manual_seed(0)
    model = build_model(TINY, 3, "unetr", ARGS).eval()
    x = torch.randn(1, 3, 50, 60)
    with torch.no_grad():
        out = model(x)
        ref = model(torch.nn.functional.pad(x, (0, 4, 0, 14)))[..., :50, :60]
    assert torch.allclose(out, ref, atol=1e-5)


def test_linear_probe_on_patch_tokens():
    model = Linear().build_model(TINY, 4, type("S", (), {"encoder_args": ARGS})())
    assert model.head.in_channels == 192
    assert model(torch.randn(2, 3, 40, 56)).shape == (2, 4, 40, 56)


def test_frozen_encoder_keeps_no_activations():
    model = build_model(TINY, 3, "unetr", ARGS)
    freeze_encoder(model)
    seen = []
    model.encoder.model.blocks[-1].register_forward_hook(lambda m, a, o: seen.append(o.requires_grad))
    model(torch.randn(1, 3, 64, 64)).mean().backward()
    assert seen == [False]  # no graph through the encoder
    assert model.head[1].weight.grad is not None
    # a CNN U-Net's encoder too
    unet = build_model("resnet18", 3)
    freeze_encoder(unet)
    assert not unet.encoder(torch.randn(1, 3, 64, 64))[-1].requires_grad
    freeze_encoder(unet, False)
    assert unet.encoder(torch.randn(1, 3, 64, 64))[-1].requires_grad


def test_lora_trains_adapters_only_and_stores_a_merged_plain_model():
    torch.manual_seed(0)
    settings = type("S", (), {"lora_rank": 4, "lora_alpha": 8.0, "encoder_args": ARGS,
                              "architecture": "unetr"})()
    protocol = LoRA()
    model = protocol.build_model(TINY, 3, settings)
    protocol.prepare(model, settings)
    trainable = {n for n, p in model.encoder.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert len(trainable) == 2 * 12  # A and B of each block's qkv
    with torch.no_grad():  # a nonzero B so that the adapters change the function
        for n, p in model.encoder.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    model.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        before = model(x)
    merged = protocol.finalize(model)
    plain = build_model(TINY, 3, "unetr", ARGS).eval()
    plain.load_state_dict(merged.state_dict(), strict=True)
    with torch.no_grad():
        assert torch.allclose(plain(x), before, atol=1e-4)


@pytest.mark.parametrize("encoder,arch,args", [(TINY, "unetr", ARGS), ("resnet18", "unet", None)])
def test_unfreeze_freezes_the_first_epochs_then_trains_everything(encoder, arch, args):
    protocol = Unfreeze()
    model = build_model(encoder, 3, arch, args)
    protocol.prepare(model, type("S", (), {"unfreeze_epochs": 2})())
    for epoch, frozen in ((0, True), (1, True), (2, False), (3, False)):
        protocol.set_train_mode(model, "adapt", epoch)
        assert all(p.requires_grad != frozen for p in model.encoder.parameters())


def test_vit_encoder_forward_is_its_last_blocks_patch_grid():
    """What pretraining methods see: pooled for SimCLR/SimSiam, dense for PRICon."""
    encoder = build_vit_encoder(TINY, ARGS)
    (grid,) = encoder(torch.randn(2, 3, 64, 64))
    assert grid.shape == (2, 192, 4, 4) and encoder.out_channels == [192]


def test_conformance_checks_vit_methods_on_a_tiny_vit():
    from harness.conformance.methods import encoders_of
    from harness_builtin.methods.simclr import SimCLR
    from harness_builtin.methods.supervised import Supervised

    assert [n for n, _ in encoders_of(SimCLR())] == ["resnet18", TINY]
    assert [n for n, _ in encoders_of(Supervised())] == ["resnet18"]


PRETRAIN_SPEC = """
name: vit_pretrain
dataset: {name: synthetic, image_size: 32, images_per_fold: 4, unlabeled_images: 8, unlabeled_size: 64}
methods:
  simclr: {epochs: 1, batch_size: 4, augment: {crop_size: 32}}
  pricon: {epochs: 1, batch_size: 4, augment: {crop_size: 32}, labeler: {epochs: 1, batch_size: 4}}
protocols: [frozen]
folds: [fold1]
finetune: {architecture: unetr, encoder: vit_tiny_patch16_224, encoder_args: {img_size: 32},
           epochs: 1, batch_size: 4, eval_batch_size: 8}
"""


@pytest.mark.slow
def test_simclr_and_pricon_pretrain_a_tiny_vit_that_then_finetunes(tmp_path):
    """~40 s on one CPU thread: labeler, pseudo-labels, two pretrainings, fine-tuning."""
    from support import write_spec
    from harness.plugins import build_registry
    from harness.runner import Runner
    from harness.spec import load_spec
    from harness.store import ArtifactStore

    registry = build_registry()
    rspec = load_spec(write_spec(tmp_path, PRETRAIN_SPEC), registry=registry)
    runner = Runner(rspec, registry, ArtifactStore(tmp_path / "store"), tmp_path / "run", quiet=True)
    plan = runner.plan()[0]
    kinds = {s.kind for c in plan.cells for s in c.stages()}
    assert {"pretrain", "labeler", "pseudolabel", "finetune", "evaluate"} <= kinds
    runner.run(plan)
    records = sorted(p.name for p in (tmp_path / "run" / "records").iterdir())
    for row in ("simclr", "pricon"):
        assert any(name.startswith(f"{row}__frozen") for name in records), records


def test_validating_a_vit_spec_imports_no_torch(tmp_path, cache_home):
    from test_fast_validate import HEAVY, imported_by

    spec = tmp_path / "vit.yaml"
    spec.write_text(PRETRAIN_SPEC)
    code, modules = imported_by(["validate", str(spec)], tmp_path, cache_home)
    assert code in (0, None)
    assert not {m.split(".")[0] for m in modules} & set(HEAVY)
    code, _ = imported_by(["validate", str(spec), "--set", "finetune.architecture=unet"],
                          tmp_path, cache_home)
    assert code == 2
