"""The foundation-model part of ``benchmarks/gpu_check.py``: a ViT-L/16 (UNI's architecture,
random weights) at 256 px under ``unetr``, fine-tuned ``frozen``, ``lora`` (rank 16) and ``full``
with AMP: steps/s and peak CUDA memory of each, through the harness's own model building and
protocols (:mod:`harness.protocols`). At toy scale (``--tiny``) a ViT-Tiny at 32 px."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as nnf

FM_SCALES = {
    "full": dict(encoder="vit_large_patch16_224", args={"img_size": 224, "init_values": 1e-5},
                 size=256, batch=8, steps=10, warmup=3),
    "tiny": dict(encoder="vit_tiny_patch16_224", args={"img_size": 32}, size=32, batch=2, steps=2,
                 warmup=1),
}


def fm_part(tiny: bool, device: torch.device) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for protocol in ("frozen", "lora", "full"):
        out[protocol] = _protocol_steps(FM_SCALES["tiny" if tiny else "full"], protocol, device)
    full = out["full"].get("max_memory_gib")
    if full:
        for protocol in ("frozen", "lora"):
            out[protocol]["memory_vs_full"] = out[protocol]["max_memory_gib"] / full
    return out


def _protocol_steps(sc: dict, name: str, device: torch.device) -> dict[str, Any]:
    from harness.engine.runtime import Precision
    from harness.plugins import get_registry

    protocol = get_registry().protocol(name).cls()
    settings = SimpleNamespace(architecture="unetr", encoder_args=sc["args"], lora_rank=16,
                               lora_alpha=16.0)
    torch.manual_seed(0)
    model = protocol.build_model(sc["encoder"], 6, settings)
    protocol.prepare(model, settings)
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, 1e-4)
    precision = Precision(device, True)
    scaler = precision.scaler()
    x = torch.rand(sc["batch"], 3, sc["size"], sc["size"], device=device)
    y = torch.randint(0, 6, (sc["batch"], sc["size"], sc["size"]), device=device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    for i in range(sc["warmup"] + sc["steps"]):
        if i == sc["warmup"]:
            _sync(device)
            start = time.perf_counter()
        with precision.autocast():
            loss = nnf.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    _sync(device)
    result = {"steps_per_s": sc["steps"] / (time.perf_counter() - start), "batch": sc["batch"],
              "size": sc["size"], "encoder": sc["encoder"], "amp_dtype": str(precision.dtype),
              "trainable_params_m": sum(p.numel() for p in params) / 1e6,
              "loss_finite": bool(torch.isfinite(loss.detach()))}
    if device.type == "cuda":
        result["max_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    del model, opt
    return result


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
