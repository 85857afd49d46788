"""The schedule ``harness run SPEC --dry-run`` shows for the chosen executor: the pending stages
by wave (a wave's stages can run side by side), where each would run, an estimated duration per
stage and the run's estimated wall time.

Estimates come from the store: every published stage keeps ``seconds`` and, in its provenance,
the device it ran on. A pending stage is estimated by the published stages of the same kind on
the same kind of device (GPU model, or the CPU) whose config is closest to its own (fewest
differing settings; the median of ties), and says which basis it used. A record of the same
config is the best basis; else a calibration of the stage itself on this device kind
(``--dry-run --calibrate``: a few batches of each of its loops, timed and extrapolated, see
:mod:`harness.execute.calibrate`), marked ``calibrated``; else the closest config; else no
estimate (``?``, and the schedule says how to calibrate).
"""

from __future__ import annotations

import heapq
import json
import statistics
from typing import TYPE_CHECKING, Any

from harness.execute.calibrate import saved
from harness.execute.graph import pending, waves

if TYPE_CHECKING:
    from harness.plan import Plan, Stage
    from harness.store import ArtifactStore


def device_kind(description: str | None) -> str:
    """``cuda:NVIDIA H200`` or ``cpu``: what durations are comparable across."""
    return (description or "?").split(" (")[0]


def _flat(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for k, v in data.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): json.dumps(data, sort_keys=True, default=str)}


def published(store: ArtifactStore, kinds: set[str]) -> dict[str, list[dict[str, Any]]]:
    """The metas of the store's published stages of these kinds."""
    out: dict[str, list[dict[str, Any]]] = {k: [] for k in kinds}
    for kind in kinds:
        for key in store.stages_of(kind):
            try:
                meta = store.meta(kind, key)
            except (OSError, ValueError):
                continue
            if isinstance(meta.get("seconds"), (int, float)):
                out[kind].append(meta)
    return out


def _world(meta: dict[str, Any]) -> int:
    return int(meta.get("provenance", {}).get("world_size") or 1)


def estimate(stage: Stage, metas: list[dict[str, Any]], device: str, procs: int = 1
             ) -> tuple[float | None, str]:
    """Seconds and the basis of the estimate, or ``(None, "no record")``. Records of stages
    trained on as many processes as ``procs`` are preferred; others are scaled by their process
    count over ``procs`` (ideal scaling, said in the basis)."""
    same = [m for m in metas if device_kind(m.get("provenance", {}).get("device")) == device]
    if not same:
        return None, f"no record on {device}"
    if any(_world(m) == procs for m in same):
        same = [m for m in same if _world(m) == procs]
    mine = _flat(stage.config)
    def distance(meta: dict[str, Any]) -> int:
        theirs = _flat(meta.get("config", {}))
        return sum(mine.get(k) != theirs.get(k) for k in set(mine) | set(theirs))
    scored = sorted((distance(m), m["seconds"] * _world(m) / procs, _world(m)) for m in same)
    best = scored[0][0]
    seconds = statistics.median(s for d, s, _ in scored if d == best)
    basis = "same config" if best == 0 else f"{best} setting(s) differ"
    worlds = sorted({w for d, _, w in scored if d == best} - {procs})
    scaled = f", scaled from {'/'.join(map(str, worlds))} to {procs} process(es)" if worlds else ""
    return seconds, f"{basis}, {sum(d == best for d, _, _ in scored)} record(s){scaled}"


def same_config_known(store: ArtifactStore, plan: Plan, device: str) -> Any:
    """``f(stage)``: whether the store has a record of the stage's config on ``device``."""
    metas = published(store, {s.kind for s in plan.stages()})
    return lambda s: estimate(s, metas[s.kind], device)[1].startswith("same config")


def simulate(stages: list[Stage], seconds: dict[str, float], slots: int) -> tuple[float, dict[str, int]]:
    """List scheduling as the drivers do it: of the stages whose dependencies are scheduled, the
    one ready first (then plan order) starts on the slot free first. Returns the makespan and
    each stage's slot."""
    keys = {s.key for s in stages}
    end: dict[str, float] = {}
    free = [(0.0, i) for i in range(max(1, slots))]
    heapq.heapify(free)
    where: dict[str, int] = {}
    remaining = list(stages)  # dependencies first
    while remaining:
        ready = {s.key: max((end[d.key] for d in s.deps.values() if d.key in keys), default=0.0)
                 for s in remaining if all(d.key in end or d.key not in keys for d in s.deps.values())}
        order = {s.key: i for i, s in enumerate(remaining)}
        key = min(ready, key=lambda k: (ready[k], order[k]))
        remaining.pop(order[key])
        at, slot = heapq.heappop(free)
        end[key] = max(at, ready[key]) + seconds.get(key, 0.0)
        where[key] = slot
        heapq.heappush(free, (end[key], slot))
    return max(end.values(), default=0.0), where


def schedule(plan: Plan, store: ArtifactStore, slot_names: list[str], device: str,
             procs: Any = lambda stage: 1) -> dict[str, Any]:
    """``procs(stage)``: the processes the executor trains the stage on (``gpus_per_stage``)."""
    todo = pending(plan, store)
    metas = published(store, {s.kind for s in todo})
    rows, seconds = [], {}
    for s in todo:
        n = procs(s)
        est, basis = estimate(s, metas[s.kind], device, n)
        if not basis.startswith("same config") and (cal := saved(store, s.kind, s.key, device)):
            # calibrations run in one process: ideal scaling to n
            est = cal["seconds"] / n
            basis = f"calibrated: {cal['steps']} steps" + (f", 1 process scaled to {n}" if n > 1 else "")
        if est is not None:
            seconds[s.key] = est
        rows.append({"stage": s, "seconds": est, "basis": basis,
                     "resumes": store.has_checkpoint(s.kind, s.key)})
    total, _ = simulate(todo, seconds, len(slot_names))
    # placement: a stage without an estimate counts as the typical one of its kind (or 1 s)
    typical = {k: statistics.median(v) for k in {s.kind for s in todo}
               if (v := [seconds[s.key] for s in todo if s.kind == k and s.key in seconds])}
    _, where = simulate(todo, {s.key: seconds.get(s.key, typical.get(s.kind, 1.0)) for s in todo},
                        len(slot_names))
    wave_of = {s.key: i for i, wave in enumerate(waves(todo)) for s in wave}
    for row in rows:
        key = row["stage"].key
        row["wave"] = wave_of[key]
        row["where"] = slot_names[where[key] % len(slot_names)] if slot_names else "?"
    done = [s for s in plan.stages() if store.is_done(s.kind, s.key)]
    return {"rows": sorted(rows, key=lambda r: r["wave"]), "done": done, "total_s": total,
            "serial_s": sum(seconds.values()), "unknown": sum(r["seconds"] is None for r in rows),
            "device": device}


def fmt_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = round(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")
