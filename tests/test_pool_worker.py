"""The persistent ``pool`` worker's protocol (:mod:`harness.execute.pool_worker`), on a real
worker process: it builds the plan once, runs stages in forked children with the exit codes of
``harness stage run``, and a stage killed with SIGKILL leaves the worker running the next."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from support import REPO
from executor_specs import one_cell


def _plan(store, spec):
    from harness.plugins import get_registry
    from harness.runner import Runner
    from harness.spec import load_spec
    from harness.store import ArtifactStore

    runner = Runner(load_spec(spec), get_registry(), ArtifactStore(store), store / "o")
    return runner.plan(prepare=True)[0], runner.store


def test_worker_runs_stages_and_survives_a_killed_one(tmp_path):
    spec, store, log = one_cell(tmp_path, epochs=100000), tmp_path / "s", tmp_path / "stage.log"
    stderr = (tmp_path / "worker.err").open("w")  # said when the worker dies before answering
    worker = subprocess.Popen([sys.executable, "-m", "harness.execute.pool_worker", str(spec),
                               "--store", str(store)], cwd=REPO, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=stderr, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})

    def line() -> dict:
        text = worker.stdout.readline()
        assert text, f"the worker ended: {(tmp_path / 'worker.err').read_text()[-2000:]}"
        return json.loads(text)

    def ask(key: str) -> dict:
        worker.stdin.write(json.dumps({"key": key, "log": str(log)}) + "\n")
        worker.stdin.flush()
        started = line()
        assert started["key"] == key and started["pid"] > 0
        return started

    def answer() -> int:
        return line()["rc"]

    try:
        assert line() == {"ready": True, "fork": True}
        plan, artifacts = _plan(store, spec)
        encoder = next(s for s in plan.stages() if s.kind == "encoder")
        finetune = next(s for s in plan.stages() if s.kind == "finetune")
        ask(f"encoder/{encoder.key}")
        assert answer() == 0 and artifacts.is_done("encoder", encoder.key)
        pid = ask(f"finetune/{finetune.key}")["pid"]
        time.sleep(1.0)
        os.kill(pid, signal.SIGKILL)
        assert answer() == -signal.SIGKILL and not artifacts.is_done("finetune", finetune.key)
        ask("finetune/ffffffffffff")  # no such stage: the CLI's usage error, exit 2
        assert answer() == 2
        assert "error: KEY 'finetune/ffffffffffff'" in log.read_text()
        assert worker.poll() is None
    finally:
        worker.stdin.close()
        worker.wait(timeout=60)
        stderr.close()
    assert worker.returncode == 0


def test_worker_with_two_threads_forks_and_stops_quietly_when_the_driver_goes(tmp_path):
    """A budget of 2 threads (OpenBLAS would start its pool at import) still forks; SIGTERM
    with the driver gone (its end of the pipe closed) stops the running stage with its
    checkpoint kept and no BrokenPipeError noise."""
    spec, store, log = one_cell(tmp_path, epochs=100000), tmp_path / "s", tmp_path / "stage.log"
    err = tmp_path / "worker.err"
    with err.open("w") as stderr:
        worker = subprocess.Popen([sys.executable, "-m", "harness.execute.pool_worker", str(spec),
                                   "--store", str(store)], cwd=REPO, stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=stderr, text=True,
                                  env={**os.environ, "OMP_NUM_THREADS": "2",
                                       "HARNESS_CHECKPOINT_EVERY_S": "0"})
        try:
            ready = json.loads(worker.stdout.readline())
            assert ready == {"ready": True, "fork": True}, ready
            plan, artifacts = _plan(store, spec)
            for stage in plan.stages()[:2]:  # the encoder, then the long fine-tune
                worker.stdin.write(json.dumps({"key": f"{stage.kind}/{stage.key}",
                                               "log": str(log)}) + "\n")
                worker.stdin.flush()
                assert "pid" in json.loads(worker.stdout.readline())
                if stage.kind == "encoder":
                    assert json.loads(worker.stdout.readline())["rc"] == 0
            finetune = plan.stages()[1]
            deadline = time.time() + 300
            while not artifacts.has_checkpoint(finetune.kind, finetune.key):
                assert time.time() < deadline, log.read_text()[-2000:]
                time.sleep(0.5)
            worker.stdout.close()  # the driver is gone
            worker.send_signal(signal.SIGTERM)
            worker.stdin.close()
            worker.wait(timeout=120)
        finally:
            if worker.poll() is None:
                worker.kill()
    assert worker.returncode == 0
    assert "BrokenPipe" not in err.read_text() and "Traceback" not in err.read_text(), err.read_text()
    assert "interrupted" in log.read_text()
    assert artifacts.has_checkpoint(finetune.kind, finetune.key)  # nothing computed is lost
