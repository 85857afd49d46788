"""``slurm``: each ready stage becomes a SLURM job (through submitit) that runs
``harness stage run`` against the shared store; stages that are ready together are submitted
as one job array (``executor.batch()``).

Jobs that reach their time limit or are preempted are requeued by submitit and resume from the
stage's checkpoint (:mod:`harness.execute.slurm_job`). The driver can be stopped and started
again: finished stages are found in the store, and the ids of jobs in flight are kept in a
small JSON file in the store (``executors/slurm/<run>.json``), so a restarted driver waits for
them instead of submitting them twice. submitit's own job files (its pickles and the jobs'
logs) go to ``folder`` (default: ``<run folder>/slurm``), which must be on a filesystem the
nodes share, like the store.

With ``gpus_per_stage: N`` (``--nproc N``) a training stage's job asks for N GPUs on one node
(``gpus_per_job``'s default) and runs ``harness stage run --nproc N`` (torchrun inside the job,
``--standalone``: jobs never span nodes); other stages' jobs ask for one GPU at most.

``cluster: local`` runs the same jobs through submitit's local executor (real subprocesses,
time limits and requeues on this machine), which is how the tests drive it without SLURM.
"""

from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, model_validator

from harness.console import console
from harness.errors import StagesFailed, UsageError
from harness.execute.base import Executor, ExecutorConfig, StageOutcome, outcomes_from_store, stage_command
from harness.execute.graph import drive
from harness.hookspecs import hookimpl
from harness.store import atomic_write_json, hash_key

if TYPE_CHECKING:
    from harness.execute.base import RunView
    from harness.execute.stage_events import EventForwarder
    from harness.plan import Stage

ACTIVE = {"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "RESIZING",
          "SUSPENDED", "REQUEUE_HOLD", "REQUEUE_FED", "SIGNALING", "STAGE_OUT", "UNKNOWN"}


class SlurmConfig(ExecutorConfig):
    partition: str | None = Field(None, description="sbatch --partition (default: the cluster's)")
    account: str | None = Field(None, description="sbatch --account")
    gpus_per_job: int | None = Field(None, ge=0, le=64, description="GPUs of each stage's job "
                                     "(0: CPU jobs); default: gpus_per_stage when over 1 (unless "
                                     "finetune.device is cpu), else 0")
    cpus_per_job: int = Field(2, ge=1, le=1024, description="CPUs of each stage's job (also its "
                              "OMP_NUM_THREADS)")
    mem_gb: float | None = Field(None, gt=0, description="memory of each job (default: the cluster's)")
    time_min: int = Field(240, ge=1, description="time limit of one job; a stage that needs longer "
                          "is requeued and resumes from its checkpoint")
    max_requeues: int = Field(5, ge=0, le=1000, description="time-limit requeues of one stage")
    signal_delay_s: int = Field(120, ge=1, description="seconds before the time limit that the job "
                                "is told to checkpoint")
    sbatch: dict[str, str | int | bool] = Field(default_factory=dict, description="extra sbatch "
                                                "options, e.g. {qos: high, constraint: a100}")
    setup: list[str] = Field(default_factory=list, description="shell lines each job runs first "
                             "(module load ...)")
    max_jobs: int = Field(256, ge=1, description="jobs in flight at once")
    array: bool = Field(True, description="stages ready together go as one job array")
    folder: str | None = Field(None, description="submitit's job folder (shared); default "
                               "<run folder>/slurm")
    cluster: Literal["slurm", "local"] = Field("slurm", description="local: submitit's local "
                                               "executor (subprocess jobs here; for testing)")
    poll_s: float = Field(5.0, gt=0, le=600, description="seconds between checks of the jobs")

    @model_validator(mode="after")
    def _gpus_agree(self) -> "SlurmConfig":
        both = {"gpus_per_job", "gpus_per_stage"} <= self.model_fields_set
        if both and self.gpus_per_job not in (0, self.gpus_per_stage):
            raise ValueError(f"gpus_per_job {self.gpus_per_job} and gpus_per_stage "
                             f"{self.gpus_per_stage} disagree (a training stage's job gets "
                             f"gpus_per_stage GPUs); drop gpus_per_job, or set it to "
                             f"{self.gpus_per_stage} (0: CPU jobs with gloo processes)")
        return self


