"""Walking a plan's stage graph: what is done, what is ready, waves (levels) for ``--dry-run``,
and the driver loop that executors spreading stages over workers or jobs share.

The store is the only truth about what is finished: a stage is done when the store holds it,
whoever computed it. A failed stage stops the stages that need it; every other stage goes on.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from harness.console import console
from harness.plan import Plan, Stage

if TYPE_CHECKING:
    from harness.execute.stage_events import EventForwarder
    from harness.store import ArtifactStore


def pending(plan: Plan, store: ArtifactStore) -> list[Stage]:
    """The plan's stages the store does not hold, dependencies first."""
    return [s for s in plan.stages() if not store.is_done(s.kind, s.key)]


def waves(stages: list[Stage]) -> list[list[Stage]]:
    """``stages`` (dependencies first) by level: a stage's level is one more than its deepest
    dependency among ``stages`` (stages outside, already done, count as level -1)."""
    level: dict[str, int] = {}
    keys = {s.key for s in stages}
    for s in stages:
        level[s.key] = 1 + max((level[d.key] for d in s.deps.values() if d.key in keys), default=-1)
    out: list[list[Stage]] = [[] for _ in range(max(level.values(), default=-1) + 1)]
    for s in stages:
        out[level[s.key]].append(s)
    return out


def dependents(stages: list[Stage], key: str) -> list[Stage]:
    """The stages of ``stages`` that need ``key``, directly or not."""
    return [s for s in stages if s.key != key and any(u.key == key for u in s.upstream())]


class Launcher(Protocol):
    capacity: int  # stages at once

    def start(self, stages: list[Stage]) -> list[Any]:
        """Start these stages (at most the free capacity); one handle per stage."""

    def poll(self, handle: Any) -> tuple[int, str] | None:
        """None while running; ``(exit code, message)`` once finished (0: success)."""

    def stop(self, handles: list[Any]) -> None:
        """Forward an interrupt to the running stages and wait briefly for them."""


@dataclass
class Outcome:
    computed: list[str] = field(default_factory=list)  # stage keys that this driver had computed
    failed: dict[str, str] = field(default_factory=dict)  # stage label -> why
    blocked: list[str] = field(default_factory=list)  # labels not run: an upstream stage failed
    codes: list[int] = field(default_factory=list)  # exit codes of the failed stages

    def summary(self) -> str:
        """One line: the counts, each failed stage with why, the stages not run."""
        parts = [f"{len(self.failed)} stage(s) failed, {len(self.blocked)} not run because "
                 f"they need one; {len(self.computed)} computed (kept in the store)"]
        parts += [f"{label}: {why}" for label, why in self.failed.items()]
        if self.blocked:
            parts.append(f"not run: {', '.join(self.blocked)}")
        return "; ".join(parts)


def drive(stages: list[Stage], store: ArtifactStore, launcher: Launcher, events: EventForwarder,
          running: dict[str, Any] | None = None, poll_s: float = 0.2, on_start: Any = None
          ) -> Outcome:
    """Run every one of ``stages`` (dependencies first) that the store does not hold through
    ``launcher``, each as soon as its inputs are in the store, forwarding their events
    (``events``: :class:`harness.execute.stage_events.EventForwarder`) as they arrive.
    ``running`` maps keys of stages already started (a restarted driver's jobs) to their
    handles. ``on_start(stages, handles)`` is told about each start."""
    waiting = {s.key: s for s in stages if not store.is_done(s.kind, s.key)}
    running = {k: h for k, h in (running or {}).items() if k in waiting}
    for key in running:
        events.watch(waiting[key])
    outcome = Outcome()
    try:
        while waiting:
            events.poll()
            for key, handle in list(running.items()):
                status = launcher.poll(handle)
                if status is None:
                    continue
                stage = waiting.pop(key)
                del running[key]
                events.done(stage)
                rc, message = status
                if rc == 0 and store.is_done(stage.kind, stage.key):
                    outcome.computed.append(key)
                    console.log(f"  done {stage.kind} {stage.label}")
                    continue
                why = message if rc else "finished without publishing its result"
                outcome.failed[stage.label] = why
                outcome.codes.append(rc or 1)
                console.log(f"  FAILED {stage.kind} {stage.label}: {why}")
                for dep in dependents(list(waiting.values()), key):
                    if dep.key not in running:
                        waiting.pop(dep.key, None)
                        outcome.blocked.append(dep.label)
            free = launcher.capacity - len(running)
            ready = [s for s in waiting.values() if s.key not in running
                     and all(store.is_done(d.kind, d.key) for d in s.deps.values())]
            if ready and free > 0:
                batch = ready[:free]
                for stage in batch:
                    events.watch(stage)
                handles = launcher.start(batch)
                for stage, handle in zip(batch, handles):
                    running[stage.key] = handle
                if on_start is not None:
                    on_start(batch, handles)
            elif not running and waiting:  # nothing runs and nothing can start: a bug upstream
                raise RuntimeError(f"stuck: {len(waiting)} stages wait on nothing that runs")
            else:
                time.sleep(poll_s)
    except BaseException:
        launcher.stop(list(running.values()))
        for key in running:  # what they wrote before they stopped
            events.done(waiting[key])
        raise
    return outcome
