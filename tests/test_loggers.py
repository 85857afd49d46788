"""The built-in loggers on a tiny synthetic run, read back with the libraries' own readers
(TensorBoard's EventAccumulator, MlflowClient on the run's SQLite store); a logger that fails
warns once and never fails the run or loses a result."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from support import run_cli, write_spec

SPEC = """
name: tiny_logged
dataset: {name: synthetic, image_size: 32, images_per_fold: 8, unlabeled_images: 0}
methods: [scratch]
protocols: [frozen]
folds: [fold1]
finetune: {epochs: 2, batch_size: 8, eval_batch_size: 16}
"""
CELL = "scratch__frozen__frac1__fold1__seed0"


@pytest.fixture(scope="module")
def logged_run(tmp_path_factory):
    """One run with both loggers: tensorboard from the spec's ``loggers:``, mlflow by --logger."""
    pytest.importorskip("tensorboard")
    pytest.importorskip("mlflow")
    tmp = tmp_path_factory.mktemp("logged")
    spec = write_spec(tmp, SPEC + "loggers: [tensorboard]\n")
    out = tmp / "out"
    proc = run_cli("run", str(spec), "--store", str(tmp / "store"), "--output", str(out),
                   "--logger", "mlflow", "--quiet", env={"MLFLOW_TRACKING_URI": ""})
    assert proc.returncode == 0, proc.stderr
    assert "warning: logger" not in proc.stderr, proc.stderr
    record = json.loads((out / "records" / f"{CELL}.json").read_text())
    return out, record


def _scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_stage_curves_results_and_cell_metrics(logged_run):
    out, record = logged_run
    root = out / "tensorboard"
    stages = {s["kind"]: s for s in record["stages"]}
    ft = stages["finetune"]
    ft_dir, = (root / "finetune").glob(f"*-{ft['key'][:8]}")
    curves = _scalars(ft_dir)
    loss = curves["train/loss"]
    assert [step for step, _ in loss] == [2, 4]  # one mean per epoch, at its global step
    assert loss[0][1] == pytest.approx(record["train"]["first_loss"], rel=1e-6)
    assert loss[-1][1] == pytest.approx(record["train"]["final_loss"], rel=1e-6)
    assert curves["result/final_loss"][0][1] == pytest.approx(record["train"]["final_loss"], rel=1e-6)
    assert {"encoder", "finetune", "evaluate"} <= {p.name for p in root.iterdir()}

    cell = _scalars(root / "cells" / CELL)
    assert cell["headline/mpq"][0][1] == pytest.approx(record["metric"]["value"], abs=1e-7)
    bpq = record["metrics"]["instance"]["bpq"]
    assert cell["metrics/instance/bpq"][0][1] == pytest.approx(bpq, abs=1e-7)

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = EventAccumulator(str(root / "run"))
    run.Reload()
    assert {"spec/text_summary", "report/text_summary"} <= set(run.Tags()["tensors"])


def test_mlflow_parent_run_nested_stage_and_cell_runs(logged_run):
    from mlflow import MlflowClient

    out, record = logged_run
    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tiny_logged")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1
    parent = parents[0]
    assert parent.data.tags["harness.spec"] == "tiny_logged" and parent.info.status == "FINISHED"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == len(runs) - 1 == 4  # encoder, finetune, evaluate, one cell
    assert all(r.info.status == "FINISHED" for r in runs)

    by_key = {r.data.tags.get("harness.stage.key"): r for r in children}
    ft = next(s for s in record["stages"] if s["kind"] == "finetune")
    ft_run = by_key[ft["key"]]
    assert ft_run.data.tags["harness.stage.kind"] == "finetune"
    assert ft_run.data.tags["harness.stage.cached"] == "false"
    history = client.get_metric_history(ft_run.info.run_id, "train/loss")
    assert [m.step for m in sorted(history, key=lambda m: m.step)] == [2, 4]
    assert sorted(history, key=lambda m: m.step)[-1].value == pytest.approx(record["train"]["final_loss"])

    cell, = [r for r in children if r.data.tags.get("harness.cell_id") == CELL]
    tags = cell.data.tags
    assert (tags["harness.method"], tags["harness.protocol"], tags["harness.fold"],
            tags["harness.seed"], tags["harness.fraction"]) == ("scratch", "frozen", "fold1", "0", "1.0")
    assert tags["harness.stage.finetune"] == ft["key"]
    assert cell.data.metrics["headline/mpq"] == pytest.approx(record["metric"]["value"])
    assert cell.data.metrics["metrics/instance/bpq"] == pytest.approx(record["metrics"]["instance"]["bpq"])

    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert {"report/report.md", "report/report.json"} <= artifacts
    assert "spec.json" in {a.path for a in client.list_artifacts(parent.info.run_id)}