class SlurmExecutor(Executor):
    name = "slurm"
    description = "each stage a SLURM job via submitit; requeue on time limit/preemption"
    Config = SlurmConfig

    def gpus(self, runner: RunView, nproc: int) -> int:
        """GPUs of the job of a stage in ``nproc`` processes."""
        c = self.config
        gpus = c.gpus_per_job if c.gpus_per_job is not None else (
            c.gpus_per_stage if c.gpus_per_stage > 1 and runner.rspec.spec.finetune.device != "cpu"
            else 0)
        return gpus if nproc > 1 or c.gpus_per_stage == 1 else min(gpus, 1)

    def _where(self, gpus: int) -> str:
        c = self.config
        return f"job ({c.cpus_per_job} CPUs{f', {gpus} GPUs' if gpus else ''}" \
               f"{f', {c.partition}' if c.partition else ''})"

    def slots(self, runner: RunView) -> list[str]:
        return [self._where(self.gpus(runner, 1))] * self.config.max_jobs

    def where(self, runner: RunView, stage: Stage, slot: str) -> str:
        n = self.processes(runner, stage)
        return slot if n == 1 else f"{self._where(self.gpus(runner, n))}, {n} processes"

    def submitit_executor(self, runner: RunView, gpus: int = 0) -> Any:
        try:
            import submitit
        except ImportError:
            raise UsageError("--executor slurm needs submitit: pip install 'pathbench-harness[slurm]'"
                             " (or pip install submitit)") from None
        c = self.config
        folder = Path(c.folder) if c.folder else Path(runner.output_dir) / "slurm"
        if c.cluster == "local":  # submitit's local executor, its own parameter names
            ex = submitit.LocalExecutor(folder=folder.resolve() / "%j", max_num_timeout=c.max_requeues)
            ex.update_parameters(timeout_min=c.time_min, gpus_per_node=gpus,
                                 signal_delay_s=c.signal_delay_s)
            return ex
        # submitit asks sacct for job states and warns at every poll where the cluster keeps no
        # accounting; the driver also reads squeue and the result files (see queue_state)
        logging.getLogger("submitit").setLevel(logging.ERROR)
        ex = submitit.AutoExecutor(folder=folder.resolve() / "%j", cluster="slurm",
                                   slurm_max_num_timeout=c.max_requeues)
        params: dict[str, Any] = {"timeout_min": c.time_min, "gpus_per_node": gpus, "nodes": 1,
                                  "cpus_per_task": c.cpus_per_job, "name": f"harness-{runner.rspec.name}",
                                  "slurm_signal_delay_s": c.signal_delay_s,
                                  "slurm_additional_parameters": dict(c.sbatch),
                                  "slurm_setup": list(c.setup), "slurm_array_parallelism": c.max_jobs}
        if c.partition:
            params["slurm_partition"] = c.partition
        if c.account:
            params["slurm_account"] = c.account
        if c.mem_gb:
            params["mem_gb"] = c.mem_gb
        ex.update_parameters(**params)
        return ex

    def run(self, runner: RunView, stages: list[Stage], events: EventForwarder
            ) -> dict[str, StageOutcome]:
        state = JobState(runner)
        launcher = JobLauncher(self, runner, state)
        outcome = drive(stages, runner.store, launcher, events, running=launcher.reattach(stages),
                        poll_s=self.config.poll_s, on_start=launcher.started)
        state.forget(outcome.computed)
        if outcome.failed:
            raise StagesFailed(outcome.summary(), outcome.codes)
        return outcomes_from_store(runner.store, stages, outcome.computed)


