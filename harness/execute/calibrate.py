"""Calibration runs for ``harness run SPEC --dry-run --calibrate``: each pending stage that the
store has no record of the same config for (on this kind of device) is run for a few batches of
each of its loops (:mod:`harness.engine.metering`) and its full duration extrapolated.

A calibration never touches the stages of the store: it computes into a scratch store (a
temporary folder beside the store's own ``tmp/``, removed afterwards) that reads the stages the
store holds and the prepared datasets from it, and publishes the cut-short stages only there
(a calibrated fine-tune is evaluated by the calibrated evaluation after it, and so on down the
chain). No lifecycle hook or logger sees it. What it leaves in the store is one small JSON file
per stage and device kind, ``calibration/<kind>/<key>/<device>.json``, which later dry runs read
(so a second ``--dry-run`` costs nothing), marked ``calibrated`` in the schedule.

The estimate is the stage's time outside its loops (model building, data, metrics: measured
whole) plus, per loop, its first batch and the remaining batches at the timed rate. The
calibration runs where the driver runs (for ``slurm``, run the dry run on a node of the kind
the jobs get, e.g. under ``srun``), in this one process.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.console import console
from harness.execute.graph import pending
from harness.store import ArtifactStore, atomic_write_json

if TYPE_CHECKING:
    from harness.execute.base import RunView
    from harness.plan import Plan, Stage
    from harness.store import ArtifactStore

#: Timed batches per loop (after the first, untimed one).
DEFAULT_STEPS = 5


class ScratchStore(ArtifactStore):
    """Reads the stages (and datasets) ``real`` holds; publishes into its own ``root``."""

    def __init__(self, real: ArtifactStore, root: Path):
        super().__init__(root)
        self.real = real

    def stage_dir(self, kind: str, key: str) -> Path:
        if self.real.is_done(kind, key):
            return self.real.stage_dir(kind, key)
        return super().stage_dir(kind, key)

    def dataset_dir(self, name: str, fingerprint: Any) -> Path:
        return self.real.dataset_dir(name, fingerprint)


def record_path(store: ArtifactStore, kind: str, key: str, device: str) -> Path:
    return store.calibration_file(kind, key, device)


def saved(store: ArtifactStore, kind: str, key: str, device: str) -> dict[str, Any] | None:
    """The stored calibration of a stage on this device kind, if any (JSON only)."""
    path = record_path(store, kind, key, device)
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("device") != device \
            or not isinstance(data.get("seconds"), (int, float)):
        return None
    return data


def to_calibrate(plan: Plan, store: ArtifactStore, device: str, has_same_config: Any) -> list[Stage]:
    """The pending stages to run cut short, dependencies first: those without a same-config
    record or a calibration on ``device``, and the pending stages upstream of them (the
    calibration needs their artifacts)."""
    todo = pending(plan, store)
    wanted = {s.key for s in todo
              if not has_same_config(s) and saved(store, s.kind, s.key, device) is None}
    needed = set(wanted)
    for s in todo:
        if s.key in wanted:
            needed.update(u.key for u in s.upstream() if not store.is_done(u.kind, u.key))
    return [s for s in todo if s.key in needed]


def calibrate(runner: RunView, stages: list[Stage], steps: int, device: str) -> list[dict[str, Any]]:
    """Run ``stages`` (dependencies first) cut short in a scratch store; save and return each
    one's calibration."""
    from harness.engine.metering import calibrating

    if not stages:
        return []
    store = runner.store
    scratch_root = store.scratch_dir("calibration-")
    from harness.execute.in_process import in_process

    # no dispatch: plugins and loggers never see a calibration (its events stay in the scratch store)
    executor = in_process(runner)
    executor.store, executor.quiet = ScratchStore(store, scratch_root), True
    found = []
    console.log(f"calibrating {len(stages)} stage(s): {steps} timed batches per loop")
    try:
        for stage in stages:
            with calibrating(steps) as cal:
                started = time.perf_counter()
                executor.execute(stage)
                wall = time.perf_counter() - started
            data = {"kind": stage.kind, "key": stage.key, "label": stage.label, "device": device,
                    "seconds": round(cal.estimate_s(wall), 3), "calibration_s": round(wall, 3),
                    "steps": steps, "loops": [m.describe() for m in cal.meters], "at": time.time()}
            atomic_write_json(record_path(store, stage.kind, stage.key, device), data)
            console.log(f"  calibrated {stage.kind} {stage.label}: ~{data['seconds']:.1f} s "
                        f"(ran {wall:.1f} s)")
            found.append(data)
    finally:
        shutil.rmtree(scratch_root, ignore_errors=True)
    return found
