"""``finetune.head: hover`` through the harness: validation, stage keys, training, evaluation."""

from __future__ import annotations

import json

import numpy as np
import torch

from support import TINY_SPEC, run_cli, write_spec
from harness.heads import hover_slices, out_channels
from harness.heads.hover_loss import hover_loss
from harness.plugins import build_registry
from harness.runner import Runner
from harness.spec import load_spec
from harness.store import ArtifactStore


def _keys(path, overrides, store):
    registry = build_registry()
    rspec = load_spec(path, overrides, registry=registry)
    plan, _, _ = Runner(rspec, registry, ArtifactStore(store), store / "out", quiet=True).plan()
    return {(s.kind, s.label): s.key for s in plan.stages()}


def test_layout():
    assert out_channels("semantic", 6) == 6 and out_channels("hover", 6) == 10
    assert hover_slices(6) == {"np": slice(0, 2), "hv": slice(2, 4), "nc": slice(4, 10)}


def test_hover_enters_keys_only_when_set(tmp_path):
    spec = write_spec(tmp_path)
    default = _keys(spec, [], tmp_path / "s")
    assert _keys(spec, ["finetune.head=semantic"], tmp_path / "s") == default
    hover = _keys(spec, ["finetune.head=hover"], tmp_path / "s")
    changed = {kind for (kind, label), key in hover.items() if default.get((kind, label)) != key}
    assert changed == {"finetune", "evaluate"}  # the encoder stage is shared


def test_unsupported_methods_and_datasets_refused_in_one_line(tmp_path):
    spec = write_spec(tmp_path, TINY_SPEC.replace("methods: [scratch]", "methods: [scratch, cutmix]")
                      .replace("unlabeled_images: 0", "unlabeled_images: 4"))
    res = run_cli("validate", str(spec), "--set", "finetune.head=hover")
    assert res.returncode == 2
    line = [x for x in res.stderr.splitlines() if "methods.cutmix" in x and "head" in x]
    assert len(line) == 1 and "finetune.head" in line[0] and "semantic" in line[0]
    tnbc = write_spec(tmp_path, "name: t\ndataset: tnbc\nmethods: [scratch]\nprotocols: [full]\n"
                      "metric: {name: dice}\n", "t.yaml")
    res = run_cli("validate", str(tnbc), "--set", "finetune.head=hover")
    assert res.returncode == 2 and "finetune.head" in res.stderr and "dice" in res.stderr


def test_loss_falls_on_a_fixed_batch():
    torch.manual_seed(0)
    inst = torch.zeros(2, 32, 32, dtype=torch.long)
    inst[:, 4:14, 4:14], inst[:, 14:26, 8:20] = 1, 2  # two touching nuclei
    classes = torch.where(inst == 1, 1, torch.where(inst == 2, 3, 0))
    from harness.heads.hover_targets import hv_maps

    hv = torch.stack([torch.from_numpy(hv_maps(i.numpy())) for i in inst])
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv2d(16, out_channels("hover", 4), 3, padding=1))
    x = torch.randn(2, 3, 32, 32) + inst[:, None].float()
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    losses = []
    for _ in range(40):
        loss, terms = hover_loss(net(x), classes, hv)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert set(terms) == {"np_ce", "np_dice", "hv_mse", "hv_msge", "nc_ce", "nc_dice"}
    assert losses[-1] < 0.6 * losses[0]


def test_hover_run_end_to_end(tmp_path):
    spec = write_spec(tmp_path, TINY_SPEC.replace("protocols: [frozen, full]",
                                                  "protocols: [linear]"))
    store = tmp_path / "store"
    res = run_cli("run", str(spec), "--store", str(store), "--set", "finetune.head=hover",
                  "--set", "finetune.epochs=1", "--set", "output=" + str(tmp_path / "out"))
    assert res.returncode == 0, res.stderr[-2000:]
    metrics = sorted(store.rglob("metrics.json"))
    assert len(metrics) == 1
    for path in metrics:
        data = json.loads(path.read_text())
        assert data["pred_instances"].startswith("HoVer-Net")
        assert np.isfinite(data["instance"]["bpq"]) or data["instance"]["bpq"] != data["instance"]["bpq"]
        pred = np.load(path.parent / "predictions.npz")
        assert set(pred.files) == {"classes", "instances", "ids"}
        assert np.array_equal(pred["instances"] > 0, pred["classes"] > 0)


def test_every_protocol_builds_a_hover_model_that_takes_encoder_weights():
    from harness.engine.model import build_encoder, load_encoder_weights
    from harness.plugins import get_registry

    registry = get_registry()
    state = build_encoder("resnet18").state_dict()
    for name in ("frozen", "full", "linear"):
        protocol = registry.protocol(name).cls()
        model = protocol.build_model("resnet18", out_channels("hover", 6))
        load_encoder_weights(model, state, source="test")
        protocol.prepare(model)
        with torch.no_grad():
            out = model.eval()(torch.zeros(1, 3, 64, 64))
        assert out.shape == (1, 10, 64, 64), name


def test_every_init_and_pretraining_method_validates_under_hover(tmp_path):
    from harness.plugins import build_registry

    registry = build_registry()
    rows = [n for n, info in registry.methods.items()
            if getattr(info.cls, "kind", "") in ("init", "pretrain") and info.cls.heads is None]
    semisup = [n for n, info in registry.methods.items() if info.cls.heads is not None]
    assert len(rows) >= 5 and semisup  # scratch, imagenet, supervised, simclr, pricon, ...
    # a foundation model (a tiny kaiko ViT under unetr) needs its model and weights named
    settings = {"foundation": "{model: kaiko-ViT-S16, snapshot: /nonexistent, architecture: unetr}"}
    methods = ", ".join(f"{n}: {settings.get(n, 'null')}" for n in rows)
    text = TINY_SPEC.replace("methods: [scratch]", f"methods: {{{methods}}}").replace(
        "protocols: [frozen, full]", "protocols: [frozen, full, linear]").replace(
        "unlabeled_images: 0", "unlabeled_images: 4")
    res = run_cli("validate", str(write_spec(tmp_path, text)), "--set", "finetune.head=hover")
    assert res.returncode == 0, res.stderr
