"""The driver's side of the persistent ``pool`` workers (:mod:`harness.execute.pool_worker`):
a launcher for :func:`harness.execute.graph.drive` that hands stage keys to one long-lived
worker per slot instead of starting a ``harness stage run`` process per stage. A worker that
dies (killed, or its start failed) fails its running stage and is started again for the next."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from harness.console import console

if TYPE_CHECKING:
    from harness.execute.base import RunView
    from harness.plan import Stage


@dataclass
class _Job:
    stage: Stage
    slot: int
    log: Path
    started: float
    pid: int = 0


class _Worker:
    def __init__(self, cmd: list[str], env: dict[str, str], log: Path):
        self.log = log
        with open(log, "ab") as fh:
            self.proc = subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=fh, start_new_session=True, text=True, bufsize=1)
        self.messages: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            try:
                self.messages.put(json.loads(line))
            except json.JSONDecodeError:
                continue
        self.messages.put({"eof": True})

    def send(self, message: dict) -> bool:
        try:
            self.proc.stdin.write(json.dumps(message) + "\n")
            self.proc.stdin.flush()
            return True
        except (BrokenPipeError, OSError, ValueError):
            return False

    def close(self, wait_s: float = 10.0) -> None:
        try:
            self.proc.stdin.close()
        except (BrokenPipeError, OSError):
            pass
        try:
            self.proc.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)  # the worker and any stage it runs
            except ProcessLookupError:
                pass
            self.proc.wait()


def describe_slot(env: dict[str, str], i: int) -> str:
    gpu = env.get("CUDA_VISIBLE_DEVICES")
    if gpu:
        return f"worker {i} (GPU{'s' if ',' in gpu else ''} {gpu})"
    return f"worker {i} ({env['OMP_NUM_THREADS']} threads)"


def last_line(log: Path) -> str:
    try:
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "(no log)"
    return lines[-1][:300] if lines else "(empty log)"


class WorkerLauncher:
    """Stages on persistent workers, one stage at a time per worker (slot)."""

    def __init__(self, runner: RunView, slots: list[dict[str, str]], logs: Path, grace_s: float,
                 nproc: int = 1):
        self.runner, self.slots, self.logs, self.grace_s = runner, slots, logs, grace_s
        self.nproc = nproc  # processes of a training stage (gpus_per_stage)
        self.capacity = len(slots)
        self.free = list(range(len(slots)))
        self.workers: dict[int, _Worker] = {}

    def _command(self) -> list[str]:
        cmd = [sys.executable, "-m", "harness.execute.pool_worker", str(self.runner.rspec.source),
               "--store", str(self.runner.store.root)]
        for override in self.runner.rspec.overrides:
            cmd += ["--set", override]
        return cmd

    def worker(self, slot: int) -> _Worker:
        w = self.workers.get(slot)
        if w is None or w.proc.poll() is not None:
            self.logs.mkdir(parents=True, exist_ok=True)
            w = self.workers[slot] = _Worker(self._command(), {**os.environ, **self.slots[slot]},
                                             self.logs / f"worker-{slot}.log")
        return w

    def start(self, stages: list[Stage]) -> list[_Job]:
        self.logs.mkdir(parents=True, exist_ok=True)
        jobs = []
        for stage in stages:
            slot = self.free.pop(0)
            log = self.logs / f"{stage.kind}-{stage.key[:12]}.log"
            with open(log, "ab") as fh:
                fh.write(f"$ pool worker {slot}: stage {stage.kind}/{stage.key}\n".encode())
            from harness.execute.base import stage_processes

            self.worker(slot).send({"key": f"{stage.kind}/{stage.key}", "log": str(log),
                                    "nproc": stage_processes(self.runner, stage, self.nproc)})
            console.log(f"  start {stage.kind} {stage.label} on {describe_slot(self.slots[slot], slot)}")
            jobs.append(_Job(stage, slot, log, time.time()))
        return jobs

    def poll(self, job: _Job) -> tuple[int, str] | None:
        w = self.workers[job.slot]
        while True:
            try:
                msg = w.messages.get_nowait()
            except queue.Empty:
                return None
            if "pid" in msg:
                job.pid = msg["pid"]
            elif "rc" in msg or "eof" in msg:
                break
        self.free.append(job.slot)
        if "eof" in msg:  # the worker itself died: its next stage gets a fresh one
            w.close(wait_s=5)
            why = f"pool worker {job.slot} exited ({w.proc.returncode}): {last_line(w.log)}"
            return (w.proc.returncode or 1), f"{why} (log: {w.log}, {job.log})"
        rc = msg["rc"]
        try:
            cause = f"killed by {signal.Signals(-rc).name}" if rc < 0 else f"exit {rc}"
        except ValueError:
            cause = f"exit {rc}"
        return rc, f"{cause}: {last_line(job.log)} (log: {job.log})"

    def stop(self, jobs: list[_Job]) -> None:
        for job in jobs:  # the worker forwards SIGTERM to the stage it runs
            w = self.workers.get(job.slot)
            if w is not None and w.proc.poll() is None:
                w.proc.send_signal(signal.SIGTERM)
        deadline = time.time() + self.grace_s
        for job in jobs:
            w = self.workers[job.slot]
            while time.time() < deadline and self.poll(job) is None and w.proc.poll() is None:
                time.sleep(0.2)
        self.close(wait_s=max(0.0, deadline - time.time()))

    def close(self, wait_s: float = 10.0) -> None:
        """Ends every worker (stdin closed; killed after ``wait_s``)."""
        for w in self.workers.values():
            w.close(wait_s)
        self.workers.clear()
