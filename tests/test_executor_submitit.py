"""The ``slurm`` executor's driver through submitit's local executor (``cluster: local``): real
subprocess jobs, time limits and requeues on this machine, no SLURM needed. The same tests on a
real cluster: test_slurm_cluster.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support import REPO
from executor_specs import harness, one_cell, records, stage_count, train_summary

pytestmark = pytest.mark.slow

LOCAL = "execution: {{executor: slurm, cluster: local, poll_s: 0.5, time_min: {time_min}, " \
        "signal_delay_s: {delay}, max_requeues: 20}}"


def test_slurm_driver_end_to_end_with_local_jobs(tmp_path):
    spec = one_cell(tmp_path, execution=LOCAL.format(time_min=30, delay=60))
    store = tmp_path / "s"
    # the driver at the jobs' thread count: the records' provenance names its device
    proc = harness("run", str(spec), "--output", str(tmp_path / "out"), "--quiet", store=store,
                   threads=1)
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr)
    assert "1 cells; 3 stages computed, 0 reused" in proc.stdout
    assert (proc.stdout + proc.stderr).count("submitted") == 3  # the log is on stderr
    [state] = (store / "executors" / "slurm").glob("*.json")
    assert json.loads(state.read_text()) == {"jobs": {}}  # finished jobs are forgotten
    # the same records as in process
    local = harness("run", str(spec), "--executor", "local", "--output", str(tmp_path / "local"),
                    "--quiet", store=tmp_path / "s2", threads=1)
    assert local.returncode == 0, local.stderr
    assert records(tmp_path / "out") == records(tmp_path / "local")


def test_preempted_job_is_requeued_and_resumes_from_the_checkpoint(tmp_path):
    """The fine-tuning job gets submitit's preemption/time-limit signal (USR2, what SLURM sends
    ahead of a time limit, and what submitit's own LocalJob._interrupt sends) once it trains:
    the stage checkpoints, the job is requeued and resumes, and the run finishes."""
    spec = one_cell(tmp_path, epochs=60, execution=LOCAL.format(time_min=30, delay=60))
    store = tmp_path / "s"
    log = tmp_path / "driver.log"
    env = {**os.environ, "HARNESS_STORE": str(store), "HARNESS_CHECKPOINT_EVERY_S": "1"}
    driver = subprocess.Popen([sys.executable, "-m", "harness.cli", "run", str(spec), "--store",
                               str(store), "--output", str(tmp_path / "out"), "--quiet"],
                              env=env, cwd=REPO, stdout=open(log, "w"), stderr=subprocess.STDOUT)
    work = store / "work" / "finetune"
    deadline = time.time() + 600
    while not (work.exists() and any(work.glob("*/checkpoint.pt"))):
        assert driver.poll() is None and time.time() < deadline, log.read_text()[-3000:]
        time.sleep(0.5)
    [state] = (store / "executors" / "slurm").glob("*.json")
    job = [v["job_id"] for k, v in json.loads(state.read_text())["jobs"].items()
           if not (store / "stages" / "encoder" / k).exists()][0]
    # the job's process: the child of submitit's local controller (whose pid is the job id)
    [task] = Path(f"/proc/{job}/task/{job}/children").read_text().split()
    os.kill(int(task), signal.SIGUSR2)
    driver.wait(timeout=900)
    assert driver.returncode == 0, log.read_text()[-3000:]
    assert train_summary(store)["resumed_from_epoch"] > 0
    logs = "".join(p.read_text(errors="replace") for p in (tmp_path / "out" / "slurm").rglob("*_log.*"))
    assert "this job is preempted" in logs and "Requeued job" in logs, logs[-3000:]


def _job_processes(job: str) -> list[int]:
    """The local job ``job`` (its controller's pid) and its task processes."""
    return [int(job)] + [int(p) for p in Path(f"/proc/{job}/task/{job}/children").read_text().split()]


def test_restarted_driver_reattaches_to_running_jobs(tmp_path):
    """The driver is killed while a job runs; a new driver finds the finished stage in the
    store, waits for the running job (its id from the JSON state) instead of resubmitting it.

    The job is held (SIGSTOP) from before the kill until the new driver has reattached, so it
    cannot finish first however slow the machine: the test once timed out at a load of 10 when
    the job, sized in epochs to outlast the restart, checkpointed every second for 300 epochs."""
    spec = one_cell(tmp_path, epochs=100, execution=LOCAL.format(time_min=30, delay=60))
    store = tmp_path / "s"
    env = {**os.environ, "HARNESS_STORE": str(store), "COLUMNS": "250"}
    cmd = [sys.executable, "-m", "harness.cli", "run", str(spec), "--store", str(store),
           "--output", str(tmp_path / "out"), "--quiet"]
    log = tmp_path / "driver.log"  # a file, not a pipe nobody reads while it runs
    driver = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=open(log, "w"), stderr=subprocess.STDOUT)
    state_dir = store / "executors" / "slurm"
    deadline = time.time() + 600
    while time.time() < deadline:
        states = list(state_dir.glob("*.json")) if state_dir.exists() else []
        jobs = json.loads(states[0].read_text())["jobs"] if states else {}
        finetune_job = [v["job_id"] for k, v in jobs.items() if not (store / "stages" / "encoder" / k).exists()]
        work = store / "work" / "finetune"
        if len(jobs) == 2 and len(finetune_job) == 1 and work.exists() and any(work.glob("*/events.jsonl")):
            held = _job_processes(finetune_job[0])
            if len(held) > 1:  # the job's task runs its stage: hold it
                break
        time.sleep(0.5)
    else:
        driver.kill()
        pytest.fail(log.read_text()[-3000:])
    for pid in held:
        os.kill(pid, signal.SIGSTOP)
    try:
        driver.send_signal(signal.SIGKILL)
        driver.wait()
        log2 = tmp_path / "driver2.log"
        again = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=open(log2, "w"), stderr=subprocess.STDOUT)
        deadline = time.time() + 600
        while "reattached finetune" not in log2.read_text() and again.poll() is None and time.time() < deadline:
            time.sleep(0.5)
    finally:
        for pid in held:
            os.kill(pid, signal.SIGCONT)
    again.wait(timeout=1800)
    text = log2.read_text()
    assert again.returncode == 0, text[-3000:]
    assert f"job {finetune_job[0]}" in text and "reattached finetune" in text
    assert "submitted finetune" not in text  # not computed twice
    assert "1 cells; 2 stages computed, 1 reused" in text
