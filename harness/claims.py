"""Claims: which worker computes a stage, so that two workers (two ``harness run``, pool
workers, cluster jobs) sharing one store do not compute it twice.

Correctness never depends on a claim: a stage is published by one atomic rename of a uniquely
named temporary folder and a second finisher discards its copy (:meth:`ArtifactStore.commit`).
A claim only saves the duplicate work.

Mechanism (chosen to hold on a network filesystem, where ``flock``/``fcntl`` locks do not
reliably exclude across NFS clients):

* **Taking a claim**: the claim's JSON (``{host, pid, started, heartbeat, token}``;
  ``heartbeat`` is the beat interval in seconds) is written to a uniquely named file, then
  ``link()``-ed to ``<store>/claims/<kind>/<key>.json``. ``link`` fails with ``EEXIST`` when
  the name exists, atomically on local filesystems and NFSv3+ (the server decides). A lost
  reply on NFS can make a successful ``link`` report an error, so success is decided by the
  link count of the unique file (2), as the Linux ``open(2)`` manual advises.
* **Heartbeat**: a daemon thread touches the claim (``utime`` with no times, so on NFS the
  *server* sets the mtime) every ``timeout / 6`` seconds; the file's mtime is the last beat.
* **Staleness**: a claim is stale when its mtime is older than ``HARNESS_CLAIM_TIMEOUT_S``
  (default 90 s) *by the same clock*: the age is the mtime of a probe file the waiter has just
  touched in the same folder minus the claim's mtime. Both are server times on NFS, so clock
  skew between nodes does not enter; only the server's own clock does.
* **Takeover**: the waiter renames the stale claim to a name unique to itself. ``rename`` is
  atomic; of several waiters only one finds the file. The renamer then checks that the file it
  moved is the stale one it saw (same token); then it deletes it and takes a fresh claim by the
  ``link`` above (so a newcomer in between wins, and the renamer waits for it). If the moved
  file is a fresh claim (a second taker raced in the milliseconds between), it is linked back.
  A claim whose holder ran on this host and whose process is gone (``kill(pid, 0)`` finds no
  such process: SIGKILL, out of memory) is stale at once: a rerun after a killed run does not
  wait out the timeout. Two machines that share a store and a host name fall back to duplicate
  work, never to a wrong result.
* **Waiting**: a worker that finds a live claim polls every ``HARNESS_CLAIM_POLL_S`` (default
  1 s) until the stage is in the store (then it reuses it), the claim goes away (it tries to
  take it: the holder failed) or the claim goes stale (takeover).

Limits: NFS close-to-open consistency and attribute caching (``actimeo``, up to 60 s by default)
can delay when a waiter sees a new claim or a fresh mtime; the timeout must exceed the
attribute cache time, hence the 90 s default. In the rare interleavings above (a holder that
was paused longer than the timeout, a takeover race) two workers may compute one stage; the
atomic publish keeps the store correct and the second result is discarded. Nothing here loads
code: claims are JSON, read with ``json.loads`` for the log lines only.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from harness.console import console

TIMEOUT_ENV = "HARNESS_CLAIM_TIMEOUT_S"
POLL_ENV = "HARNESS_CLAIM_POLL_S"
DEFAULT_TIMEOUT_S = 90.0
DEFAULT_POLL_S = 1.0


def claim_timeout() -> float:
    return float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S))


def _poll_interval() -> float:
    return float(os.environ.get(POLL_ENV, DEFAULT_POLL_S))


class Claim:
    """A held claim on one stage; :meth:`release` (or leaving :func:`claimed`) removes it."""

    def __init__(self, path: Path, token: str, beat_s: float):
        self.path, self.token, self.beat_s = path, token, beat_s
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"claim {path.name}", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.beat_s):
            if not self.owned():
                self.lost = True
                console.log(f"warning: claim {self.path} was taken over by another worker "
                            f"(this one was silent too long); both may compute the stage, "
                            f"the first to finish publishes it")
                return
            try:
                os.utime(self.path)
            except OSError:
                pass

    def owned(self) -> bool:
        return _token(self.path) == self.token

    def release(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        if self.owned():
            self.path.unlink(missing_ok=True)


def _token(path: Path) -> str | None:
    try:
        return json.loads(path.read_text()).get("token")
    except (OSError, ValueError, AttributeError):
        return None


def _describe(path: Path) -> str:
    try:
        info = json.loads(path.read_text())
        return f"{info.get('host')} pid {info.get('pid')}"
    except (OSError, ValueError, AttributeError):
        return "an unknown worker"


def try_claim(path: Path, timeout: float | None = None) -> Claim | None:
    """Take the claim at ``path`` if nobody holds it (atomic ``link``); None if someone does."""
    timeout = claim_timeout() if timeout is None else timeout
    path.parent.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex
    beat = max(0.2, timeout / 6)
    info = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time(),
            "heartbeat": beat, "token": token}
    unique = path.parent / f".{path.name}.{token}"
    unique.write_text(json.dumps(info))
    try:
        try:
            os.link(unique, path)
        except FileExistsError:
            return None
        except OSError:
            if os.stat(unique).st_nlink != 2:  # NFS: a retried link may report an error
                return None
        return Claim(path, token, beat)
    finally:
        unique.unlink(missing_ok=True)


def _age(path: Path) -> float | None:
    """Seconds since ``path`` was last touched, measured on the filesystem's own clock (a probe
    file touched now); None if it does not exist."""
    probe = path.parent / f".probe-{socket.gethostname()}-{os.getpid()}"
    probe.touch()
    os.utime(probe)
    try:
        return os.stat(probe).st_mtime - os.stat(path).st_mtime
    except FileNotFoundError:
        return None
    finally:
        probe.unlink(missing_ok=True)


def _holder_gone(path: Path) -> bool:
    """True when the claim's holder ran on this host and its process no longer exists (killed
    with SIGKILL, out of memory): no need to wait for its heartbeat to go stale. A live pid, a
    zombie not yet reaped, another host or an unreadable claim: False (the timeout decides)."""
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(info, dict) or info.get("host") != socket.gethostname():
        return False
    pid = info.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # another user's live process
        return False
    return False


def _stale(path: Path, timeout: float, age: float | None) -> str | None:
    """Why the claim at ``path``, last touched ``age`` seconds ago (:func:`_age`; None: gone),
    may be taken over (None: its holder may still be computing)."""
    if age is None:
        return None
    if age > timeout:
        return f"silent for over {timeout:.0f} s ({TIMEOUT_ENV})"
    return "no longer running" if _holder_gone(path) else None


def _take_over(path: Path, timeout: float) -> bool:
    """Move a stale claim aside (one renamer wins); True if this worker removed it."""
    stale = _token(path)
    aside = path.parent / f".{path.name}.stale-{uuid.uuid4().hex}"
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return False
    reason = _stale(aside, timeout, _age(aside)) if _token(aside) == stale else None
    if reason is None:
        try:  # a fresh claim raced in: give it back
            os.link(aside, path)
        except OSError:
            pass
        aside.unlink(missing_ok=True)
        return False
    holder = _describe(aside)
    aside.unlink(missing_ok=True)
    console.log(f"claim {path.parent.name}/{path.stem}: holder {holder} {reason}; "
                "taking the stage over")
    return True


@contextmanager
def claimed(path: Path, done: Callable[[], bool], label: str = "") -> Iterator[Claim | None]:
    """Hold the claim at ``path`` while the body computes the stage; yields None when the stage
    became ``done()`` meanwhile (computed by the claim's holder: reuse it). Waits while another
    live worker holds it; takes over a claim whose heartbeat stopped for the timeout."""
    timeout, poll = claim_timeout(), _poll_interval()
    claim, waiting = None, False
    while not done():
        claim = try_claim(path, timeout)
        if claim is not None:
            break
        age = _age(path)
        if _stale(path, timeout, age):
            _take_over(path, timeout)
            continue
        if not waiting and age is not None:
            console.log(f"  waiting for {label or path.stem}: computed by {_describe(path)}")
            waiting = True
        time.sleep(poll)
    try:
        if claim is not None and done():  # published between our check and the claim
            yield None
        else:
            yield claim
    finally:
        if claim is not None:
            claim.release()
