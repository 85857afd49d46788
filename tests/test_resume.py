"""A run killed mid-training resumes from its last checkpoint and loses nothing finished."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from support import REPO, TINY_SPEC, run_cli, write_spec

SPEC = TINY_SPEC.replace("protocols: [frozen, full]", "protocols: [full]").replace(
    "epochs: 2", "epochs: 6")


def _wait_for(pattern: str, root: Path, proc: subprocess.Popen, timeout: float = 240) -> Path:
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = list(root.glob(pattern))
        if found:
            return found[0]
        if proc.poll() is not None:
            raise AssertionError(f"run ended before {pattern} appeared: {proc.stderr.read()}")
        time.sleep(0.1)
    raise AssertionError(f"{pattern} did not appear within {timeout} s")


#: a checkpoint at every step (the default is every 300 s of training, at the end and on SIGTERM)
EVERY_STEP = {"HARNESS_CHECKPOINT_EVERY_S": "0"}


def _wait_for_epoch(ckpt: Path, epoch: int, proc: subprocess.Popen, timeout: float = 240) -> None:
    import torch

    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        try:
            if torch.load(ckpt, weights_only=False)["epoch"] >= epoch:
                return
        except (OSError, RuntimeError, EOFError):  # replaced while reading
            pass
        time.sleep(0.05)
    raise AssertionError(f"no checkpoint of epoch {epoch} within {timeout} s")


def _start(spec: Path, store: Path, out: Path, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "harness.cli", "run", str(spec), "--store",
                             str(store), "--output", str(out), "--quiet"], cwd=REPO,
                            env={**os.environ, **EVERY_STEP, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            # a background shell may have set SIGINT to ignored; give the
                            # child Python its usual Ctrl-C handler
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def test_killed_run_resumes_and_matches_uninterrupted(tmp_path):
    spec = write_spec(tmp_path, SPEC)
    store = tmp_path / "store"
    proc = _start(spec, store, tmp_path / "out")
    ckpt = _wait_for("work/finetune/*/checkpoint.pt", store, proc)
    # let it get past the first epoch, then kill it hard (no chance to clean up)
    _wait_for_epoch(ckpt, 1, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL

    # the encoder stage was committed; the interrupted fine-tuning was not
    assert list((store / "stages" / "encoder").glob("*/meta.json"))
    assert not (store / "stages" / "finetune").exists() or not list(
        (store / "stages" / "finetune").glob("*/meta.json"))
    assert ckpt.exists()

    rerun = run_cli("run", str(spec), "--store", str(store), "--output", str(tmp_path / "out"), "--quiet")
    assert rerun.returncode == 0, rerun.stderr
    assert "resuming from epoch" in rerun.stderr
    record = json.loads(next((tmp_path / "out" / "records").glob("*.json")).read_text())
    assert record["train"]["resumed_from_epoch"] >= 1
    cached = {s["kind"]: s["cached"] for s in record["stages"]}
    assert cached == {"encoder": True, "finetune": False, "evaluate": False}
    assert not ckpt.exists()  # the work folder is dropped once the stage is committed

    # the resumed result equals an uninterrupted run's (per-epoch seeds + saved RNG state)
    clean = run_cli("run", str(spec), "--store", str(tmp_path / "store2"), "--output",
                    str(tmp_path / "out2"), "--quiet")
    assert clean.returncode == 0, clean.stderr
    record2 = json.loads(next((tmp_path / "out2" / "records").glob("*.json")).read_text())
    assert record2["train"]["resumed_from_epoch"] == 0
    assert record["metrics"]["instance"]["mpq"] == record2["metrics"]["instance"]["mpq"]
    assert record["train"]["final_loss"] == record2["train"]["final_loss"]


def test_interrupt_keeps_finished_stages_and_says_how_to_resume(tmp_path):
    spec = write_spec(tmp_path, SPEC)
    store = tmp_path / "store"
    proc = _start(spec, store, tmp_path / "out")
    _wait_for("work/finetune/*/checkpoint.pt", store, proc)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "rerun the same command" in stderr and "Traceback" not in stderr
    assert not list((store / "tmp").glob("*/*")), "no half-written stage is left behind"
    assert list((store / "work" / "finetune").glob("*/checkpoint.pt"))
