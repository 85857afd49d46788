"""Pathology foundation models from local files: the registry (built-in entries plus a plugin's),
the ``foundation`` init method (a state-dict file or a Hugging Face snapshot folder, keyed by
content, loaded strictly, never downloaded) and a spec running every protocol on a tiny FM."""

from __future__ import annotations

import json

import pytest
import timm
import torch

import fm_fixture_plugin
from support import write_spec
from harness import plugins
from harness.errors import DataError, SpecError
from harness.inputs import file_sha256
from harness.models.foundation import foundation_models
from harness.models.vit import build_vit_encoder
from harness.preflight import missing_inputs
from harness.runner import Runner
from harness.spec import load_spec
from harness.store import ArtifactStore


@pytest.fixture
def registry(monkeypatch):
    """The installed plugins plus the test plugin's Tiny-FM entry."""
    reg = plugins.build_registry(extra_plugins=[fm_fixture_plugin])
    monkeypatch.setattr(plugins, "_cached", reg)
    yield reg


def tiny_state(seed: int = 0) -> dict:
    torch.manual_seed(seed)
    return timm.create_model("vit_tiny_patch16_224", img_size=64, num_classes=0).state_dict()


@pytest.fixture
def weights(tmp_path):
    path = tmp_path / "tiny_fm.bin"
    torch.save(tiny_state(), path)
    return path


SPEC = """
name: fm
dataset: {{name: synthetic, image_size: 40, images_per_fold: 4, unlabeled_images: 0}}
methods:
  tiny: {{method: foundation, model: Tiny-FM, {source}, architecture: unetr}}
  scratch: {{protocols: [frozen, full, unfreeze]}}
protocols: [frozen, full, linear, lora, unfreeze]
folds: [fold1]
finetune: {{epochs: 2, batch_size: 4, eval_batch_size: 8, unfreeze_epochs: 1, lora_rank: 4}}
"""


def test_registry_has_the_builtin_entries_and_a_plugins(registry):
    known = foundation_models()
    for name in ("UNI", "UNI2-h", "Virchow", "Virchow2", "H-optimus-0", "H-optimus-1", "H0-mini",
                 "Prov-GigaPath", "kaiko-ViT-S16", "Lunit-ViT-S16", "Tiny-FM"):
        assert name in known and known[name].source
    assert known["UNI"].timm == "vit_large_patch16_224" and known["UNI"].kwargs["init_values"] == 1e-5
    assert known["H-optimus-0"].normalization.mean == [0.707223, 0.578729, 0.703617]


def test_weights_load_strictly_and_the_key_follows_their_bytes(registry, weights, tmp_path):
    from harness_builtin.methods.foundation import Foundation

    method = Foundation(Foundation.Config(model="Tiny-FM", weights=weights))
    encoder = build_vit_encoder("fm:Tiny-FM")
    norm = method.init_encoder(encoder, "fm:Tiny-FM", 0)
    assert norm == {"mean": [0.6, 0.5, 0.6], "std": [0.2, 0.2, 0.2]}
    saved = tiny_state()
    assert all(torch.equal(v, saved[k]) for k, v in encoder.model.state_dict().items())

    def encoder_key() -> str:
        rspec = load_spec(write_spec(tmp_path, SPEC.format(source=f"weights: {weights}")),
                          registry=registry)
        plan = Runner(rspec, registry, ArtifactStore(tmp_path / "store"), tmp_path / "run",
                      quiet=True).plan()[0]
        (stage,) = {s.key: s for c in plan.cells if c.method == "tiny"
                    for s in c.stages() if s.kind == "encoder"}.values()
        assert stage.config["encoder"] == "fm:Tiny-FM"
        assert stage.config["fm_architecture"]["timm"] == "vit_tiny_patch16_224"
        return stage.key

    first = encoder_key()
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # one byte of the last tensor
    weights.write_bytes(bytes(data))
    assert encoder_key() != first


def test_a_file_of_another_architecture_is_one_line_exit_3(registry, tmp_path):
    from harness_builtin.methods.foundation import Foundation

    path = tmp_path / "resnet.pth"
    torch.save(timm.create_model("resnet18").state_dict(), path)
    method = Foundation(Foundation.Config(model="Tiny-FM", weights=path))
    with pytest.raises(DataError) as info:
        method.init_encoder(build_vit_encoder("fm:Tiny-FM"), "fm:Tiny-FM", 0)
    message = str(info.value)
    assert info.value.exit_code == 3 and "\n" not in message
    assert "missing keys (e.g." in message and "unexpected keys (e.g. bn1" in message


def test_a_snapshot_folder_loads_with_the_hub_offline(registry, tmp_path, monkeypatch):
    from safetensors.torch import save_file

    from harness_builtin.methods.foundation import Foundation

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    snap = tmp_path / "snapshot"
    snap.mkdir()
    save_file(tiny_state(1), str(snap / "model.safetensors"))
    (snap / "config.json").write_text(json.dumps({
        "architecture": "vit_tiny_patch16_224", "num_classes": 0, "model_args": {"img_size": 64},
        "pretrained_cfg": {"mean": [0.6, 0.5, 0.6], "std": [0.2, 0.2, 0.2]}}))  # timm's layout
    method = Foundation(Foundation.Config(model="Tiny-FM", snapshot=snap))
    encoder = build_vit_encoder("fm:Tiny-FM")
    method.init_encoder(encoder, "fm:Tiny-FM", 0)
    assert torch.equal(encoder.model.pos_embed, tiny_state(1)["pos_embed"])
    # timm builds the snapshot's own architecture from its config.json (finetune.encoder)
    assert build_vit_encoder(f"local-dir:{snap}").model.pos_embed.shape == (1, 17, 192)
    # the folder is keyed by the content of its files
    before = file_sha256(snap)
    (snap / "config.json").write_text("{}")
    assert file_sha256(snap) != before


