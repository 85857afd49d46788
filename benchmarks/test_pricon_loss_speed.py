"""Speed and peak memory of :func:`supcon_loss` (blockwise) against the reference computation.

Scale: PRICon's point loss at paper scale -- B = 256 images x N = 32 points x 2 views = 16,384
vectors of 128-d, 6 classes, float32, tau = 0.1.

The baseline is a literal re-implementation of ``pricon:src/loss.py simclr_loss_func`` on one
process (``gather`` is the identity, ``get_rank() == 0``): normalise, the full ``n x n``
similarity matrix through ``exp(einsum / tau)``, ``n x n`` boolean masks for positives and
negatives, masked products and row sums, ``log``, ``mean`` -- several ``n x n`` matrices alive at
once, and autograd keeping what it needs of them for backward.

Each implementation runs forward + backward in a **fresh subprocess** (same inputs from a fixed
seed): its peak memory is the growth of the process's maximum resident set size
(``getrusage(RUSAGE_SELF).ru_maxrss``) from just before the computation (after imports, inputs and
a small warm-up) to the end; its time is the best of a few rounds (wall clock). Both must give the
same loss (1e-4) and gradients (max difference <= 1e-4 of the gradient's largest entry); the
blockwise path must be >= 2.5x faster and use <= 1/4 of the baseline's peak memory.

Threads: ``PRICON_BENCH_THREADS`` (default 1). The development machine is a shared 2-core box on
which intra-op thread synchronisation under load makes timings erratic; one thread per process
gives stable, comparable numbers for both implementations.

Run::

    .venv/bin/python -m pytest benchmarks/test_pricon_loss_speed.py -m benchmark -p no:cacheprovider -s
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

N_VECTORS = 256 * 32 * 2
DIM = 128
N_CLASSES = 6
TAU = 0.1
REF_ROUNDS = 2
BLOCKWISE_ROUNDS = 3
TARGET_SPEEDUP = 2.5
TARGET_MEMORY_RATIO = 0.25
THREADS = int(os.environ.get("PRICON_BENCH_THREADS", "1"))


def reference_loss(z: torch.Tensor, indexes: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """``pricon:src/loss.py simclr_loss_func`` on one process, statement by statement."""
    z = F.normalize(z, dim=-1)
    gathered_z = z  # gather(z) without a process group

    sim = torch.exp(torch.einsum("if, jf -> ij", z, gathered_z) / temperature)

    gathered_indexes = indexes  # gather(indexes)

    indexes = indexes.unsqueeze(0)
    gathered_indexes = gathered_indexes.unsqueeze(0)
    # positives
    pos_mask = indexes.t() == gathered_indexes
    pos_mask[:, z.size(0) * 0:].fill_diagonal_(0)  # get_rank() == 0
    # negatives
    neg_mask = indexes.t() != gathered_indexes

    pos = torch.sum(sim * pos_mask, 1)
    neg = torch.sum(sim * neg_mask, 1)
    loss = -(torch.mean(torch.log(pos / (pos + neg))))
    return loss


def _inputs(n: int = N_VECTORS, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, DIM, generator=g), torch.randint(0, N_CLASSES, (n,), generator=g)


def _loss_fn(impl: str):
    if impl == "reference":
        return lambda f, y: reference_loss(f, y, TAU)
    from harness_builtin.methods.supcon import supcon_loss

    return lambda f, y: supcon_loss(f, y, temperature=TAU)


def _fwd_bwd(fn, feats: torch.Tensor, labels: torch.Tensor) -> tuple[float, torch.Tensor]:
    f = feats.clone().requires_grad_(True)
    loss = fn(f, labels)
    loss.backward()
    return loss.item(), f.grad


def _maxrss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def worker(impl: str, rounds: int, out_dir: str) -> None:
    """One implementation in this (fresh) process: peak-RSS growth, best time, loss, gradient."""
    torch.set_num_threads(THREADS)
    fn = _loss_fn(impl)
    feats, labels = _inputs()
    _fwd_bwd(fn, *_inputs(n=512, seed=1))  # warm-up: lazy initialisation, kernels, allocator
    base = _maxrss_bytes()
    times, cpu_times = [], []
    for _ in range(rounds):
        t0, c0 = time.perf_counter(), time.process_time()
        loss, grad = _fwd_bwd(fn, feats, labels)
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
    peak = _maxrss_bytes() - base
    torch.save(grad, Path(out_dir) / f"{impl}_grad.pt")
    (Path(out_dir) / f"{impl}.json").write_text(json.dumps(
        {"loss": loss, "times_s": times, "cpu_times_s": cpu_times, "peak_rss_delta_bytes": peak,
         "threads": torch.get_num_threads()}))


def _run_worker(impl: str, rounds: int, out_dir: Path) -> dict:
    env = dict(os.environ)
    repo = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = repo + os.pathsep + env.get("PYTHONPATH", "")
    subprocess.run([sys.executable, __file__, impl, str(rounds), str(out_dir)], check=True, env=env,
                   timeout=1200)
    return json.loads((out_dir / f"{impl}.json").read_text())


@pytest.mark.benchmark(group="pricon_supcon_16384x128_fwd_bwd")
def test_supcon_blockwise_vs_reference(benchmark, tmp_path) -> None:
    ref = _run_worker("reference", REF_ROUNDS, tmp_path)
    blk = _run_worker("blockwise", BLOCKWISE_ROUNDS, tmp_path)

    # identical results
    assert abs(ref["loss"] - blk["loss"]) < 1e-4, (ref["loss"], blk["loss"])
    g_ref = torch.load(tmp_path / "reference_grad.pt")
    g_blk = torch.load(tmp_path / "blockwise_grad.pt")
    scale = g_ref.abs().max().item()
    grad_err = (g_ref - g_blk).abs().max().item()
    assert grad_err <= 1e-4 * scale, (grad_err, scale)

    # pytest-benchmark statistics of the blockwise forward+backward (in this process)
    torch.set_num_threads(THREADS)
    feats, labels = _inputs()
    fn = _loss_fn("blockwise")
    benchmark.pedantic(_fwd_bwd, args=(fn, feats, labels), rounds=2, iterations=1, warmup_rounds=0)

    ref_s, blk_s = min(ref["times_s"]), min(blk["times_s"])
    speedup = ref_s / blk_s
    mem_ratio = blk["peak_rss_delta_bytes"] / ref["peak_rss_delta_bytes"]
    info = {
        "threads": blk["threads"],
        "reference_best_s": ref_s, "blockwise_best_s": blk_s, "speedup": speedup,
        "reference_cpu_best_s": min(ref["cpu_times_s"]), "blockwise_cpu_best_s": min(blk["cpu_times_s"]),
        "reference_peak_mib": ref["peak_rss_delta_bytes"] / 2**20,
        "blockwise_peak_mib": blk["peak_rss_delta_bytes"] / 2**20,
        "peak_memory_ratio": mem_ratio,
        "loss": blk["loss"], "loss_abs_diff": abs(ref["loss"] - blk["loss"]),
        "grad_max_abs_diff_rel": grad_err / scale,
    }
    benchmark.extra_info.update(info)
    print(f"\nsupcon_loss fwd+bwd, n={N_VECTORS}, d={DIM}, {N_CLASSES} classes, float32, "
          f"{blk['threads']} thread(s):\n"
          f"  reference : {ref_s:6.2f} s (cpu {info['reference_cpu_best_s']:.2f} s), "
          f"peak +{info['reference_peak_mib']:.0f} MiB\n"
          f"  blockwise : {blk_s:6.2f} s (cpu {info['blockwise_cpu_best_s']:.2f} s), "
          f"peak +{info['blockwise_peak_mib']:.0f} MiB\n"
          f"  speed-up {speedup:.1f}x, peak-memory ratio {mem_ratio:.3f}, "
          f"loss diff {info['loss_abs_diff']:.1e}, grad diff {info['grad_max_abs_diff_rel']:.1e} (rel)")
    assert speedup >= TARGET_SPEEDUP, info
    assert mem_ratio <= TARGET_MEMORY_RATIO, info


if __name__ == "__main__":  # worker mode: python test_pricon_loss_speed.py IMPL ROUNDS OUT_DIR
    worker(sys.argv[1], int(sys.argv[2]), sys.argv[3])
