"""``pool``: N worker processes on this machine. By default one per visible GPU, each pinned with
``CUDA_VISIBLE_DEVICES``; without GPUs (or with ``device: cpu``), N CPU workers, each with its
share of the CPU threads (``OMP_NUM_THREADS``, which also sets torch's intra-op threads).

Every stage whose inputs are in the store starts as soon as a worker is free. A worker starts
once (imports, plan) and runs each stage in a forked child, as ``harness stage run`` would
(:mod:`harness.execute.pool_worker`), so a crash of one stage leaves the driver and the others
running. A failed stage stops the stages that need it; the others go on; the run then exits
non-zero with a summary. Ctrl-C or SIGTERM is forwarded to the workers (their training loops
checkpoint); finished stages stay in the store. With every stage done, records and report are
written as the ``local`` executor writes them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field

from harness.console import console
from harness.errors import StagesFailed
from harness.execute.base import Executor, ExecutorConfig, shown, stage_command
from harness.execute.graph import drive
from harness.hookspecs import hookimpl


class PoolConfig(ExecutorConfig):
    workers: int | None = Field(None, ge=1, le=4096, description="worker processes; default: one "
                                "per visible GPU, else the CPUs divided by `threads`")
    threads: int | None = Field(None, ge=1, le=4096, description="CPU threads of a CPU worker; "
                                "default: the CPUs split evenly among the workers (at least 1)")
    stop_grace_s: float = Field(120.0, ge=0, description="how long an interrupted worker may take "
                                "to write its checkpoint before it is killed")


def visible_gpus(device: str) -> list[str]:
    """The GPU ids a worker can be pinned to (none when the spec asks for the CPU)."""
    if device == "cpu":
        return []
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip() and g.strip() != "-1"]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def worker_slots(config: PoolConfig, device: str) -> list[dict[str, str]]:
    """One environment per worker: its GPU, or its CPU-thread budget."""
    gpus = visible_gpus(device)
    cpus = os.cpu_count() or 1
    if gpus:
        n = config.workers or len(gpus)
        threads = config.threads or max(1, cpus // n)
        return [{"CUDA_VISIBLE_DEVICES": gpus[i % len(gpus)], "OMP_NUM_THREADS": str(threads),
                 "MKL_NUM_THREADS": str(threads)} for i in range(n)]
    n = config.workers or max(1, cpus // (config.threads or 2))
    threads = config.threads or max(1, cpus // n)
    return [{"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": str(threads),
             "MKL_NUM_THREADS": str(threads)} for _ in range(n)]


def describe_slot(env: dict[str, str], i: int) -> str:
    gpu = env.get("CUDA_VISIBLE_DEVICES")
    return f"worker {i} (GPU {gpu})" if gpu else f"worker {i} ({env['OMP_NUM_THREADS']} threads)"


@dataclass
class _Job:
    stage: Any
    slot: int
    proc: subprocess.Popen
    log: Path
    started: float


class ProcessLauncher:
    """Stages as ``harness stage run`` subprocesses, one per free slot (the pool now runs
    stages on persistent workers, :mod:`harness.execute.pool_launch`; this one stays for stages
    that need a process of their own, e.g. ``--nproc N`` under torchrun)."""

    def __init__(self, runner: Any, slots: list[dict[str, str]], logs: Path, grace_s: float):
        self.runner, self.slots, self.logs, self.grace_s = runner, slots, logs, grace_s
        self.capacity = len(slots)
        self.free = list(range(len(slots)))

    def start(self, stages: list[Any]) -> list[_Job]:
        self.logs.mkdir(parents=True, exist_ok=True)
        jobs = []
        for stage in stages:
            slot = self.free.pop(0)
            cmd = stage_command(self.runner, stage)
            log = self.logs / f"{stage.kind}-{stage.key[:12]}.log"
            with open(log, "ab") as fh:
                fh.write(f"$ {shown(cmd)}\n".encode())
                fh.flush()
                # its own session: the driver alone decides what a worker is sent (one SIGTERM)
                proc = subprocess.Popen(cmd, env={**os.environ, **self.slots[slot]}, stdout=fh,
                                        stderr=subprocess.STDOUT, start_new_session=True)
            console.log(f"  start {stage.kind} {stage.label} on {describe_slot(self.slots[slot], slot)}")
            jobs.append(_Job(stage, slot, proc, log, time.time()))
        return jobs

    def poll(self, job: _Job) -> tuple[int, str] | None:
        rc = job.proc.poll()
        if rc is None:
            return None
        self.free.append(job.slot)
        return rc, f"exit {rc}: {last_line(job.log)} (log: {job.log})"

    def stop(self, jobs: list[_Job]) -> None:
        for job in jobs:
            if job.proc.poll() is None:
                job.proc.send_signal(signal.SIGTERM)
        deadline = time.time() + self.grace_s
        for job in jobs:
            try:
                job.proc.wait(timeout=max(0.0, deadline - time.time()))
            except subprocess.TimeoutExpired:
                job.proc.kill()
                job.proc.wait()


def last_line(log: Path) -> str:
    try:
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "(no log)"
    return lines[-1][:300] if lines else "(empty log)"


class PoolExecutor(Executor):
    name = "pool"
    description = "worker processes on this machine: one per GPU, or CPU workers with a thread budget"
    Config = PoolConfig

    def slots(self, runner: Any) -> list[str]:
        envs = worker_slots(self.config, runner.rspec.spec.finetune.device)
        return [describe_slot(env, i) for i, env in enumerate(envs)]

    def run(self, runner: Any, plan: Any) -> Any:
        envs = worker_slots(self.config, runner.rspec.spec.finetune.device)
        console.log(f"pool: {len(envs)} workers: {', '.join(self.slots(runner))}")
        from harness.execute.pool_launch import WorkerLauncher

        launcher = WorkerLauncher(runner, envs, Path(runner.output_dir) / "logs",
                                  self.config.stop_grace_s)
        try:
            outcome = drive(plan, runner.store, launcher)
        finally:
            launcher.close()
        if outcome.failed:
            raise StagesFailed(outcome.summary(), outcome.codes)
        return runner.run(plan, computed_elsewhere=outcome.computed)


@hookimpl
def harness_register_executors():
    return [PoolExecutor]