class JobState:
    """``<store>/executors/slurm/<run>.json``: stage key -> job id and folder (JSON only)."""

    def __init__(self, runner: RunView):
        ident = hash_key({"spec": str(Path(runner.rspec.source).resolve()),
                          "overrides": runner.rspec.overrides, "output": str(runner.output_dir)}, 12)
        self.path = Path(runner.store.root) / "executors" / "slurm" / f"{runner.rspec.name}-{ident}.json"
        self.jobs: dict[str, dict[str, str]] = {}
        if self.path.exists():
            import json

            try:
                data = json.loads(self.path.read_text())
                self.jobs = {str(k): {"job_id": str(v["job_id"]), "folder": str(v["folder"]),
                                      "cluster": str(v["cluster"])}
                             for k, v in data.get("jobs", {}).items()}
            except (ValueError, KeyError, TypeError, AttributeError):
                console.log(f"{self.path}: unreadable job state, ignored")

    def save(self) -> None:
        atomic_write_json(self.path, {"jobs": self.jobs})

    def forget(self, keys: list[str]) -> None:
        for key in keys:
            self.jobs.pop(key, None)
        self.save()


class JobLauncher:
    def __init__(self, executor: SlurmExecutor, runner: RunView, state: JobState):
        self.executor, self.runner, self.state = executor, runner, state
        self.capacity = executor.config.max_jobs
        self._ex: dict[int, Any] = {}  # GPUs per job -> its submitit executor

    def ex(self, gpus: int) -> Any:
        if gpus not in self._ex:
            self._ex[gpus] = self.executor.submitit_executor(self.runner, gpus)
        return self._ex[gpus]

    def _job(self, stage: Stage, nproc: int) -> Any:
        from harness.execute.slurm_job import StageJob

        c = self.executor.config
        # the job's threads: `stage run --nproc` splits them among its processes
        return StageJob(stage_command(self.runner, stage, absolute=True, nproc=nproc), stage.label,
                        threads=c.cpus_per_job, grace_s=max(10.0, c.signal_delay_s * 0.75))

    def start(self, stages: list[Stage]) -> list[Any]:
        groups: dict[int, list[tuple[int, Any, int]]] = {}  # GPUs -> (position, stage, nproc)
        for i, stage in enumerate(stages):
            n = self.executor.processes(self.runner, stage)
            groups.setdefault(self.executor.gpus(self.runner, n), []).append((i, stage, n))
        jobs: list[Any] = [None] * len(stages)
        for gpus, members in groups.items():
            ex = self.ex(gpus)
            if self.executor.config.array and len(members) > 1:
                with ex.batch():
                    submitted = [ex.submit(self._job(s, n)) for _, s, n in members]
            else:
                submitted = [ex.submit(self._job(s, n)) for _, s, n in members]
            for (i, _, _), job in zip(members, submitted):
                jobs[i] = job
        return [(s, j) for s, j in zip(stages, jobs)]

    def started(self, stages: list[Stage], handles: list[Any]) -> None:
        for stage, (_, job) in zip(stages, handles):
            console.log(f"  submitted {stage.kind} {stage.label}: job {job.job_id}")
            self.state.jobs[stage.key] = {"job_id": str(job.job_id), "folder": str(job.paths.folder),
                                          "cluster": self.executor.config.cluster}
        self.state.save()

    def reattach(self, stages: list[Stage]) -> dict[str, Any]:
        """Jobs of a previous driver that are still queued or running: waited for, not resubmitted."""
        found = {}
        for stage in stages:
            entry = self.state.jobs.get(stage.key)
            if entry is None or self.runner.store.is_done(stage.kind, stage.key):
                continue
            job = _reattached(entry)
            if job is not None:
                console.log(f"  reattached {stage.kind} {stage.label}: job {entry['job_id']}")
                found[stage.key] = (stage, job)
        return found

    def poll(self, handle: Any) -> tuple[int, str] | None:
        stage, job = handle
        if not job.done() and not _left_queue(job):
            return None
        if self.runner.store.is_done(stage.kind, stage.key):
            return 0, ""
        if _requeued(job):  # a result of an earlier attempt; SLURM runs the job again
            return None
        message = _job_error(job)
        match = re.search(r"exited (\d+)", message)
        return (int(match.group(1)) if match else 1), f"job {job.job_id}: {message}"

    def stop(self, handles: list[Any]) -> None:
        # Jobs are the cluster's: a stopped driver leaves them running; a restart reattaches.
        if handles:
            console.log(f"driver stopped: {len(handles)} job(s) keep running; rerun the same "
                        f"command to wait for them")


