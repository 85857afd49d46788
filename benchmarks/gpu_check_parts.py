"""The GPU check's runtime parts (``benchmarks/gpu_check.py`` runs them, each under its own
try/except): machine facts, host syncs per training step, AMP vs fp32 evaluation, a forced fp16
run, exact resume with loader workers, DDP at world size 1. Each works at ``--tiny`` scale on
the CPU too."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as nnf


def machine_facts(device: torch.device) -> dict[str, Any]:
    """GPU, driver, CUDA, bf16 natively, ``/dev/shm``, CPUs, torch, cuDNN settings."""
    from harness.engine.loader import shm_free_bytes

    facts: dict[str, Any] = {
        "torch": torch.__version__, "cuda": torch.version.cuda,
        "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "shm_free_gib": (shm_free_bytes() or 0) / 2**30,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        facts.update(gpu=props.name, gpu_memory_gib=props.total_memory / 2**30,
                     capability=f"{props.major}.{props.minor}", gpus_visible=torch.cuda.device_count(),
                     bf16_native=torch.cuda.is_bf16_supported(including_emulation=False))
        try:
            facts["driver"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=10).stdout.strip().splitlines()[0]
        except (OSError, subprocess.SubprocessError, IndexError):
            facts["driver"] = None
    return facts


def host_syncs_part(sc: dict, device: torch.device) -> dict[str, Any]:
    """Syncs in one training step's forward and backward, per method (0 expected for
    fine-tuning, SimCLR and SimSiam; PRICon's are counted)."""
    from harness.data.torchdata import Normalizer
    from harness.engine.finetune import _segmentation_step
    from harness.heads.train import batch_loss
    from harness.engine.host_syncs import count_syncs
    from harness.engine.model import build_encoder, build_unet
    from harness.engine.runtime import Precision
    from harness_builtin.methods.pricon import PRICon
    from harness_builtin.methods.simclr import SimCLR
    from harness_builtin.methods.simsiam import SimSiam

    precision = Precision(device, True)
    b, c, size = sc["batch"], sc["crop"], sc["ft_size"]
    model = build_unet(sc["encoder"], 6).to(device).train()
    step_fn = _segmentation_step(model, Normalizer({"mean": [0.5] * 3, "std": [0.25] * 3}),
                                 precision, device, False, batch_loss("semantic", None))
    ft_batch = (torch.rand(sc["ft_batch"], 3, size, size), torch.randint(0, 6, (sc["ft_batch"], size, size)))
    if device.type == "cuda":  # as the loader gives them
        ft_batch = tuple(t.pin_memory() for t in ft_batch)
    out = {"finetune": count_syncs(lambda: step_fn(ft_batch, None)[0].backward(), device)}
    views = {f"view{v}": torch.rand(b, 3, c, c, device=device) for v in (1, 2)}
    masks = {f"mask{v}": torch.randint(0, 6, (b, c, c), device=device) for v in (1, 2)}
    for cls in (SimCLR, SimSiam, PRICon):
        method = cls()
        encoder = build_encoder(sc["encoder"])
        net = method.build_model(encoder, list(encoder.out_channels)).to(device).train()
        batch = {**views, **masks} if cls is PRICon else views

        def step(method=method, net=net, batch=batch):
            with precision.autocast():
                loss, _ = method.training_step(net, batch, 6)
            loss.backward()

        out[method.name] = count_syncs(step, device)
    return {"per_step": {k: len(v) for k, v in out.items()},
            "ops": {k: sorted(set(v)) for k, v in out.items()}}


def eval_precision_part(sc: dict, device: torch.device) -> dict[str, Any]:
    """A U-Net trained a few steps, predicted in fp32 (TF32 off, the default) and under AMP:
    the fraction of pixels whose argmax differs."""
    from harness.data.torchdata import Normalizer
    from harness.engine.evaluate import predict
    from harness.engine.model import build_unet
    from harness.engine.runtime import Precision

    torch.manual_seed(0)
    size, n = sc["ft_size"], 4 * sc["ft_batch"]
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    labels = torch.from_numpy((images.mean(-1) > 127).astype(np.int64))
    model = build_unet(sc["encoder"], 2).to(device)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255).to(device)
    for _ in range(sc["ft_steps"]):
        opt.zero_grad()
        nnf.cross_entropy(model(x), labels.to(device)).backward()
        opt.step()
    norm = Normalizer({"mean": [0.5] * 3, "std": [0.25] * 3})
    preds = {}
    for amp in (False, True):
        chunks = predict(model, images, range(n), norm, device, sc["ft_batch"], Precision(device, amp),
                         quiet=True, num_workers=0)
        preds[amp] = np.concatenate([p for _, p in chunks])
    return {"argmax_disagreement": float((preds[False] != preds[True]).mean()),
            "amp_dtype": str(Precision(device, True).dtype), "pixels": int(preds[False].size)}


