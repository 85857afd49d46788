"""A store that concurrent workers share: claims with a heartbeat keep two workers from
computing one stage; a dead holder's claim is taken over; publishing is one atomic rename.

The concurrency tests start real ``harness run`` processes on one empty store."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from support import REPO, TINY_SPEC, write_spec
from harness import claims
from harness.store import ArtifactStore

# 3 stages: encoder, finetune, evaluate (one cell)
SPEC = TINY_SPEC.replace("protocols: [frozen, full]", "protocols: [full]").replace("epochs: 2", "epochs: 1")


def test_claim_is_exclusive_and_released(tmp_path, monkeypatch):
    path = tmp_path / "claims" / "k.json"
    first = claims.try_claim(path, timeout=3)
    assert first is not None and first.owned()
    info = json.loads(path.read_text())
    assert {"host", "pid", "started", "heartbeat", "token"} <= set(info)
    assert claims.try_claim(path, timeout=3) is None  # held
    first.release()
    assert not path.exists()
    second = claims.try_claim(path, timeout=3)
    assert second is not None
    second.release()


def test_heartbeat_keeps_a_claim_fresh_and_a_dead_one_is_taken_over_once(tmp_path, monkeypatch):
    monkeypatch.setenv(claims.TIMEOUT_ENV, "1.2")
    monkeypatch.setenv(claims.POLL_ENV, "0.1")
    path = tmp_path / "k.json"
    live = claims.try_claim(path, timeout=1.2)
    time.sleep(2.0)  # longer than the timeout: the heartbeat (every 0.2 s) keeps it fresh
    assert claims._age(path) < 1.2 and live.owned()
    live.release()

    # a holder that died: its claim file stays, nobody touches it
    dead = {"host": "gone", "pid": 1, "started": 0, "heartbeat": 0.2, "token": "dead"}
    path.write_text(json.dumps(dead))
    old = time.time() - 10
    os.utime(path, (old, old))
    winners, barrier = [], threading.Barrier(4)

    def take():
        barrier.wait()
        if claims._take_over(path, 1.2):
            winners.append(1)

    threads = [threading.Thread(target=take) for _ in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert len(winners) == 1  # the rename lets exactly one waiter take over
    assert not path.exists()

    done = []
    with claims.claimed(path, lambda: bool(done), "stage") as claim:
        assert claim is not None and claim.owned()


def test_a_claim_whose_process_is_gone_is_stale_at_once_on_its_own_host(tmp_path):
    """A holder killed on this host (SIGKILL, out of memory) leaves a fresh claim that no
    heartbeat will refresh: a rerun takes it over at once instead of waiting out the timeout.
    A live holder, one on another host and an unreadable claim still wait for the timeout."""
    import socket
    import subprocess

    gone = subprocess.Popen(["true"])
    gone.wait()  # reaped: its pid names no process now
    path = tmp_path / "k.json"
    for host, pid, stale in ((socket.gethostname(), gone.pid, True),
                             (socket.gethostname(), os.getpid(), False),
                             ("another-host", gone.pid, False)):
        path.write_text(json.dumps({"host": host, "pid": pid, "started": 0, "heartbeat": 15,
                                    "token": "t"}))
        assert (claims._stale(path, 90.0, claims._age(path)) is not None) is stale, (host, pid)
    path.write_text("{not json")
    assert claims._stale(path, 90.0, claims._age(path)) is None
    path.write_text(json.dumps({"host": socket.gethostname(), "pid": gone.pid, "started": 0,
                                "heartbeat": 15, "token": "t"}))
    assert claims._take_over(path, 90.0) and not path.exists()


def test_commit_of_a_second_finisher_keeps_the_first(tmp_path):
    store = ArtifactStore(tmp_path)
    a, b = store.new_tmp("k", "key"), store.new_tmp("k", "key")
    assert a != b
    (a / "x").write_text("first")
    (b / "x").write_text("second")
    store.commit("k", "key", a, {})
    store.commit("k", "key", b, {})
    assert (store.stage_dir("k", "key") / "x").read_text() == "first"
    assert not b.exists()


def _start(spec: Path, store: Path, out: Path, timeout_s: str) -> subprocess.Popen:
    env = {**os.environ, "HARNESS_STORE": str(store), claims.TIMEOUT_ENV: timeout_s,
           claims.POLL_ENV: "0.2", "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    return subprocess.Popen([sys.executable, "-m", "harness.cli", "run", str(spec), "--quiet",
                             "--output", str(out)], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _counts(text: str) -> tuple[int, int]:
    m = re.search(r"(\d+) stages computed, (\d+) reused", text)
    assert m, text[-3000:]
    return int(m.group(1)), int(m.group(2))


def _records(out: Path) -> tuple[dict[str, dict], dict[str, bool]]:
    """The records without what says which process wrote them (time, provenance, whether it
    computed or reused each stage), and stage key -> computed by this process."""
    records, computed = {}, {}
    for f in sorted((out / "records").glob("*.json")):
        rec = json.loads(f.read_text())
        rec.pop("provenance", None)
        rec.pop("created_at", None)
        for stage in rec["stages"]:
            computed[stage["key"]] = not stage.pop("cached")
        records[f.name] = rec
    return records, computed


@pytest.mark.slow  # two full `harness run` processes (~15 s on a free 2-core CPU, 90 s shared)
def test_two_concurrent_runs_compute_each_stage_once(tmp_path):
    spec = write_spec(tmp_path, SPEC)
    store = tmp_path / "store"
    procs = [_start(spec, store, tmp_path / f"out{i}", "30") for i in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    counts = [_counts(o) for o in outs]
    stages = sum(counts[0])
    assert counts[0][0] + counts[1][0] == stages, counts  # each stage computed exactly once
    (rec0, by0), (rec1, by1) = _records(tmp_path / "out0"), _records(tmp_path / "out1")
    assert rec0 == rec1
    assert set(by0) == set(by1) and len(by0) == stages
    assert all(by0[k] != by1[k] for k in by0), (by0, by1)  # computed by exactly one of them
    assert not list((store / "claims").rglob("*.json"))  # every claim released


@pytest.mark.slow
def test_a_killed_holder_is_taken_over_by_the_other_run(tmp_path):
    spec = write_spec(tmp_path, SPEC.replace("epochs: 1", "epochs: 6"))
    store = tmp_path / "store"
    procs = [_start(spec, store, tmp_path / f"out{i}", "3") for i in range(2)]
    try:
        deadline, holder = time.time() + 300, None
        while time.time() < deadline and holder is None:
            for f in (store / "claims" / "finetune").glob("*.json") if (store / "claims" / "finetune").exists() else []:
                try:
                    holder = json.loads(f.read_text())["pid"]
                except (OSError, ValueError):
                    pass
            time.sleep(0.05)
        assert holder in {p.pid for p in procs}, "no finetune claim appeared"
        time.sleep(1.0)  # mid-stage
        victim = next(p for p in procs if p.pid == holder)
        other = next(p for p in procs if p.pid != holder)
        os.kill(holder, signal.SIGKILL)
        victim.wait(timeout=60)
        text = other.communicate(timeout=600)[0]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert other.returncode == 0, text[-3000:]
    assert "taking the stage over" in text, text[-3000:]
    assert len(list((tmp_path / f"out{procs.index(other)}" / "records").glob("*.json"))) == 1
