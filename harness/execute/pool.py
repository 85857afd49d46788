"""``pool``: N worker processes on this machine. By default one per visible GPU, each pinned with
``CUDA_VISIBLE_DEVICES``; without GPUs (or with ``device: cpu``), N CPU workers, each with its
share of the CPU threads (``OMP_NUM_THREADS``, which also sets torch's intra-op threads). Each
worker runs on its own share of the CPUs (affinity, where the platform has it). With
``gpus_per_stage: G`` a worker holds G GPUs (by default visible GPUs // G workers) and runs a
training stage as ``harness stage run --nproc G`` (exec'd by its worker's child), which splits the worker's threads among
its G processes; on the CPU the G processes are gloo ones.

Every stage whose inputs are in the store starts as soon as a worker is free. A worker starts
once (imports, plan) and runs each stage in a forked child, as ``harness stage run`` would
(:mod:`harness.execute.pool_worker`), so a crash of one stage leaves the driver and the others
running. A failed stage stops the stages that need it; the others go on; the run then exits
non-zero with a summary. Ctrl-C or SIGTERM is forwarded to the workers (their training loops
checkpoint); finished stages stay in the store. Each stage's events (its training curves)
reach the driver's loggers through its work folder (:mod:`harness.execute.stage_events`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import Field

from harness.console import console
from harness.errors import SpecError, StagesFailed
from harness.execute.base import Executor, ExecutorConfig, StageOutcome, outcomes_from_store
from harness.execute.graph import drive
from harness.execute.pool_launch import WorkerLauncher, describe_slot
from harness.hookspecs import hookimpl

if TYPE_CHECKING:
    from harness.execute.base import RunView
    from harness.execute.stage_events import EventForwarder
    from harness.plan import Stage


class PoolConfig(ExecutorConfig):
    workers: int | None = Field(None, ge=1, le=4096, description="worker processes; default: one "
                                "per visible GPU, else the CPUs divided by `threads`")
    threads: int | None = Field(None, ge=1, le=4096, description="CPU threads of a CPU worker; "
                                "default: the CPUs split evenly among the workers (at least 1)")
    stop_grace_s: float = Field(120.0, ge=0, description="how long an interrupted worker may take "
                                "to write its checkpoint before it is killed")


def visible_gpus(device: str) -> list[str]:
    """The GPU ids a worker can be pinned to (none when the spec asks for the CPU; only GPU N,
    as this process numbers them, for ``cuda:N``)."""
    if device == "cpu":
        return []
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        gpus = [g.strip() for g in env.split(",") if g.strip() and g.strip() != "-1"]
    else:
        import torch

        gpus = [str(i) for i in range(torch.cuda.device_count())]
    if device.startswith("cuda:"):
        index = int(device[5:])
        if index >= len(gpus):
            raise SpecError(f"finetune.device is '{device}' but {len(gpus)} GPU(s) are visible; "
                            f"use device: auto (every GPU) or cuda:0..cuda:{max(0, len(gpus) - 1)}")
        return [gpus[index]]
    return gpus


def thread_budget(config: PoolConfig) -> int | None:
    """A worker's CPU threads as the user set them: ``execution.threads``, else an explicit
    ``OMP_NUM_THREADS`` (so ``local`` and ``pool`` compute with the same threads and give the
    same records); None: the pool divides the CPUs."""
    env = os.environ.get("OMP_NUM_THREADS", "")
    if config.threads:
        return config.threads
    return int(env) if env.isdigit() and int(env) > 0 else None


def allowed_cpus() -> list[int] | None:
    """The CPUs this process may run on; None where the platform cannot say (not Linux)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:
        return None


def cpu_shares(n: int, cpus: list[int]) -> list[list[int]]:
    """``cpus`` split among ``n`` workers: contiguous, disjoint shares whose sizes differ by at
    most one; with fewer CPUs than workers, worker i gets CPU i mod len(cpus)."""
    if n > len(cpus):
        return [[cpus[i % len(cpus)]] for i in range(n)]
    size, extra = divmod(len(cpus), n)
    bounds = [i * size + min(i, extra) for i in range(n + 1)]
    return [cpus[bounds[i]:bounds[i + 1]] for i in range(n)]