def fp16_part(sc: dict, device: torch.device) -> dict[str, Any]:
    """Twenty fine-tuning steps in fp16 with a grad scaler (the branch of GPUs without native
    bf16), forced, against fp32: both curves, the relative difference, the scaler's scale."""
    from harness.engine.model import build_unet
    from harness.engine.runtime import Precision

    g = torch.Generator().manual_seed(1)
    size, n = sc["ft_size"], sc["ft_batch"]
    batches = [(torch.rand(n, 3, size, size, generator=g), torch.randint(0, 6, (n, size, size), generator=g))
               for _ in range(20)]
    curves, scale = {}, None
    for fp16 in (False, True):
        torch.manual_seed(0)
        model = build_unet(sc["encoder"], 6).to(device)
        opt = torch.optim.Adam(model.parameters(), 1e-3)
        on = fp16 and device.type == "cuda"
        scaler = torch.amp.GradScaler(device.type, enabled=on)
        losses = []
        for xb, yb in batches:
            with torch.autocast(device.type, dtype=torch.float16, enabled=on):
                loss = nnf.cross_entropy(model(xb.to(device)).float(), yb.to(device))
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            losses.append(loss.detach())
        curves["fp16" if fp16 else "fp32"] = torch.stack(losses).float().cpu()
        scale = scaler.get_scale() if on else None
    rel = ((curves["fp16"] - curves["fp32"]).abs() / curves["fp32"].abs()).tolist()
    return {"fp32": curves["fp32"].tolist(), "fp16": curves["fp16"].tolist(),
            "max_rel_diff": max(rel), "final_scale": scale,
            "finite": bool(torch.isfinite(curves["fp16"]).all()),
            "precision_default": str(Precision(device, True).dtype)}


def resume_part(sc: dict, device: torch.device, tmp: Path) -> dict[str, Any]:
    """The same epoch through 1 and 2 loader workers and a fresh iterator (a resumed run): the
    batches and their random draws must be equal."""
    from harness.engine.loader import epoch_loader

    class Noisy(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 4 * sc["ft_batch"]

        def __getitem__(self, i: int) -> torch.Tensor:
            return torch.rand(3) + i

    def epoch(workers: int, seed: int) -> torch.Tensor:
        loader = epoch_loader(Noisy(), batch_size=sc["ft_batch"], drop_last=False,
                              num_workers=workers, device=device, worker_init_fn=None)
        loader.batch_sampler.set_epoch_seed(seed)
        return torch.cat([b.cpu() for b in loader])

    one, two = epoch(1, 3), epoch(2, 3)
    return {"equal_across_workers": bool(torch.equal(one, two)),
            "other_epoch_differs": not torch.equal(one, epoch(2, 4))}


def ddp_part(device: torch.device) -> dict[str, Any]:
    """``init_process_group`` (NCCL on CUDA, gloo on CPU) with one rank; DDP's gradients must
    equal the unwrapped model's."""
    import socket

    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    backend = "nccl" if device.type == "cuda" else "gloo"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        plain = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4)).to(device)
        wrapped = DDP(torch.nn.Sequential(*[m for m in plain]).to(device),
                      device_ids=[device.index or 0] if device.type == "cuda" else None)
        x = torch.randn(16, 32, device=device)
        wrapped(x).square().mean().backward()
        grads_ddp = [p.grad.clone() for p in wrapped.parameters()]
        plain.zero_grad()
        plain(x).square().mean().backward()
        ok = all(torch.allclose(a, b.grad) for a, b in zip(grads_ddp, plain.parameters()))
        t = torch.ones(4, device=device)
        dist.all_reduce(t)
        return {"backend": backend, "world_size": dist.get_world_size(),
                "grads_equal": ok, "all_reduce": t.tolist()}
    finally:
        dist.destroy_process_group()
