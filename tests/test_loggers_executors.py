"""Loggers see every stage wherever it is computed: the stage's process writes its events as JSON
lines in its work folder and the driver forwards them (harness/execute/stage_events.py).
TensorBoard and MLflow, read back with their own readers, get the same training curves (same
tags, same steps) under ``local``, ``pool``, the SLURM executor on the local cluster and
``--nproc 2``; a stage reused from the store fires its finished event once, marked cached."""

from __future__ import annotations

from pathlib import Path

import pytest

from support import run_cli, write_spec
from executor_specs import records

SPEC = """
name: logged_exec
dataset: {name: synthetic, image_size: 32, images_per_fold: 8, unlabeled_images: 0}
methods: [scratch]
protocols: [full]
folds: [fold1]
finetune: {encoder: resnet18, epochs: 2, batch_size: 8, eval_batch_size: 8}
metric: {name: mpq, pq_variant: instance}
"""


# --- the forwarding itself (no training) --------------------------------------------------

class _Stage:
    def __init__(self, key: str):
        self.kind, self.key, self.label = "finetune", key, f"ft {key}"


class _Store:
    def __init__(self, root: Path):
        self.root = root

    def work_dir(self, kind, key):
        return self.root / "work" / kind / key

    def stage_dir(self, kind, key):
        return self.root / "stages" / kind / key

    def is_done(self, kind, key):
        return (self.stage_dir(kind, key) / "meta.json").exists()


class _Hooks:
    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        return lambda **kwargs: self.calls.append((name, kwargs))


def test_events_are_forwarded_as_they_arrive_once_and_after_the_file_moves(tmp_path):
    """Whole lines only (a half-written one waits), an earlier attempt's lines are skipped, the
    rest is read from the published folder, and a finished event reaches the hooks once."""
    from harness.execute.stage_events import EventForwarder, StageEvents

    store, hooks, stage = _Store(tmp_path), _Hooks(), _Stage("k1")
    work = store.work_dir(stage.kind, stage.key)
    info = {"kind": stage.kind, "key": stage.key, "label": stage.label}
    StageEvents(work).emit("harness_metrics_logged", stage=info, step=1, metrics={"loss": 9.0})
    forwarder = EventForwarder(hooks, store)
    forwarder.watch(stage)  # the attempt before this one: not forwarded
    events = StageEvents(work)
    events.emit("harness_stage_started", stage=info)
    events.emit("harness_metrics_logged", stage=info, step=2, metrics={"loss": 1.5, "nan": float("nan")})
    with open(events.path, "a") as fh:
        fh.write('{"hook": "harness_metrics_logged", "stage"')  # a line being written
    forwarder.poll()
    assert [name for name, _ in hooks.calls] == ["harness_stage_started", "harness_metrics_logged"]
    assert hooks.calls[1][1] == {"stage": info, "step": 2, "metrics": {"loss": 1.5, "nan": None}}
    with open(events.path, "a") as fh:
        fh.write(': {}, "step": 3, "metrics": {}}\n')
        fh.write('{"hook": "os.system", "command": "no"}\nnot json\n')  # never called
    out = tmp_path / "tmp-out"
    out.mkdir()
    events.emit("harness_stage_finished", stage={**info, "cached": False, "seconds": 1.0})
    events.publish(out)
    (out / "meta.json").write_text("{}")
    store.stage_dir(stage.kind, stage.key).parent.mkdir(parents=True)
    out.rename(store.stage_dir(stage.kind, stage.key))
    forwarder.done(stage)
    assert [name for name, _ in hooks.calls[2:]] == ["harness_metrics_logged", "harness_stage_finished"]
    forwarder.dispatch("harness_stage_finished", {"stage": {**info, "cached": True}})
    assert len(hooks.calls) == 4 and forwarder.finished == {"k1"}


def test_a_stage_reused_from_the_store_fires_its_finished_event_once_marked_cached(tmp_path):
    """Two runs of the same spec in this process, an observer plugin counting the events."""
    from harness.hookspecs import hookimpl
    from harness.plugins import get_registry
    from harness.runner import Runner
    from harness.spec import load_spec
    from harness.store import ArtifactStore

    seen = []

    class Observer:
        @hookimpl
        def harness_stage_started(self, event):
            seen.append(("started", event.key, None))

        @hookimpl
        def harness_stage_finished(self, event):
            seen.append(("finished", event.key, event.cached))

        @hookimpl
        def harness_metrics_logged(self, event):
            seen.append(("metrics", event.key, event.step))

    spec = write_spec(tmp_path, SPEC.replace("epochs: 2", "epochs: 1"))
    registry = get_registry()
    observer = Observer()
    registry.pm.register(observer)
    try:
        runs = []
        for name in ("first", "second"):
            runner = Runner(load_spec(spec), registry, ArtifactStore(tmp_path / "store"),
                            tmp_path / name, quiet=True)
            plan = runner.plan()[0]
            seen.clear()
            runner.run(plan)
            runs.append(list(seen))
    finally:
        registry.pm.unregister(observer)
    keys = [s.key for s in plan.stages()]
    first, second = runs
    assert [e for e in first if e[0] == "finished"] == [("finished", k, False) for k in keys]
    assert [e for e in first if e[0] == "started"] == [("started", k, None) for k in keys]
    assert [e for e in first if e[0] == "metrics"] == [("metrics", keys[1], 2)]  # its one epoch
    assert second == [("finished", k, True) for k in keys]


