"""Planted files: a pickle payload in every place the harness loads torch files from (a stage's
checkpoint, encoder and model artifacts in the store, ImageNet weights, a viz encoder) never
runs. Store artifacts that do not load are one line (exit 3) naming the file and the fix; a
checkpoint that does not load is set aside with one warning and its stage starts over, to the
same result (resuming is bit-identical to not being interrupted)."""

from __future__ import annotations

import json
import pickle
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from support import REPO
from finished_runs import CHAIN_SPEC as SPEC
from hostile import assert_one_line_error, cli, plant_payload, wide_console


@pytest.fixture(autouse=True)
def wide(monkeypatch):
    wide_console(monkeypatch)


@pytest.fixture(scope="module")
def finished(tiny_run, tmp_path_factory):
    """The full cell of the session's finished tiny run, and a spec of that cell alone:
    (spec, store, {kind: stage key}, record)."""
    [record] = [r for r in tiny_run.records().values() if r["protocol"] == "full"]
    spec = tmp_path_factory.mktemp("finished") / "spec.yaml"
    spec.write_text(SPEC)
    return spec, tiny_run.store, {s["kind"]: s["key"] for s in record["stages"]}, record


def _copy(finished, tmp_path, *recompute: str):
    """The finished store copied, with the stages of the kinds in ``recompute`` removed."""
    spec, store, keys, record = finished
    new = tmp_path / "store"
    shutil.copytree(store, new)
    for kind in recompute:
        shutil.rmtree(new / "stages" / kind / keys[kind])
    return spec, new, keys, record


def _old_format_checkpoint(path: Path, marker: Path) -> None:
    """What checkpoints looked like before: numpy RNG state inside (needs full unpickling)."""
    torch.save({"epoch": 1, "history": [], "rng": {"numpy": np.random.get_state()}}, path)


def _truncated_checkpoint(path: Path, marker: Path) -> None:
    torch.save({"epoch": 1, "model": torch.zeros(1000)}, path)
    path.write_bytes(path.read_bytes()[:300])


@pytest.mark.parametrize("make", [plant_payload, _old_format_checkpoint, _truncated_checkpoint],
                         ids=["payload", "old_format", "truncated"])
def test_a_checkpoint_that_does_not_load_is_set_aside_and_the_stage_starts_over(
        finished, tmp_path, capsys, make):
    spec, store, keys, record = _copy(finished, tmp_path, "finetune", "evaluate")
    ckpt = store / "work" / "finetune" / keys["finetune"] / "checkpoint.pt"
    ckpt.parent.mkdir(parents=True)
    marker = tmp_path / "PAYLOAD_RAN"
    make(ckpt, marker)

    result = cli(capsys, "run", str(spec), "--store", str(store), "--output",
                 str(tmp_path / "out"), "--quiet")
    assert result.code == 0, result.err
    assert not marker.exists()
    warnings = [line for line in result.lines if "warning:" in line]
    assert len(warnings) == 1 and str(ckpt) in warnings[0] and "starts over" in warnings[0]
    assert (ckpt.parent / "checkpoint.pt.unreadable").exists() or not ckpt.parent.exists()
    again = json.loads(next((tmp_path / "out" / "records").glob("*.json")).read_text())
    assert again["metrics"] == record["metrics"]  # starting over reaches the same result


@pytest.mark.parametrize("kind,artifact", [("encoder", "encoder.pt"), ("finetune", "model.pt")])
def test_a_planted_store_artifact_never_runs_and_is_one_line(finished, tmp_path, capsys, kind,
                                                              artifact):
    downstream = {"encoder": ("finetune", "evaluate"), "finetune": ("evaluate",)}[kind]
    spec, store, keys, _ = _copy(finished, tmp_path, *downstream)
    marker = tmp_path / "PAYLOAD_RAN"
    path = plant_payload(store / "stages" / kind / keys[kind] / artifact, marker)

    result = cli(capsys, "run", str(spec), "--store", str(store), "--output",
                 str(tmp_path / "out"), "--quiet")
    assert_one_line_error(result, 3, str(path), "Python objects", "delete the stage folder")
    assert not marker.exists()


