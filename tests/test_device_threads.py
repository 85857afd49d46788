"""``cuda:N`` is resolved against the GPUs this process sees (a pool worker sees the spec's GPU
as cuda:0), with a one-line error where it cannot exist (GPUs faked: none on the test machine);
the pool honours an explicit ``OMP_NUM_THREADS`` so ``local`` and ``pool`` compute alike, and
gives each worker its own share of the CPUs (affinity)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from harness.engine.runtime import resolve_device, resolve_num_workers
from harness.errors import SpecError
from harness.execute.pool import PoolConfig, cpu_shares, visible_gpus, worker_slots


@pytest.fixture
def two_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5")
    monkeypatch.delenv("HARNESS_POOL_GPUS", raising=False)


def test_cuda_n_is_checked_against_the_visible_gpus(two_gpus):
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(SpecError, match=r"'cuda:2' but this process sees 2 GPU\(s\) "
                                        r"\(CUDA_VISIBLE_DEVICES=4,5\); use device: auto or cuda:0..cuda:1"):
        resolve_device("cuda:2")


def test_a_pool_worker_sees_the_specs_gpu_as_cuda_0(two_gpus, monkeypatch):
    assert visible_gpus("cuda:1") == ["5"]  # the pool pins its worker to GPU 1 of 4,5
    envs = worker_slots(PoolConfig(), "cuda:1", gpus=visible_gpus("cuda:1"), cpus=8)
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["5"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("HARNESS_POOL_GPUS", envs[0]["HARNESS_POOL_GPUS"])
    assert resolve_device("cuda:1") == torch.device("cuda", 0)
    with pytest.raises(SpecError, match=r"'cuda:3' but 2 GPU\(s\) are visible"):
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5")
        visible_gpus("cuda:3")


def test_the_pool_honours_an_explicit_omp_num_threads(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    cpu = worker_slots(PoolConfig(), "cpu", gpus=[], cpus=4)
    assert len(cpu) == 4 and {e["OMP_NUM_THREADS"] for e in cpu} == {"1"}
    gpu = worker_slots(PoolConfig(), "auto", gpus=["0", "1"], cpus=16)
    assert {e["OMP_NUM_THREADS"] for e in gpu} == {"1"}
    assert {e["OMP_NUM_THREADS"] for e in worker_slots(PoolConfig(threads=3), "cpu", gpus=[], cpus=12)} == {"3"}
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert {e["OMP_NUM_THREADS"] for e in worker_slots(PoolConfig(), "cpu", gpus=[], cpus=4)} == {"2"}


def test_auto_loader_workers_share_the_cpus_with_the_pools_workers(monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(16)), raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.delenv("HARNESS_POOL_WORKERS", raising=False)
    monkeypatch.delenv("HARNESS_POOL_CPUS", raising=False)
    assert resolve_num_workers("auto", torch.device("cuda")) == 8
    monkeypatch.setenv("HARNESS_POOL_WORKERS", "4")
    assert resolve_num_workers("auto", torch.device("cuda")) == 3
    # a worker pinned to its share: its affinity (faked: 16) is already divided
    monkeypatch.setenv("HARNESS_POOL_CPUS", ",".join(map(str, range(16))))
    assert resolve_num_workers("auto", torch.device("cuda")) == 8


def test_cpu_shares_are_disjoint_and_cover_the_cpus(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert cpu_shares(3, list(range(8))) == [[0, 1, 2], [3, 4, 5], [6, 7]]
    assert cpu_shares(2, [4, 5, 9]) == [[4, 5], [9]]
    assert cpu_shares(3, [0, 1]) == [[0], [1], [0]]  # more workers than CPUs: round robin
    envs = worker_slots(PoolConfig(), "auto", gpus=["0", "1"], affinity=list(range(16)))
    assert [e["HARNESS_POOL_CPUS"] for e in envs] == ["0,1,2,3,4,5,6,7", "8,9,10,11,12,13,14,15"]
    assert {e["OMP_NUM_THREADS"] for e in envs} == {"8"}


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity on this platform")
def test_two_pool_workers_run_on_disjoint_cpus():
    """The affinity each worker process sets itself (``pin_cpus``, first thing in its main)."""
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2:
        pytest.skip(f"this process may run on {len(allowed)} CPU: two disjoint shares need 2")
    probe = ("import os; from harness.execute.pool_worker import pin_cpus; pin_cpus(); "
             "print(','.join(map(str, sorted(os.sched_getaffinity(0)))))")
    seen = []
    for env in worker_slots(PoolConfig(workers=2), "cpu", gpus=[]):
        out = subprocess.run([sys.executable, "-c", probe], env={**os.environ, **env},
                             capture_output=True, text=True, check=True).stdout
        seen.append({int(c) for c in out.strip().split(",")})
    assert all(seen) and not seen[0] & seen[1] and seen[0] | seen[1] == set(allowed)
