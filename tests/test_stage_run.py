"""Stages are data: a plan rebuilt in another process has the same stages (keys and params),
and `harness stage run` computes a stage in a fresh process to the very files `harness run`
stores. The linear protocol runs in a spec and is reported like the others."""

from __future__ import annotations

import hashlib
import json
import sys

import pytest
import torch

from support import run_cli, write_spec
from finished_runs import CHAIN_SPEC as CHAIN
from harness.plugins import build_registry
from harness.runner import Runner
from harness.spec import load_spec
from harness.stages.base import StageEnv
from harness.store import ArtifactStore

MANY = """
name: many
dataset: {name: synthetic, image_size: 32, images_per_fold: 6, unlabeled_images: 8, unlabeled_size: 64}
methods:
  scratch: null
  simclr: {epochs: 1, batch_size: 4, augment: {crop_size: 32}}
  pricon: {epochs: 1, batch_size: 4, cycles: 2, augment: {crop_size: 64}, labeler: {epochs: 1, batch_size: 4}}
  cutmix: {iterations: 2, batch_size: 2, protocols: [full]}
protocols: [frozen, full, linear]
folds: [fold1]
finetune: {epochs: 1, batch_size: 4}
"""


def _runner(spec, store, out=None):
    registry = build_registry()
    rspec = load_spec(spec, [], registry=registry)
    return Runner(rspec, registry, ArtifactStore(store), out or store.parent / "out", quiet=True)


def _main(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    from harness.cli import app as cli

    monkeypatch.setattr(sys, "argv", ["harness", *map(str, args)])
    with pytest.raises(SystemExit) as exc:
        cli.main()
    captured = capsys.readouterr()
    return exc.value.code, captured.out, captured.err


def _hashes(store, stages) -> dict[str, str]:
    out = {}
    for s in stages:
        folder = store / "stages" / s.kind / s.key
        for f in sorted(folder.rglob("*")):
            # meta.json and events.jsonl also say when, how fast and where (the store's path)
            if f.is_file() and f.name not in ("meta.json", "events.jsonl"):
                out[str(f.relative_to(store))] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def test_rebuilt_plan_has_equal_stages_as_json_data(tmp_path):
    spec = write_spec(tmp_path, MANY)
    plans = [_runner(spec, tmp_path / "store").plan()[0] for _ in range(2)]
    described = [[s.describe() for s in p.stages()] for p in plans]
    assert described[0] == described[1]
    json.dumps(described[0])  # plain data
    assert {c.plugin for c in plans[0].cells} == {"scratch", "simclr", "pricon", "cutmix"}
    assert {c.method for c in plans[0].cells if c.plugin == "pricon"} == {"pricon@cycle1", "pricon@cycle2"}
    runner = _runner(spec, tmp_path / "store")
    plan = runner.plan()[0]
    env = StageEnv(runner.rspec, runner.registry, runner.resources)
    for stage in plan.stages():  # typed params; the method a stage runs is rebuilt exactly
        assert stage.kind in runner.registry.stage_kinds
        params = runner.registry.stage_kind(stage.kind).cls.params_of(stage)
        if getattr(params, "method", None) is not None:
            assert env.method(params.method).config.model_dump(mode="json") == \
                stage.params["method"]["config"]


def test_stage_run_in_fresh_processes_stores_what_harness_run_stores(tmp_path, monkeypatch, capsys,
                                                                     tiny_run):
    spec = write_spec(tmp_path, CHAIN)
    ref = tiny_run.store  # a run of CHAIN's cell and one more
    stages = _runner(spec, tmp_path / "plan", tmp_path / "out").plan()[0].stages()
    assert [s.kind for s in stages] == ["encoder", "finetune", "evaluate"]

    store = tmp_path / "fresh"
    code, _, err = _main(monkeypatch, capsys, "stage", "run", spec, stages[-1].key[:10], "--store", store)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 3 and len(errors) == 1, err
    assert stages[0].key in errors[0] and stages[1].key in errors[0] and "harness stage run" in errors[0]

    env = {"OMP_NUM_THREADS": str(torch.get_num_threads())}
    for stage in stages:  # dependencies first, each in its own process
        res = run_cli("stage", "run", str(spec), f"{stage.kind}/{stage.key[:8]}", "--store", str(store),
                      "--quiet", env=env)
        assert res.returncode == 0, res.stderr
        assert "done" in res.stdout
    expected = _hashes(ref, stages)
    assert any(k.endswith("model.pt") for k in expected) and any(k.endswith("metrics.json") for k in expected)
    assert _hashes(store, stages) == expected

    code, out, _ = _main(monkeypatch, capsys, "stage", "run", spec, stages[-1].key, "--store", store)
    assert code == 0 and "already done" in out
    code, _, err = _main(monkeypatch, capsys, "stage", "run", spec, "ffffffffff", "--store", store)
    assert code == 2 and "no stage" in err


def test_linear_protocol_trains_only_its_head_and_is_reported(tmp_path):
    spec = write_spec(tmp_path, CHAIN.replace("protocols: [full]", "protocols: [linear]"))
    runner = _runner(spec, tmp_path / "store", tmp_path / "out")
    plan = runner.plan()[0]
    result = runner.run(plan)
    assert [r["protocol"] for r in result.records] == ["linear"]
    ft = next(s for s in plan.stages() if s.kind == "finetune" and s.config["protocol"] == "linear")
    enc = ft.deps["encoder"]
    state = torch.load(runner.store.stage_dir(ft.kind, ft.key) / "model.pt", weights_only=True)
    encoder = torch.load(runner.store.stage_dir(enc.kind, enc.key) / "encoder.pt", weights_only=True)
    assert set(state) == {f"encoder.{k}" for k in encoder} | {"head.weight", "head.bias"}
    assert torch.equal(state["encoder.conv1.weight"], encoder["conv1.weight"])  # frozen
    assert state["head.weight"].shape[:2] == (6, 512)
    report = (tmp_path / "out" / "report.md").read_text()
    header = next(line for line in report.splitlines() if line.startswith("| method |"))
    assert "| linear |" in header  # a protocol column of the main table
