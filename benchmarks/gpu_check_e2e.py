"""The GPU check's end-to-end parts (``benchmarks/gpu_check.py`` runs them, each under its own
try/except and time cap): a tiny spec run by the harness's own command line

* ``e2e_pool``: ``harness run --executor local`` uninterrupted (the reference), then
  ``--executor pool`` in a fresh store with a SIGTERM to the driver once the fine-tune has
  written a checkpoint, and a rerun that resumes it: are the resumed run's records (and
  fine-tuned weights) those of the uninterrupted run?
* ``e2e_torchrun``: the fine-tune stage under torchrun with one process (``python -m
  torch.distributed.run --nproc_per_node 1``, what ``harness stage run --nproc N`` launches for
  N > 1: NCCL on CUDA, gloo on CPU; ``--nproc 1`` itself trains in one plain process), SIGTERM
  to torchrun mid-training, a rerun that resumes, then ``harness run`` for the evaluation and
  records, compared with the same uninterrupted run;
* ``stage_noise``: one short fine-tune stage computed twice in two scratch stores (in this
  process): the largest weight difference and the loss curves' difference, the run-to-run noise
  that a result's spread must be judged against (0 on the CPU; cuDNN's non-deterministic
  kernels on a GPU).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

SPEC = """
name: gpu_check_e2e
dataset: {{name: synthetic, image_size: 32, images_per_fold: 8, unlabeled_images: 0}}
methods: [scratch]
protocols: [frozen]
folds: [fold1]
finetune: {{encoder: resnet18, epochs: {epochs}, batch_size: 4, eval_batch_size: 8, device: {device}}}
metric: {{name: mpq, pq_variant: instance}}
execution: {{executor: pool, workers: 1}}
"""

#: Record fields that say when, how fast or whether reused, not what was computed.
NOT_RESULTS = {"created_at", "seconds", "seconds_this_run", "seconds_per_kind", "seconds_total",
               "cached", "resumed_from_epoch"}


class Cap:
    """A part's own time cap: what is left of it for the next command."""

    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        left = self.end - time.monotonic()
        if left <= 1:
            raise TimeoutError("the part's time cap is spent")
        return left


def write_spec(tmp: Path, device: torch.device, tiny: bool) -> Path:
    """Steps enough that a checkpoint (every 0.3 s) lands well inside the fine-tuning (4 steps
    an epoch: on one CPU thread ~0.1 s a step, on a GPU a few ms)."""
    path = tmp / "e2e.yaml"
    path.write_text(SPEC.format(epochs=8 if tiny else 150, device=device))
    return path


def _env(tiny: bool) -> dict[str, str]:
    threads = "1" if tiny else os.environ.get("OMP_NUM_THREADS", str(min(8, os.cpu_count() or 1)))
    return {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads,
            "HARNESS_CHECKPOINT_EVERY_S": "0.3", "PYTHONWARNINGS": "ignore"}


def _harness(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "harness.cli", *map(str, args)]


def _run(cmd: list[str], env: dict[str, str], log: Path, cap: Cap) -> int:
    return _interrupted(cmd, env, None, log, cap)["interrupted_rc"]


def _interrupted(cmd: list[str], env: dict[str, str], store: Path | None, log: Path,
                 cap: Cap) -> dict[str, Any]:
    """``cmd`` (its own session) with a SIGTERM once the fine-tune's first checkpoint exists in
    ``store`` (None: no signal); its exit code. Past the cap its whole process group is killed
    (pool workers, torchrun's ranks), and the part reports the timeout."""
    with open(log, "a") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        work = store / "work" / "finetune" if store else None
        while proc.poll() is None and not (work and list(work.glob("*/checkpoint.pt"))):
            cap.left()
            time.sleep(0.05)
        signalled = proc.poll() is None
        if signalled:
            proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=cap.left())
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return {"signalled": signalled, "interrupted_rc": rc,
            "checkpoint_on_sigterm": "SIGTERM: checkpoint" in _logs(log)}


def _logs(*paths: Path) -> str:
    text = ""
    for path in paths:
        for p in [path] if path.is_file() else sorted(path.glob("*.log")) if path.is_dir() else []:
            text += p.read_text(errors="replace")
    return text


def _results(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _results(v) for k, v in data.items() if k not in NOT_RESULTS}
    if isinstance(data, list):
        return [_results(v) for v in data]
    return data


def _records(out: Path) -> dict[str, Any]:
    return {p.name: _results(json.loads(p.read_text())) for p in sorted((out / "records").glob("*.json"))}


