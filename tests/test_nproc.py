"""``gpus_per_stage`` / ``harness run --nproc N``: which stages get N processes, the pool's GPU
groups, the spec errors, the dry run's ``where``, and (slow) a real run whose fine-tune trains
in 2 gloo processes under torchrun."""

from __future__ import annotations

import json

import pytest
from executor_specs import harness, one_cell, processes_of, records, stage_count

from harness.execute.base import stage_processes
from harness.execute.pool import PoolConfig, describe_slot, worker_slots
from harness.plugins import build_registry


def test_pool_workers_hold_gpus_per_stage_gpus_each(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)  # the pool divides the CPUs
    envs = worker_slots(PoolConfig(gpus_per_stage=2), "auto", gpus=["0", "1", "2", "3"], cpus=16)
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["0,1", "2,3"]
    assert [e["OMP_NUM_THREADS"] for e in envs] == ["8", "8"]  # a worker's budget, split by torchrun
    assert describe_slot(envs[1], 1) == "worker 1 (GPUs 2,3)"
    # one GPU per stage: one worker per GPU, as before
    one = worker_slots(PoolConfig(), "auto", gpus=["0", "1", "2", "3"], cpus=16)
    assert [e["CUDA_VISIBLE_DEVICES"] for e in one] == ["0", "1", "2", "3"]
    # 3 GPUs, 2 per stage: one worker (GPU 2 idle); CPU: workers of at least 2 threads
    assert [e["CUDA_VISIBLE_DEVICES"] for e in
            worker_slots(PoolConfig(gpus_per_stage=2), "auto", gpus=["0", "1", "2"], cpus=4)] == ["0,1"]
    cpu = worker_slots(PoolConfig(gpus_per_stage=4), "cpu", gpus=[], cpus=16)
    assert len(cpu) == 4 and {e["OMP_NUM_THREADS"] for e in cpu} == {"4"}


def test_only_training_stage_kinds_get_several_processes():
    registry = build_registry()

    class Runner:
        pass

    runner = Runner()
    runner.registry = registry

    class Stage:
        def __init__(self, kind):
            self.kind = kind

    got = {k: stage_processes(runner, Stage(k), 4) for k in registry.stage_kinds}
    assert {k for k, n in got.items() if n == 4} == {"pretrain", "finetune", "labeler", "semisup"}
    assert {n for n in got.values()} == {1, 4}
    assert stage_processes(runner, Stage("pretrain"), 1) == 1


def test_gpus_per_stage_errors_are_one_line_spec_errors(tmp_path):
    bad = one_cell(tmp_path, execution="execution: {gpus_per_stage: 0}")
    proc = harness("run", str(bad), "--dry-run", store=tmp_path / "s")
    assert proc.returncode == 2, proc.stderr
    assert "execution.gpus_per_stage" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert "Traceback" not in proc.stderr
    spec = one_cell(tmp_path, name="ok.yaml")
    # more GPUs per stage than visible: pool and local stop before any work
    for executor in ("pool", "local"):
        proc = run_cli_gpus(spec, tmp_path, "--executor", executor, "--nproc", "2")
        assert proc.returncode == 2, (executor, proc.stderr)
        assert proc.stderr.startswith("error: execution.gpus_per_stage: 2 ") and "1" in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    proc = harness("run", str(spec), "--nproc", "0", "--dry-run", store=tmp_path / "s")
    assert proc.returncode == 2 and "--nproc" in proc.stderr
    # slurm: gpus_per_job and gpus_per_stage must agree
    clash = one_cell(tmp_path, name="clash.yaml", execution="execution: {executor: slurm, "
                     "gpus_per_job: 4, gpus_per_stage: 2}")
    proc = harness("validate", str(clash), store=tmp_path / "s")
    assert proc.returncode == 2 and "gpus_per_job 4 and gpus_per_stage 2 disagree" in proc.stderr


def run_cli_gpus(spec, tmp_path, *args):
    from support import run_cli

    env = {"HARNESS_STORE": str(tmp_path / "s"), "CUDA_VISIBLE_DEVICES": "0", "COLUMNS": "250"}
    return run_cli("run", str(spec), "--dry-run", *args, env=env)