# --- the same curves under every executor -----------------------------------------------------

def _logged_run(tmp: Path, *args: str, env: dict | None = None) -> Path:
    pytest.importorskip("tensorboard")
    pytest.importorskip("mlflow")
    spec = write_spec(tmp, SPEC)
    out = tmp / "out"
    proc = run_cli("run", str(spec), "--store", str(tmp / "store"), "--output", str(out),
                   "--logger", "tensorboard", "--logger", "mlflow", "--quiet", *args,
                   env={"MLFLOW_TRACKING_URI": "", "OMP_NUM_THREADS": "1", "COLUMNS": "250",
                        **(env or {})}, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "warning: logger" not in proc.stderr, proc.stderr
    return out


def curves(out: Path) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """``{stage kind: {tag: [(step, value)]}}`` from TensorBoard and from MLflow (the training
    curves only, which is what a stage's process logs), checked to agree."""
    from mlflow import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for folder in (out / "tensorboard").glob("*/*-*"):
        if folder.parent.name in ("cells", "run"):
            continue
        acc = EventAccumulator(str(folder))
        acc.Reload()
        tb[folder.parent.name] = {t: [(e.step, e.value) for e in acc.Scalars(t)]
                                  for t in acc.Tags()["scalars"]
                                  if not t.startswith("result/") and t != "seconds"}
    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("logged_exec")
    ml: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for run in client.search_runs([experiment.experiment_id]):
        kind = run.data.tags.get("harness.stage.kind")
        if kind is None:
            continue
        assert run.data.tags["harness.stage.cached"] == "false"  # computed in this run, once
        ml[kind] = {}
        for tag in run.data.metrics:
            if tag.startswith("result/") or tag == "seconds":
                continue
            history = sorted(client.get_metric_history(run.info.run_id, tag), key=lambda m: m.step)
            ml[kind][tag] = [(m.step, m.value) for m in history]
    assert set(ml) == {"encoder", "finetune", "evaluate"}  # one MLflow run per stage
    tb = {k: v for k, v in tb.items() if v}
    assert _shape(tb) == _shape(ml)  # TensorBoard keeps float32: values to its precision
    for kind, tags in tb.items():
        for tag, points in tags.items():
            assert [v for _, v in points] == pytest.approx([v for _, v in ml[kind][tag]], rel=1e-6)
    return tb


def _shape(found: dict) -> dict[str, dict[str, list[int]]]:
    return {kind: {tag: [step for step, _ in points] for tag, points in tags.items()}
            for kind, tags in found.items() if tags}


@pytest.fixture(scope="module")
def local_curves(tmp_path_factory):
    out = _logged_run(tmp_path_factory.mktemp("local"))
    found = curves(out)
    assert _shape(found)["finetune"] == {"train/loss": [2, 4], "train/lr": [2, 4], "epoch": [2, 4]}
    return found, records(out)


@pytest.mark.slow  # a pool worker starts (imports torch, plans) before its stages: ~1 min here
def test_pool_gives_the_loggers_the_curves_local_gives(local_curves, tmp_path):
    out = _logged_run(tmp_path, "--executor", "pool", "--set", "execution.workers=2")
    assert curves(out) == local_curves[0]  # one thread each: the same values too
    assert records(out) == {k: {**v, "overrides": ["execution.workers=2"]}
                            for k, v in local_curves[1].items()}


@pytest.mark.slow  # torchrun and two gloo processes per training stage
def test_nproc_2_gives_the_loggers_rank_zeros_curves(local_curves, tmp_path):
    out = _logged_run(tmp_path, "--nproc", "2", "--set", "finetune.device=cpu")
    assert _shape(curves(out)) == _shape(local_curves[0])  # two processes: other values


@pytest.mark.slurm
def test_slurm_jobs_give_the_loggers_the_curves_local_gives(local_curves, tmp_path):
    from test_slurm_cluster import PROBLEM

    if PROBLEM is not None:
        pytest.skip(f"SLURM: {PROBLEM}")
    out = _logged_run(tmp_path, "--executor", "slurm", "--set", "execution.cpus_per_job=1",
                      "--set", "execution.poll_s=1", env={"HARNESS_STORE": str(tmp_path / "store")})
    assert curves(out) == local_curves[0]
