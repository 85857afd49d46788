"""Preparing and verifying PanNuke hold a few chunks in resident memory, not the data: the peak
RSS (VmHWM, reset after the imports; in a fresh process) grows by a small share of the source
and cache sizes.

The source is the official layout (``Fold k/images/foldk/images.npy`` float64 ...) at 64x64
pixels and 400 patches per fold (112 MiB of float64 per fold, a 61 MiB cache), so the test
takes seconds. Measured on the development machine (3 runs): prepare +21 to +22 MiB, verify
+15 MiB; the whole-file maps they replace grew by 185-187 MiB (prepare: a fold of the source and
the whole cache stay resident) and 51 MiB (verify: both void policies' maps), so the bounds
below (a quarter of what the maps hold) pass with 2x margin and fail the maps by 4x and 1.7x.
At the real patch size (256x256, 300 patches per fold, a 4.0 GiB source) the peak was 0.80 GiB
(prepare) and 0.74 GiB (verify) for the whole process, 0.53 GiB of it torch and the other
imports; without whole-file maps it does not grow with the number of patches.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

N, SIZE = 400, 64

SCRIPT = textwrap.dedent("""
    import json, resource, sys
    from pathlib import Path
    import numpy as np
    import scipy.ndimage
    import harness.engine.runtime, harness.data.cache
    from harness_builtin.datasets.pannuke import PanNukeDataset
    def kb():  # peak RSS of this process's memory (VmHWM); getrusage's ru_maxrss also
        # counts the parent's RSS at fork, inherited across exec
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    what, source, root = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    ds = PanNukeDataset(PanNukeDataset.Config(), root)
    np.zeros((16, 64, 64, 6)).sum()  # warm the allocator as a chunk would
    try:
        open("/proc/self/clear_refs", "w").write("5")  # the peak from here on (Linux >= 4.0)
    except OSError:
        pass
    before = kb()
    problems = ds.prepare(source) if what == "prepare" else ds.verify()
    print(json.dumps({"before_kb": before, "after_kb": kb(), "problems": problems or []}))
""")


def write_source(root: Path, n: int = N, size: int = SIZE) -> int:
    """The unpacked release, written a block at a time; returns its bytes."""
    rng = np.random.default_rng(0)
    total = 0
    yy, xx = np.mgrid[:size, :size]
    for k in (1, 2, 3):
        fold = f"fold{k}"
        img_dir, mask_dir = root / f"Fold {k}" / "images" / fold, root / f"Fold {k}" / "masks" / fold
        img_dir.mkdir(parents=True)
        mask_dir.mkdir(parents=True)
        np.save(img_dir / "types.npy", np.array(["Breast", "Colon"] * (n // 2)))
        images = np.lib.format.open_memmap(img_dir / "images.npy", "w+", np.float64, (n, size, size, 3))
        masks = np.lib.format.open_memmap(mask_dir / "masks.npy", "w+", np.float64, (n, size, size, 6))
        for i in range(0, n, 50):
            block = rng.uniform(0, 255, (50, size, size, 3))
            m = np.zeros((50, size, size, 6))
            m[..., 5] = 1
            for j in range(50):  # two nuclei of random classes per patch
                for nucleus in (1, 2):
                    cy, cx = rng.integers(8, size - 8, 2)
                    disc = (yy - cy) ** 2 + (xx - cx) ** 2 < 25
                    m[j, disc, int(rng.integers(0, 5))] = nucleus
                    m[j, disc, 5] = 0
            images[i:i + 50], masks[i:i + 50] = block, m
        total += images.nbytes + masks.nbytes
        del images, masks
    return total


def _measure(what: str, source: Path, root: Path) -> dict:
    result = subprocess.run([sys.executable, "-c", SCRIPT, what, str(source), str(root)],
                            capture_output=True, text=True, timeout=300,
                            env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_prepare_and_verify_hold_chunks_not_the_data(tmp_path):
    source_bytes = write_source(tmp_path / "src")
    root = tmp_path / "cache" / "data"
    prepared = _measure("prepare", tmp_path / "src", root)
    cache_bytes = sum(p.stat().st_size for p in root.glob("*.npy"))
    checked = _measure("verify", tmp_path / "src", root)
    assert checked["problems"] == [], checked["problems"]
    grown = {w: (m["after_kb"] - m["before_kb"]) * 1024 for w, m in
             (("prepare", prepared), ("verify", checked))}
    fold = source_bytes // 3
    # a whole-file map keeps a fold of the source and the cache resident (> fold + cache);
    # chunks of 16 (prepare) and 256 (verify) rows are a few percent of it
    assert grown["prepare"] < 0.25 * (fold + cache_bytes), (grown, fold, cache_bytes)
    assert grown["verify"] < 0.25 * cache_bytes * 2, (grown, cache_bytes)
    print(f"max RSS growth: prepare {grown['prepare'] / 2**20:.1f} MB, verify "
          f"{grown['verify'] / 2**20:.1f} MB (fold {fold / 2**20:.0f} MB, cache "
          f"{cache_bytes / 2**20:.0f} MB)")
