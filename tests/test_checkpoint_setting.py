"""The checkpoint interval is a runtime setting of the spec (``execution.checkpoint_every_s``),
in no stage key; ``$HARNESS_CHECKPOINT_EVERY_S``, when set, wins over it."""

from __future__ import annotations

import json

import pytest
import yaml

from hostile import assert_one_line_error, cli

SPEC = {"name": "t", "dataset": {"name": "synthetic", "image_size": 32, "images_per_fold": 4,
                                 "unlabeled_images": 0},
        "methods": ["scratch"], "protocols": ["full"], "folds": ["fold1"],
        "finetune": {"epochs": 1, "batch_size": 4}}


def _spec(tmp_path, every=None) -> str:
    data = dict(SPEC)
    if every is not None:
        data["execution"] = {"checkpoint_every_s": every}
    path = tmp_path / f"spec{every}.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_spec_setting_env_wins_default_300(monkeypatch):
    from harness.execute.in_process import checkpoint_every_s
    from harness.spec.models import ExecutionSettings

    class S:
        execution = ExecutionSettings(checkpoint_every_s=12.5)

    monkeypatch.delenv("HARNESS_CHECKPOINT_EVERY_S", raising=False)
    assert checkpoint_every_s(S) == 12.5
    S.execution = ExecutionSettings()
    assert checkpoint_every_s(S) == 300.0
    S.execution = ExecutionSettings(checkpoint_every_s=12.5)
    monkeypatch.setenv("HARNESS_CHECKPOINT_EVERY_S", "0")
    assert checkpoint_every_s(S) == 0.0


def test_the_setting_reaches_each_stage_and_enters_no_key(tmp_path, capsys, monkeypatch):
    from harness.execute import in_process

    seen = []
    real = in_process.StageContext
    monkeypatch.setattr(in_process, "StageContext",
                        lambda **kw: seen.append(kw["checkpoint_every_s"]) or real(**kw))
    monkeypatch.delenv("HARNESS_CHECKPOINT_EVERY_S", raising=False)
    store = str(tmp_path / "store")
    plans = [json.loads(cli(capsys, "run", _spec(tmp_path, every), "--dry-run", "--json",
                            "--store", store).out) for every in (None, 7)]
    assert [s["key"] for s in plans[0]["stages"]] == [s["key"] for s in plans[1]["stages"]]
    result = cli(capsys, "run", _spec(tmp_path, 7), "--quiet", "--store", store,
                 "--output", str(tmp_path / "out"))
    assert result.code == 0, result.err
    assert seen and set(seen) == {7.0}, seen


@pytest.mark.parametrize("value", ["abc", "-1", "inf"])
def test_a_bad_environment_value_is_one_line(tmp_path, capsys, monkeypatch, value):
    monkeypatch.setenv("HARNESS_CHECKPOINT_EVERY_S", value)
    result = cli(capsys, "run", _spec(tmp_path), "--quiet", "--store", str(tmp_path / "store"),
                 "--output", str(tmp_path / "out"))
    assert_one_line_error(result, 2, f"$HARNESS_CHECKPOINT_EVERY_S='{value}'",
                          "execution.checkpoint_every_s")


def test_a_bad_spec_value_is_a_spec_error(tmp_path, capsys):
    result = cli(capsys, "validate", _spec(tmp_path, -5))
    assert result.code == 2 and "execution.checkpoint_every_s" in result.err, result.err