def test_failing_loggers_warn_once_and_the_run_keeps_every_result(tmp_path):
    """An unwritable log folder (under a file) and a tracking server that is down."""
    pytest.importorskip("tensorboard")
    pytest.importorskip("mlflow")
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    spec = write_spec(tmp_path, SPEC.replace("epochs: 2", "epochs: 1") + (
        f"loggers:\n  tensorboard: {{log_dir: {blocker / 'tb'}}}\n"
        "  mlflow: {tracking_uri: 'http://127.0.0.1:9'}\n"))
    out = tmp_path / "out"
    proc = run_cli("run", str(spec), "--store", str(tmp_path / "store"), "--output", str(out),
                   "--quiet", env={"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
                                   "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"})
    assert proc.returncode == 0, proc.stderr
    err = " ".join(proc.stderr.split())  # rich wraps long log lines
    assert err.count("warning: logger 'tensorboard' failed") == 1, proc.stderr
    assert err.count("warning: logger 'mlflow' failed") == 1, proc.stderr
    assert (out / "records" / f"{CELL}.json").is_file() and (out / "report.md").is_file()
    assert "1 cells; 3 stages computed" in proc.stdout


# --- the session: names, settings, libraries, the guard (no training) -------------------------

def _registry_with(*classes):
    from harness.plugins import PluginInfo, build_registry

    registry = build_registry()
    for cls in classes:
        registry.loggers[cls.name] = PluginInfo(cls.name, "logger", "logger", cls, "tests", "0", cls.name)
    return registry


def test_a_logger_that_raises_mid_run_is_off_after_one_warning_the_others_go_on(tmp_path, capsys):
    from harness.loggers import Logger, LoggerSession

    seen = []

    class Flaky(Logger):
        name = "flaky"

        def metrics_logged(self, event):
            if event.step == 2:
                raise OSError(28, "No space left on device")
            seen.append(("flaky", event.step))

    class Steady(Logger):
        name = "steady"

        def metrics_logged(self, event):
            seen.append(("steady", event.step))

    registry = _registry_with(Flaky, Steady)
    session = LoggerSession(registry, {"flaky": {}, "steady": {}}, tmp_path)
    stage = {"kind": "finetune", "key": "k", "label": "ft"}
    with session:
        for step in (1, 2, 3):
            registry.hook.harness_metrics_logged(stage=stage, step=step, metrics={"loss": 1.0})
    assert seen == [("flaky", 1), ("steady", 1), ("steady", 2), ("steady", 3)]
    assert list(session.failed) == ["flaky"] and "No space left" in session.failed["flaky"]
    assert not registry.pm.is_registered(session)  # detached after the run
    assert capsys.readouterr().err.count("logger 'flaky' failed") == 1


def test_unknown_logger_missing_library_and_bad_settings_fail_before_any_work(tmp_path):
    from harness.errors import PluginError, SpecError
    from harness.loggers import Logger, LoggerSession

    class NeedsLib(Logger):
        name = "needslib"
        requires = ("no_such_module_for_a_logger",)
        install_hint = "pip install no-such-module"

    registry = _registry_with(NeedsLib)
    with pytest.raises(PluginError, match="logger plugin 'tensorbord' is not installed.*tensorboard"):
        LoggerSession(registry, {"tensorbord": {}}, tmp_path)
    with pytest.raises(PluginError, match="needs no_such_module_for_a_logger.*pip install no-such-module"):
        LoggerSession(registry, {"needslib": {}}, tmp_path)
    with pytest.raises(SpecError, match="unknown key"):
        LoggerSession(registry, {"mlflow": {"trackinguri": "x"}}, tmp_path)


def test_spec_loggers_are_validated_and_part_of_no_stage_key(tmp_path):
    from harness.spec import load_spec

    bad = write_spec(tmp_path, SPEC + "loggers:\n  tensorbord: null\n  mlflow: {trackinguri: x}\n")
    proc = run_cli("validate", str(bad))
    assert proc.returncode == 2
    assert "loggers.tensorbord: unknown logger (did you mean 'tensorboard'?)" in proc.stderr
    assert "loggers.mlflow.trackinguri: unknown key (did you mean 'tracking_uri'?)" in proc.stderr
    plain = load_spec(write_spec(tmp_path, SPEC, "plain.yaml"))
    logged = load_spec(write_spec(tmp_path, SPEC + "loggers: [tensorboard]\n", "logged.yaml"))
    assert "loggers" not in plain.resolved() and logged.resolved()["loggers"] == {"tensorboard": None}
    assert {k: v for k, v in logged.resolved().items() if k != "loggers"} == plain.resolved()
