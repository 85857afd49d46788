"""``pool``: N worker processes on this machine. By default one per visible GPU, each pinned with
``CUDA_VISIBLE_DEVICES``; without GPUs (or with ``device: cpu``), N CPU workers, each with its
share of the CPU threads (``OMP_NUM_THREADS``, which also sets torch's intra-op threads). With
``gpus_per_stage: G`` a worker holds G GPUs (by default visible GPUs // G workers) and runs a
training stage as ``harness stage run --nproc G``, which splits the worker's threads among
its G processes; on the CPU the G processes are gloo ones.

Every stage whose inputs are in the store starts as soon as a worker is free, as a
``harness stage run`` subprocess (so a crash of one stage leaves the driver and the others
running). A failed stage stops the stages that need it; the others go on; the run then exits
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
from harness.errors import SpecError, StagesFailed
from harness.execute.base import Executor, ExecutorConfig, shown, stage_command, stage_processes
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


def worker_slots(config: PoolConfig, device: str, gpus: list[str] | None = None,
                 cpus: int | None = None) -> list[dict[str, str]]:
    """One environment per worker: its ``gpus_per_stage`` GPUs, or its CPU-thread budget (a
    training stage's processes share it). ``gpus``/``cpus``: this machine's by default."""
    gpus = visible_gpus(device) if gpus is None else gpus
    cpus = cpus or os.cpu_count() or 1
    per = config.gpus_per_stage
    if gpus:
        if per > len(gpus):
            raise SpecError(f"execution.gpus_per_stage: {per} GPUs per stage, but {len(gpus)} "
                            f"visible (CUDA_VISIBLE_DEVICES={','.join(gpus)}); use at most "
                            f"{len(gpus)} (or --nproc {len(gpus)})")
        groups = [",".join(gpus[i * per:(i + 1) * per]) for i in range(len(gpus) // per)]
        n = config.workers or len(groups)
        threads = config.threads or max(1, cpus // n)
        return [{"CUDA_VISIBLE_DEVICES": groups[i % len(groups)], "OMP_NUM_THREADS": str(threads),
                 "MKL_NUM_THREADS": str(threads)} for i in range(n)]
    n = config.workers or max(1, cpus // max(config.threads or 2, per))
    threads = config.threads or max(1, cpus // n)
    return [{"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": str(threads),
             "MKL_NUM_THREADS": str(threads)} for _ in range(n)]


def describe_slot(env: dict[str, str], i: int) -> str:
    gpu = env.get("CUDA_VISIBLE_DEVICES")
    if gpu:
        return f"worker {i} (GPU{'s' if ',' in gpu else ''} {gpu})"
    return f"worker {i} ({env['OMP_NUM_THREADS']} threads)"


@dataclass
class _Job:
    stage: Any
    slot: int
    proc: subprocess.Popen
    log: Path
    started: float


class ProcessLauncher:
    """Stages as ``harness stage run`` subprocesses, one per free slot."""

    def __init__(self, runner: Any, slots: list[dict[str, str]], logs: Path, grace_s: float,
                 nproc: int = 1):
        self.runner, self.slots, self.logs, self.grace_s = runner, slots, logs, grace_s
        self.nproc = nproc  # processes of a training stage (gpus_per_stage)
        self.capacity = len(slots)
        self.free = list(range(len(slots)))

    def start(self, stages: list[Any]) -> list[_Job]:
        self.logs.mkdir(parents=True, exist_ok=True)
        jobs = []
        for stage in stages:
            slot = self.free.pop(0)
            cmd = stage_command(self.runner, stage,
                                nproc=stage_processes(self.runner, stage, self.nproc))
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
        launcher = ProcessLauncher(runner, envs, Path(runner.output_dir) / "logs",
                                   self.config.stop_grace_s, self.nproc)
        outcome = drive(plan, runner.store, launcher)
        if outcome.failed:
            raise StagesFailed(outcome.summary(), outcome.codes)
        return runner.run(plan, computed_elsewhere=outcome.computed)


@hookimpl
def harness_register_executors():
    return [PoolExecutor]
