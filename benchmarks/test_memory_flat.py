"""Resident memory of the unlabeled-tile data path does not grow with the number of tiles.

The thesis's TCGA set is 150,000 tiles of 512x512 (118 GB as uint8): preparing it, pseudo-labelling
it and streaming it for pretraining must work from memory maps, chunk by chunk. Each phase
(:mod:`benchmarks.memory_phases`) runs in its own process for 500 and for 2,000 generated
tiles while this test samples the process's anonymous resident memory (``RssAnon`` in
``/proc/PID/status``: heap, stacks, tensors; not the page cache or the file-backed pages of the
memory maps, which the kernel reclaims) every few milliseconds. Reported: both peaks per phase
and their difference per added tile, against the bytes a tile (and its mask) occupies.

Gate: under 8 KB per added tile, half of what keeping each added 64 px tile and its mask in
memory would take (1% of a thesis 512 px tile). What does grow is the per-tile bookkeeping that
the cache's format keeps in one JSON index (ids, provenance: ~1 KB of Python objects per tile,
~3.5 KB of resident memory with the allocator's slack, measured), so preparing 150,000 tiles
holds ~0.5 GB of it at the end, against 118 GB of pixels that stay on disk.

Run: ``.venv/bin/python -m pytest benchmarks/test_memory_flat.py -m benchmark -s``
(~3-5 minutes on 2 idle cores; most of it pseudo-labelling with a ResNet-18 U-Net).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

SIZE = 64  # tile side: memory per tile scales with it, the gate is relative to a tile's bytes
COUNTS = (500, 2000)
SCRIPT = Path(__file__).with_name("memory_phases.py")
GATE_BYTES = 8192


def _rss_anon_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def peak_anon_mib(*args: str) -> float:
    """Run a phase; the peak of its anonymous resident memory, sampled every 5 ms."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SCRIPT.parent.parent),
                                                        os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, str(SCRIPT), *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = 0
    while proc.poll() is None:
        kib = _rss_anon_kib(proc.pid)
        if kib is not None:
            peak = max(peak, kib)
        time.sleep(0.005)
    out = proc.stdout.read() if proc.stdout else ""
    assert proc.returncode == 0, f"{args[0]} failed:\n{out[-3000:]}"
    return peak / 1024


@pytest.mark.benchmark(group="memory_flat_in_tiles")
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_memory_is_flat_in_tile_count(tmp_path, benchmark) -> None:
    peaks: dict[str, dict[int, float]] = {"prepare": {}, "pseudolabel": {}, "stream": {}}
    for n in COUNTS:
        src, root, work = tmp_path / f"src{n}", tmp_path / f"tcga{n}", tmp_path / f"work{n}"
        subprocess.run([sys.executable, str(SCRIPT), "tiles", str(src), str(n), str(SIZE)],
                       check=True)
        peaks["prepare"][n] = peak_anon_mib("prepare", str(src), str(root), str(SIZE))
        peaks["pseudolabel"][n] = peak_anon_mib("pseudolabel", str(root), str(work))
        peaks["stream"][n] = peak_anon_mib("stream", str(root), str(work / "out" / "masks.npy"),
                                           str(SIZE))
        print(f"\n{n} tiles: " + ", ".join(f"{k} {v[n]:.1f} MiB" for k, v in peaks.items()),
              flush=True)
    tile_bytes = SIZE * SIZE * 3 + SIZE * SIZE  # image and its pseudo-label mask
    added = COUNTS[1] - COUNTS[0]
    print(flush=True)
    for phase, by_n in peaks.items():
        grow = (by_n[COUNTS[1]] - by_n[COUNTS[0]]) * 2**20 / added
        print(f"{phase:>12}: peak anonymous RSS {by_n[COUNTS[0]]:7.1f} MiB at {COUNTS[0]} tiles, "
              f"{by_n[COUNTS[1]]:7.1f} MiB at {COUNTS[1]}: {grow:+7.0f} B per added tile "
              f"({grow / tile_bytes:+.3f} of a tile's {tile_bytes} B)")
        benchmark.extra_info[phase] = {str(k): v for k, v in by_n.items()}
        benchmark.extra_info[f"{phase}_bytes_per_added_tile"] = grow
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    for phase, by_n in peaks.items():
        grow = (by_n[COUNTS[1]] - by_n[COUNTS[0]]) * 2**20 / added
        assert grow < GATE_BYTES, f"{phase}: {grow:.0f} B per added tile"
