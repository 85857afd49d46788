"""Small specs and helpers shared by the executor tests (pool, submitit, SLURM)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from support import run_cli

#: A random encoder, then 4 independent fine-tunes (frozen/full x 2 folds) and their evaluations.
FOUR_FINETUNES = """
name: exec_four
dataset: {name: synthetic, image_size: 32, images_per_fold: 8, unlabeled_images: 0}
methods: [scratch]
protocols: [frozen, full]
folds: [fold1, fold2]
finetune: {encoder: resnet18, epochs: 1, batch_size: 8, eval_batch_size: 8}
metric: {name: mpq, pq_variant: instance}
"""

#: One cell: encoder -> finetune -> evaluate; ``{epochs}`` one-step epochs of fine-tuning.
ONE_CELL = """
name: exec_one
dataset: {{name: synthetic, image_size: 32, images_per_fold: 8, unlabeled_images: 0}}
methods: [scratch]
protocols: [frozen]
folds: [fold1]
finetune: {{encoder: resnet18, epochs: {epochs}, batch_size: 8, eval_batch_size: 8}}
metric: {{name: mpq, pq_variant: instance}}
{execution}
"""

#: Record fields that say when and how fast, not what was computed.
TIMING = {"created_at", "seconds", "seconds_this_run", "seconds_per_kind", "seconds_total"}


def one_cell(tmp: Path, epochs: int = 1, execution: str = "", name: str = "one.yaml") -> Path:
    path = tmp / name
    path.write_text(ONE_CELL.format(epochs=epochs, execution=execution))
    return path


def harness(*args: str, store: Path, threads: int | None = None, timeout: float = 900):
    env = {"HARNESS_STORE": str(store), "COLUMNS": "250", "PYTHONWARNINGS": "ignore"}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    store_opt = [] if args[0] == "validate" else ["--store", str(store)]
    return run_cli(*args, *store_opt, env=env, timeout=timeout)


def without_timing(data):
    if isinstance(data, dict):
        return {k: without_timing(v) for k, v in data.items() if k not in TIMING}
    if isinstance(data, list):
        return [without_timing(v) for v in data]
    return data


def report(run_dir: Path) -> dict:
    """``report.json`` without timings (the Markdown/HTML tables show seconds per stage)."""
    return without_timing(json.loads((run_dir / "report.json").read_text()))


def records(run_dir: Path) -> dict[str, dict]:
    return {p.name: without_timing(json.loads(p.read_text()))
            for p in sorted((run_dir / "records").glob("*.json"))}


def train_summary(store: Path, kind: str = "finetune") -> dict:
    metas = [json.loads(p.read_text()) for p in (store / "stages" / kind).glob("*/meta.json")]
    assert len(metas) == 1, metas
    return metas[0]["result"]


def stage_count(store: Path, kind: str | None = None) -> int:
    base = store / "stages"
    kinds = [base / kind] if kind else [p for p in base.iterdir()] if base.exists() else []
    return sum(1 for k in kinds for p in k.glob("*/meta.json") if os.path.exists(p))


def processes_of(spec: Path) -> list[Path]:
    """The ``/proc/PID/cmdline`` files of processes still running with ``spec`` in their command."""
    def read(path: Path) -> bytes:
        try:
            return path.read_bytes()
        except OSError:
            return b""
    return [p for p in Path("/proc").glob("[0-9]*/cmdline") if str(spec).encode() in read(p)]