@pytest.mark.parametrize("content", ["payload", "wrong_keys"])
def test_supervised_weights_that_do_not_load_are_one_line(tmp_path, capsys, content):
    import torchvision

    marker = tmp_path / "PAYLOAD_RAN"
    weights = tmp_path / "r18.pth"
    if content == "payload":
        plant_payload(weights, marker)
    else:
        torch.save(torchvision.models.resnet34().state_dict(), weights)
    spec = tmp_path / "sup.yaml"
    spec.write_text(SPEC.replace("methods: [scratch]",
                                 f"methods: {{supervised: {{weights: '{weights}'}}}}"))
    result = cli(capsys, "run", str(spec), "--store", str(tmp_path / "store"), "--quiet",
                 "--output", str(tmp_path / "out"))
    fix = "does not fit encoder 'resnet18'" if content == "wrong_keys" else "torch.save(model.state_dict()"
    line = assert_one_line_error(result, 3, str(weights), fix)
    assert len(line) < 400
    assert not marker.exists()


def _plain_pickle(path: Path, marker: Path) -> None:
    with open(path, "wb") as fh:
        pickle.dump({"w": [1.0]}, fh)


def _symlink_loop(path: Path, marker: Path) -> None:
    path.symlink_to(path)


@pytest.mark.parametrize("make,what", [
    (plant_payload, "Python objects"),
    (lambda p, m: p.write_bytes(np.random.default_rng(0).bytes(4096)), "not a torch file"),
    (_plain_pickle, "not a torch file"),
    (lambda p, m: torch.save([torch.zeros(2)], p), "holds a list, not a state dict"),
    (lambda p, m: torch.save({"w": 1.0}, p), "non-tensors"),
    (_truncated_checkpoint, "not a readable torch file"),
    (lambda p, m: p.mkdir(), "cannot be read (Is a directory)"),
    (_symlink_loop, "cannot be read (Too many levels of symbolic links)"),
    (lambda p, m: None, "missing"),
], ids=["payload", "random_bytes", "plain_pickle", "list", "non_tensor", "truncated", "directory",
        "symlink_loop", "missing"])
def test_weights_files_that_do_not_load_are_one_line_naming_the_file_and_fix(tmp_path, make, what):
    from harness.errors import DataError
    from harness.safeload import load_state_dict_file

    path, marker = tmp_path / "w.pt", tmp_path / "PAYLOAD_RAN"
    make(path, marker)
    with pytest.raises(DataError) as info:
        load_state_dict_file(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and what in message, message
    assert "torch.save(model.state_dict(), PATH)" in message
    assert "\n" not in message and len(message) - len(str(path)) < 260 and "weights_only=False" not in message
    assert not marker.exists()


def test_a_planted_viz_encoder_never_runs(finished, tmp_path, capsys):
    _, store, keys, _ = finished
    folder = tmp_path / "enc"
    shutil.copytree(store / "stages" / "encoder" / keys["encoder"], folder)
    marker = tmp_path / "PAYLOAD_RAN"
    plant_payload(folder / "encoder.pt", marker)
    result = cli(capsys, "viz", "similarity", "--encoder", str(folder), "--dataset", "synthetic",
                 "--set", "image_size=32", "--set", "images_per_fold=8", "--set",
                 "unlabeled_images=0", "--image", "fold1/0000", "--points", "4,4",
                 "--store", str(store), "--output", str(tmp_path / "sim.png"))
    assert_one_line_error(result, 3, str(folder / "encoder.pt"), "Python objects")
    assert not marker.exists()


def test_every_torch_load_goes_through_the_safe_loader():
    """The guard behind the tests above: no other module calls torch.load (or pickle.load)."""
    offenders = []
    for path in sorted((REPO / "harness").rglob("*.py")) + sorted((REPO / "plugins").rglob("*.py")):
        text = path.read_text()
        if path.name != "safeload.py" and re.search(r"torch\.load\(|pickle\.loads?\(", text):
            offenders.append(str(path.relative_to(REPO)))
    assert offenders == []
    assert "weights_only=True" in (REPO / "harness" / "safeload.py").read_text()


def test_a_checkpoint_loads_with_weights_only(tmp_path):
    """RNG states are stored as tensors, ints and lists, so the safe loader restores them."""
    import random

    from harness.engine.runtime import Checkpoint

    ckpt = Checkpoint(tmp_path)
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    ckpt.save({"epoch": 4, "history": []})
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    assert torch.load(ckpt.path, weights_only=True)["epoch"] == 4
    assert ckpt.load(required=("epoch",))["epoch"] == 4
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected
    assert pickle  # (the payload helper pickles through torch.save)