def _pinned(envs: list[dict[str, str]], affinity: list[int] | None) -> list[dict[str, str]]:
    """Each worker's share of the CPUs as ``HARNESS_POOL_CPUS`` (its affinity, set by
    :func:`harness.execute.pool_worker.pin_cpus`); unchanged where the affinity is unknown."""
    if not affinity:
        return envs
    shares = cpu_shares(len(envs), affinity)
    return [{**env, "HARNESS_POOL_CPUS": ",".join(map(str, share))}
            for env, share in zip(envs, shares)]


def worker_slots(config: PoolConfig, device: str, gpus: list[str] | None = None,
                 cpus: int | None = None, affinity: list[int] | None = None) -> list[dict[str, str]]:
    """One environment per worker: its ``gpus_per_stage`` GPUs, or its CPU-thread budget (a
    training stage's processes share it), and its share of the CPUs (affinity).
    ``gpus``/``cpus``/``affinity``: this machine's by default."""
    gpus = visible_gpus(device) if gpus is None else gpus
    affinity = allowed_cpus() if affinity is None else affinity
    cpus = cpus or (len(affinity) if affinity else os.cpu_count()) or 1
    per, budget = config.gpus_per_stage, thread_budget(config)
    if gpus:
        if per > len(gpus):
            raise SpecError(f"execution.gpus_per_stage: {per} GPUs per stage, but {len(gpus)} "
                            f"visible (CUDA_VISIBLE_DEVICES={','.join(gpus)}); use at most "
                            f"{len(gpus)} (or --nproc {len(gpus)})")
        groups = [",".join(gpus[i * per:(i + 1) * per]) for i in range(len(gpus) // per)]
        n = config.workers or len(groups)
        threads = budget or max(1, cpus // n)
        # HARNESS_POOL_GPUS: the worker sees the spec's GPU(s) as cuda:0.. (runtime.resolve_device)
        return _pinned([{"CUDA_VISIBLE_DEVICES": groups[i % len(groups)], "OMP_NUM_THREADS": str(threads),
                         "MKL_NUM_THREADS": str(threads), "HARNESS_POOL_GPUS": groups[i % len(groups)],
                         "HARNESS_POOL_WORKERS": str(n)} for i in range(n)], affinity)
    n = config.workers or max(1, cpus // max(budget or 2, per))
    threads = budget or max(1, cpus // n)
    return _pinned([{"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": str(threads),
                     "MKL_NUM_THREADS": str(threads), "HARNESS_POOL_WORKERS": str(n)}
                    for _ in range(n)], affinity)


class PoolExecutor(Executor):
    name = "pool"
    description = "worker processes on this machine: one per GPU, or CPU workers with a thread budget"
    Config = PoolConfig

    def slots(self, runner: RunView) -> list[str]:
        envs = worker_slots(self.config, runner.rspec.spec.finetune.device)
        return [describe_slot(env, i) for i, env in enumerate(envs)]

    def run(self, runner: RunView, stages: list[Stage], events: EventForwarder
            ) -> dict[str, StageOutcome]:
        envs = worker_slots(self.config, runner.rspec.spec.finetune.device)
        console.log(f"pool: {len(envs)} workers: {', '.join(self.slots(runner))}")
        omp = os.environ.get("OMP_NUM_THREADS")
        if self.config.threads and omp and omp != str(self.config.threads):
            console.log(f"pool: execution.threads {self.config.threads} overrides "
                        f"OMP_NUM_THREADS={omp} in the workers")
        launcher = WorkerLauncher(runner, envs, Path(runner.output_dir) / "logs",
                                  self.config.stop_grace_s, self.nproc)
        try:
            outcome = drive(stages, runner.store, launcher, events)
        finally:
            launcher.close()
        if outcome.failed:
            raise StagesFailed(outcome.summary(), outcome.codes)
        return outcomes_from_store(runner.store, stages, outcome.computed)


@hookimpl
def harness_register_executors():
    return [PoolExecutor]
