"""The ``slurm`` executor on a real SLURM cluster: the one-node cluster that
``scripts/slurm-local.sh`` starts (``.ci/run`` runs it as root). Without a cluster every test
here skips, saying why."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from support import REPO
from executor_specs import harness, one_cell, records, stage_count, train_summary


def _cluster_problem() -> str | None:
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return "no SLURM client (sinfo/sbatch); start one with `sudo scripts/slurm-local.sh`"
    try:
        proc = subprocess.run(["sinfo", "-h", "-o", "%a %t"], capture_output=True, text=True,
                              timeout=20)
    except subprocess.TimeoutExpired:
        return "sinfo timed out: slurmctld does not answer (scripts/slurm-local.sh)"
    if proc.returncode != 0:
        return f"sinfo failed: {proc.stderr.strip()[:200]} (start the cluster: scripts/slurm-local.sh)"
    if not any(ln.startswith("up") and ln.split()[-1].rstrip("*") in ("idle", "mix", "alloc")
               for ln in proc.stdout.splitlines()):
        return f"no partition up with a usable node: {proc.stdout.strip()[:200]}"
    return None


PROBLEM = _cluster_problem()
pytestmark = [pytest.mark.slurm, pytest.mark.skipif(PROBLEM is not None, reason=f"SLURM: {PROBLEM}")]

SLURM = "execution: {executor: slurm, cpus_per_job: 1, time_min: 20, poll_s: 1, signal_delay_s: 60}"


def _env(store):
    return {**os.environ, "HARNESS_STORE": str(store), "COLUMNS": "250",
            "HARNESS_CHECKPOINT_EVERY_S": "1", "OMP_NUM_THREADS": "1"}


def _driver(spec, store, out):
    cmd = [sys.executable, "-m", "harness.cli", "run", str(spec), "--store", str(store),
           "--output", str(out), "--quiet"]
    log = open(out.parent / "driver.log", "w")  # a file, not a pipe nobody reads while it runs
    proc = subprocess.Popen(cmd, env=_env(store), cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    proc.log = out.parent / "driver.log"
    return proc


def _output(driver) -> str:
    return driver.log.read_text(errors="replace")[-3000:]


def _wait(condition, driver, seconds=600):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if condition():
            return
        if driver.poll() is not None:
            pytest.fail(f"driver ended ({driver.returncode}): {_output(driver)}")
        time.sleep(0.5)
    driver.kill()
    pytest.fail(f"timed out: {_output(driver)}")


def _state(job: str) -> str:
    proc = subprocess.run(["squeue", "-h", "-t", "all", "-j", job, "-o", "%T"], capture_output=True,
                          text=True, timeout=30)
    return proc.stdout.strip()


def _jobs(store):
    states = list((store / "executors" / "slurm").glob("*.json"))
    return json.loads(states[0].read_text())["jobs"] if states else {}


def _checkpoint(store):
    return next((store / "work" / "finetune").glob("*/checkpoint.pt"), None) \
        if (store / "work" / "finetune").exists() else None


def test_spec_end_to_end_on_slurm(tmp_path):
    spec = one_cell(tmp_path, execution=SLURM)
    store = tmp_path / "s"
    # the driver at the jobs' thread count: the records' provenance names its device
    proc = harness("run", str(spec), "--output", str(tmp_path / "out"), "--quiet", store=store,
                   threads=1)
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr)
    assert "1 cells; 3 stages computed, 0 reused" in proc.stdout
    local = harness("run", str(spec), "--executor", "local", "--output", str(tmp_path / "local"),
                    "--quiet", store=tmp_path / "s2", threads=1)
    assert local.returncode == 0, local.stderr
    assert records(tmp_path / "out") == records(tmp_path / "local")


def test_requeued_job_resumes_from_its_checkpoint(tmp_path):
    """`scontrol requeue` of the fine-tuning job once it has written a checkpoint: SLURM stops
    it (SIGTERM: the loop checkpoints), runs it again, and the stage resumes."""
    spec = one_cell(tmp_path, epochs=60, execution=SLURM)
    store = tmp_path / "s"
    driver = _driver(spec, store, tmp_path / "out")
    _wait(lambda: _checkpoint(store) is not None, driver)
    [job] = [v["job_id"] for k, v in _jobs(store).items() if not (store / "stages" / "encoder" / k).exists()]
    subprocess.run(["scontrol", "requeue", job], check=True, timeout=30)
    # SLURM holds a requeued job back for a while (BeginTime); let it start at once
    _wait(lambda: _state(job) == "PENDING", driver, 120)
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True, timeout=30)
    driver.wait(timeout=1200)
    assert driver.returncode == 0, _output(driver)
    assert train_summary(store)["resumed_from_epoch"] > 0
    assert stage_count(store) == 3


def test_restarted_driver_finds_finished_stages_and_running_jobs(tmp_path):
    spec = one_cell(tmp_path, epochs=300, execution=SLURM)
    store = tmp_path / "s"
    driver = _driver(spec, store, tmp_path / "out")
    # the fine-tuning job is training (long enough to outlast the restart)
    _wait(lambda: len(_jobs(store)) == 2 and _checkpoint(store) is not None, driver)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    env = _env(store)
    again = subprocess.run([sys.executable, "-m", "harness.cli", "run", str(spec), "--store",
                            str(store), "--output", str(tmp_path / "out"), "--quiet"],
                           env=env, cwd=REPO, capture_output=True, text=True, timeout=1200)
    assert again.returncode == 0, (again.stdout[-3000:], again.stderr)
    log = again.stdout + again.stderr  # the log is on stderr
    assert "submitted encoder" not in log and "submitted finetune" not in log
    assert "reattached finetune" in log
    assert "1 cells; 2 stages computed, 1 reused" in again.stdout