class _PidJob:
    """A local job of a previous driver: alive while its controller process is."""

    def __init__(self, job_id: str):
        self.job_id, self.pid = job_id, int(job_id)

    def done(self) -> bool:
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return _zombie(self.pid)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True


def queue_state(job_id: str) -> str | None:
    """The job's state by ``squeue`` (which also lists jobs that ended in the last MinJobAge
    seconds); None when SLURM does not know it. submitit asks ``sacct``, which a cluster
    without accounting storage cannot answer; the result file and this cover that case."""
    import subprocess

    try:
        proc = subprocess.run(["squeue", "-h", "-t", "all", "-j", str(job_id), "-o", "%T"],
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "UNKNOWN"
    states = [ln.strip().upper() for ln in proc.stdout.splitlines() if ln.strip()]
    if proc.returncode != 0 and "Invalid job id" not in proc.stderr:
        return "UNKNOWN"
    return states[0] if states else None


def submitit_local_job() -> type:
    from submitit.local.local import LocalJob

    return LocalJob


def _left_queue(job: Any) -> bool:
    """A SLURM job no longer queued or running (ended without a result file: cancelled, or
    killed with its node)."""
    if isinstance(job, _PidJob) or not hasattr(job, "watcher"):
        return False
    if isinstance(job, submitit_local_job()):
        return False
    now = time.time()
    if now - _checked.get(job.job_id, 0.0) < QUEUE_CHECK_S:  # one squeue per job per 30 s
        return False
    _checked[job.job_id] = now
    state = queue_state(job.job_id)
    return state not in ACTIVE


def _requeued(job: Any) -> bool:
    if isinstance(job, (_PidJob, submitit_local_job())):
        return False
    return queue_state(job.job_id) in ACTIVE - {"UNKNOWN", "COMPLETING"}


QUEUE_CHECK_S = 30.0
_checked: dict[str, float] = {}


def _reattached(entry: dict[str, str]) -> Any | None:
    if entry["cluster"] == "local":
        job = _PidJob(entry["job_id"])
        return None if job.done() else job
    import submitit

    if queue_state(entry["job_id"]) not in ACTIVE:
        return None
    return submitit.SlurmJob(folder=entry["folder"], job_id=entry["job_id"])


def _job_error(job: Any) -> str:
    if isinstance(job, _PidJob):
        return "its job ended without publishing the stage"
    if not job.paths.result_pickle.exists():
        state = "gone" if isinstance(job, submitit_local_job()) else queue_state(job.job_id)
        return f"job ended ({state or 'gone from the queue'}) without a result; its log: {job.paths.stderr}"
    try:
        job.result()
    except Exception as exc:  # noqa: BLE001 - what the job raised, as one line
        lines = [ln for ln in str(exc).splitlines() if ln.strip()]
        hit = [ln for ln in lines if "exited" in ln]
        return (hit or lines or [type(exc).__name__])[-1].strip()[:300]
    return f"job {job.job_id} ended ({job.state}) without publishing the stage"


@hookimpl
def harness_register_executors():
    return [SlurmExecutor]