def test_dry_run_shows_processes_per_stage_and_keys_do_not_change(tmp_path):
    spec = one_cell(tmp_path)
    plain = harness("run", str(spec), "--dry-run", store=tmp_path / "s")
    two = harness("run", str(spec), "--dry-run", "--nproc", "2", store=tmp_path / "s")
    assert plain.returncode == 0 and two.returncode == 0, two.stderr
    rows = {ln.split("│")[2].strip(): ln.split("│")[5].strip()
            for ln in two.stdout.splitlines() if ln.count("│") > 6 and "wave" not in ln}
    assert rows == {"encoder": "this process", "finetune": "2 processes (gloo, CPU)",
                    "evaluate": "this process"}, two.stdout
    keys = lambda out: [ln.split("│")[4].strip() for ln in out.splitlines() if ln.count("│") > 6]  # noqa: E731
    assert keys(plain.stdout) == keys(two.stdout)
    # the common setting survives --executor choosing another executor than the spec's
    pool = one_cell(tmp_path, name="p.yaml", execution="execution: {executor: pool, workers: 1, "
                    "gpus_per_stage: 2}")
    proc = harness("run", str(pool), "--executor", "local", "--dry-run", store=tmp_path / "s")
    assert proc.returncode == 0 and "2 processes (gloo, CPU)" in proc.stdout, proc.stderr
    slurm = one_cell(tmp_path, name="sl.yaml", execution="execution: {executor: slurm, cluster: local}")
    proc = harness("run", str(slurm), "--nproc", "2", "--dry-run", store=tmp_path / "s")
    assert proc.returncode == 0, proc.stderr
    # training jobs get gpus_per_stage GPUs, the others one
    assert "job (2 CPUs, 2 GPUs), 2 processes" in proc.stdout and "job (2 CPUs, 1 GPUs) " in proc.stdout


@pytest.mark.slow
def test_local_run_trains_the_fine_tune_in_two_processes(tmp_path):
    """``harness run --nproc 2``: the encoder and the evaluation in the driver, the fine-tune in
    2 gloo processes under torchrun; the records are those of a one-process run's structure and
    the fine-tune's meta says world size 2."""
    spec = one_cell(tmp_path)
    store = tmp_path / "s"
    proc = harness("run", str(spec), "--nproc", "2", "--output", str(tmp_path / "two"), "--quiet",
                   store=store, threads=2)
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    assert "1 cells; 3 stages computed, 0 reused" in proc.stdout
    assert stage_count(store) == 3
    worlds = {p.parent.parent.name: json.loads(p.read_text())["provenance"]["world_size"]
              for p in (store / "stages").glob("*/*/meta.json")}
    assert worlds == {"encoder": 1, "finetune": 2, "evaluate": 1}
    one = harness("run", str(spec), "--output", str(tmp_path / "one"), "--quiet",
                  store=tmp_path / "s1", threads=2)
    assert one.returncode == 0, one.stderr
    a, b = records(tmp_path / "two"), records(tmp_path / "one")
    assert a.keys() == b.keys() and len(a) == 1
    [ra], [rb] = a.values(), b.values()
    assert _shape(ra) == _shape(rb)
    assert (tmp_path / "two" / "report.md").exists()
    assert "2 processes" in proc.stderr  # the driver said where the fine-tune ran


def _shape(data):
    if isinstance(data, dict):
        return {k: _shape(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_shape(v) for v in data[:1]]
    return type(data).__name__


@pytest.mark.slow
def test_sigterm_to_the_driver_checkpoints_the_training_processes(tmp_path):
    """SIGTERM to ``harness run --nproc 2``: the fine-tune's processes checkpoint and stop, the
    driver exits 130 and no process of the run is left; the checkpoint stays for a rerun."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    from support import REPO

    spec = one_cell(tmp_path, epochs=400)
    store = tmp_path / "s"
    env = {**os.environ, "HARNESS_STORE": str(store), "HARNESS_CHECKPOINT_EVERY_S": "1"}
    cmd = [sys.executable, "-m", "harness.cli", "run", str(spec), "--nproc", "2", "--store",
           str(store), "--output", str(tmp_path / "out"), "--quiet"]
    driver = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=open(tmp_path / "driver.log", "w"),
                              stderr=subprocess.STDOUT)
    work = store / "work" / "finetune"
    deadline = time.time() + 600
    while time.time() < deadline and not (list(work.glob("*/checkpoint.pt")) if work.exists() else []):
        assert driver.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
        time.sleep(0.5)
    driver.send_signal(signal.SIGTERM)
    driver.wait(timeout=300)
    log = (tmp_path / "driver.log").read_text()
    assert driver.returncode == 130, log[-3000:]
    assert "SIGTERM: checkpoint" in log, log[-3000:]
    assert stage_count(store, "encoder") == 1 and stage_count(store, "finetune") == 0
    assert list(work.glob("*/checkpoint.pt"))
    time.sleep(1)
    left = processes_of(spec)
    assert not left, left


@pytest.mark.slow
@pytest.mark.parametrize("execution", ["execution: {executor: pool, threads: 1}",
                                       "execution: {executor: slurm, cluster: local, poll_s: 0.5}"])
def test_pool_and_slurm_run_the_training_stage_under_torchrun(tmp_path, execution):
    """The same with a pool worker and a (submitit-local) SLURM job: the training stage's
    command carries ``--nproc 2``."""
    spec = one_cell(tmp_path, execution=execution)
    store = tmp_path / "s"
    proc = harness("run", str(spec), "--nproc", "2", "--output", str(tmp_path / "out"), "--quiet",
                   store=store, threads=2)
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    worlds = {p.parent.parent.name: json.loads(p.read_text())["provenance"]["world_size"]
              for p in (store / "stages").glob("*/*/meta.json")}
    assert worlds == {"encoder": 1, "finetune": 2, "evaluate": 1}
    assert len(records(tmp_path / "out")) == 1