def test_missing_weights_are_listed_with_the_repository_and_terms(registry, tmp_path):
    rspec = load_spec(write_spec(tmp_path, SPEC.format(source="weights: /nonexistent/uni.bin")),
                      registry=registry)
    (line,) = [p for p in missing_inputs(rspec, registry, ArtifactStore(tmp_path / "s"))
               if "Tiny-FM" in p]
    assert "/nonexistent/uni.bin" in line and "https://huggingface.co/example/tiny-fm" in line
    assert "accept the example terms" in line


def test_validation_names_what_fits_an_encoder(registry, tmp_path, weights):
    def only(text: str) -> str:
        with pytest.raises(SpecError) as info:
            load_spec(write_spec(tmp_path, text), registry=registry)
        assert len(info.value.problems) == 1, info.value.problems
        return info.value.problems[0]

    spec = SPEC.format(source=f"weights: {weights}")
    line = only(spec.replace(", architecture: unetr", ""))
    assert "finetune.architecture 'unet' cannot take encoder 'fm:Tiny-FM'" in line
    assert "architectures that fit it: unetr, dpt" in line
    line = only(spec.replace("scratch: {protocols: [frozen, full, unfreeze]}", "scratch:"))
    assert "protocol 'lora' needs a vit encoder, not the cnn 'resnet18'" in line
    line = only(spec.replace("model: Tiny-FM", "model: Tiny-FN"))
    assert "unknown foundation model 'Tiny-FN'" in line and "Tiny-FM" in line


def test_every_protocol_runs_from_a_spec_on_a_tiny_fm(registry, weights, tmp_path):
    text = SPEC.format(source=f"weights: {weights}")
    rspec = load_spec(write_spec(tmp_path, text), registry=registry)
    plan = Runner(rspec, registry, ArtifactStore(tmp_path / "store"), tmp_path / "plan",
                  quiet=True).plan()[0]
    assert {(c.method, c.protocol) for c in plan.cells} == {
        ("tiny", p) for p in ("frozen", "full", "linear", "lora", "unfreeze")} | {
        ("scratch", p) for p in ("frozen", "full", "unfreeze")}
    # run the FM row only (the CNN rows are what every other test runs)
    text = text.replace("  scratch: {protocols: [frozen, full, unfreeze]}\n", "")
    rspec = load_spec(write_spec(tmp_path, text, "fm_only.yaml"), registry=registry)
    runner = Runner(rspec, registry, ArtifactStore(tmp_path / "store"), tmp_path / "run", quiet=True)
    runner.run(runner.plan()[0])
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    networks = {e["protocol"]: e for e in report["encoders"]}
    assert set(networks) == {"frozen", "full", "linear", "lora", "unfreeze"}
    assert networks["lora"]["architecture"] == "unetr" and networks["lora"]["patch_size"] == 16
    assert networks["linear"]["architecture"] == "linear probe"
    assert networks["full"]["encoder"] == "fm:Tiny-FM"
    assert networks["full"]["encoder_params"] == sum(v.numel() for v in tiny_state().values())
    assert {(r["method"], r["protocol"]) for r in report["rows"]} == {
        ("tiny", p) for p in ("frozen", "full", "linear", "lora", "unfreeze")}
    assert "Networks of the rows" in (tmp_path / "run" / "report.md").read_text()


def test_shipped_fm_spec_lists_every_missing_weights_folder(tmp_path, monkeypatch, torch_home):
    """On a fresh machine (empty home, empty torch hub): one line per foundation model naming
    its Hugging Face repository and terms, beside the ImageNet file and the datasets."""
    from pathlib import Path

    monkeypatch.setenv("HOME", str(tmp_path))
    spec = Path(__file__).resolve().parent.parent / "specs" / "pannuke_foundation_models.yaml"
    registry = plugins.get_registry()
    rspec = load_spec(spec, registry=registry)
    lines = missing_inputs(rspec, registry, ArtifactStore(tmp_path / "store"))
    fm_rows = [r for r in rspec.spec.methods if rspec.spec.plugin_of(r) == "foundation"]
    assert len(fm_rows) == 8
    for row in fm_rows:
        entry = foundation_models(registry)[rspec.method_configs[row].model]
        (line,) = [x for x in lines if f"huggingface.co/{entry.repo} " in x]
        assert str(tmp_path / "weights") in line and entry.access in line
    assert any("resnet18" in x for x in lines) and any("pannuke" in x for x in lines)


def test_unfreeze_after_the_last_epoch_is_rejected_once(registry, tmp_path, weights):
    text = SPEC.format(source=f"weights: {weights}").replace("unfreeze_epochs: 1", "unfreeze_epochs: 2")
    with pytest.raises(SpecError) as info:
        load_spec(write_spec(tmp_path, text), registry=registry)
    (line,) = info.value.problems  # two rows run unfreeze: one line
    assert "protocol 'unfreeze': finetune.unfreeze_epochs 2 >= finetune.epochs 2" in line