def _finetune(store: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The store's one fine-tuned model and its meta."""
    [stage] = list((store / "stages" / "finetune").glob("*/meta.json"))
    state = torch.load(stage.parent / "model.pt", map_location="cpu", weights_only=True)
    return state, json.loads(stage.read_text())


def max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(((a[k].double() - b[k].double()).abs().max().item() if a[k].numel() else 0.0)
               for k in a)


def _compare(base_store: Path, base_out: Path, store: Path, out: Path) -> dict[str, Any]:
    state, meta = _finetune(store)
    base_state, _ = _finetune(base_store)
    records, base = _records(out), _records(base_out)
    return {"resumed_from_epoch": meta["result"].get("resumed_from_epoch"),
            "records": len(records), "records_equal": bool(records) and records == base,
            "weights_max_abs_diff": max_abs_diff(state, base_state)}


def _seed_store(base: Path, store: Path) -> None:
    """The uninterrupted run's dataset cache and encoder, so only the fine-tune is recomputed."""
    for part in ("datasets", "stages/encoder"):
        shutil.copytree(base / part, store / part)


def e2e_pool_part(device: torch.device, tmp: Path, tiny: bool, shared: dict, cap_s: float) -> dict[str, Any]:
    cap, env = Cap(cap_s), _env(tiny)
    spec = write_spec(tmp, device, tiny)
    base_store, base_out = tmp / "base_store", tmp / "base_out"
    # the reference in one process (`local`: the pool must give its records, same threads)
    rc = _run(_harness("run", spec, "--executor", "local", "--store", base_store, "--output", base_out,
                       "--quiet"), env, tmp / "base.log", cap)
    if rc:
        raise RuntimeError(f"uninterrupted local run exited {rc}: {_logs(tmp / 'base.log')[-400:]}")
    shared.update(base_store=base_store, base_out=base_out)
    store, out = tmp / "pool_store", tmp / "pool_out"
    _seed_store(base_store, store)
    cmd = _harness("run", spec, "--store", store, "--output", out, "--quiet")
    result = _interrupted(cmd, env, store, tmp / "pool_driver.log", cap)
    result["checkpoint_on_sigterm"] = "SIGTERM: checkpoint" in _logs(out / "logs")
    result["resumed_rc"] = _run(cmd, env, tmp / "pool_driver.log", cap)
    return {**result, **_compare(base_store, base_out, store, out), "executor": "pool"}


def e2e_torchrun_part(device: torch.device, tmp: Path, tiny: bool, shared: dict,
                      cap_s: float) -> dict[str, Any]:
    if "base_store" not in shared:
        raise RuntimeError("needs the uninterrupted run of e2e_pool, which did not finish")
    cap, env = Cap(cap_s), _env(tiny)
    spec = write_spec(tmp, device, tiny)
    store, out, log = tmp / "torchrun_store", tmp / "torchrun_out", tmp / "torchrun.log"
    _seed_store(shared["base_store"], store)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
           "-m", "harness.cli", "stage", "run", str(spec), "finetune/", "--store", str(store), "--quiet"]
    result = _interrupted(cmd, env, store, log, cap)
    result["resumed_rc"] = _run(cmd, env, log, cap)
    rc = _run(_harness("run", spec, "--executor", "local", "--store", store, "--output", out,
                       "--quiet"), env, log, cap)
    if rc:
        raise RuntimeError(f"harness run after torchrun exited {rc}: {_logs(log)[-400:]}")
    return {**result, **_compare(shared["base_store"], shared["base_out"], store, out),
            "backend": "nccl" if device.type == "cuda" else "gloo"}


def stage_noise_part(device: torch.device, tmp: Path, tiny: bool) -> dict[str, Any]:
    """One fine-tune stage (the e2e spec, 3 epochs) computed twice, in this process."""
    from harness.execute.in_process import in_process
    from harness.plugins import get_registry
    from harness.runner import Runner
    from harness.spec import load_spec
    from harness.store import ArtifactStore

    spec = tmp / "noise.yaml"
    spec.write_text(SPEC.format(epochs=3 if tiny else 20, device=device))
    stores = [tmp / "noise_a", tmp / "noise_b"]
    for i, path in enumerate(stores):
        if i:
            _seed_store(stores[0], path)
        runner = Runner(load_spec(spec), get_registry(), ArtifactStore(path), tmp / "noise_out", quiet=True)
        plan = runner.plan(prepare=True)[0]
        for stage in plan.stages():
            if stage.kind in ("encoder", "finetune") and not runner.store.is_done(stage.kind, stage.key):
                in_process(runner).execute(stage)
    (a, meta_a), (b, meta_b) = (_finetune(s) for s in stores)
    curves = [[e["loss"] for e in json.loads((s_dir / "train_log.json").read_text())]
              for s_dir in (next((s / "stages" / "finetune").iterdir()) for s in stores)]
    return {"weights_max_abs_diff": max_abs_diff(a, b),
            "final_loss_diff": abs(meta_a["result"]["final_loss"] - meta_b["result"]["final_loss"]),
            "max_loss_diff": max(abs(x - y) for x, y in zip(*curves)), "epochs": len(curves[0])}
