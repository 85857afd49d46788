"""``pool``: N worker processes on this machine. By default one per visible GPU, each pinned with
``CUDA_VISIBLE_DEVICES``; without GPUs (or with ``device: cpu``), N CPU workers, each with its
share of the CPU threads (``OMP_NUM_THREADS``, which also sets torch's intra-op threads). With
``gpus_per_stage: G`` a worker holds G GPUs (by default visible GPUs // G workers) and runs a
training stage as ``harness stage run --nproc G`` (exec'd by its worker's child), which splits the worker's threads among
its G processes; on the CPU the G processes are gloo ones.

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
from pathlib import Path
from typing import Any

from pydantic import Field

from harness.console import console
from harness.errors import SpecError, StagesFailed
from harness.execute.base import Executor, ExecutorConfig
from harness.execute.graph import drive
from harness.execute.pool_launch import WorkerLauncher, describe_slot, last_line  # noqa: F401
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
        launcher = WorkerLauncher(runner, envs, Path(runner.output_dir) / "logs",
                                  self.config.stop_grace_s, self.nproc)
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
