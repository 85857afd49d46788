"""A GPU check ready to run: one CUDA GPU, under 8 minutes, results as JSON.

Measures, each part in its own try/except (an error entry instead of a crash) under one global
time budget:

* ``pretrain``: pretraining steps/s at thesis scale (batch 256, 224 px views of 256 px tiles,
  ResNet-18) for SimCLR and PRICon (with masks) through the harness's own pretraining engine
  (:func:`harness.engine.pretrain.pretrain`: loader of uint8 tiles, views on the device, AMP,
  channels_last, the one loop), against a bare step (the same method's loss, backward and
  optimizer step on views already on the device); ``ratio`` = bare steps/s / harness steps/s is
  the data path's cost. ``data_wait_fraction``: the share of step time the GPU sat idle between
  the end of one optimizer step and the start of the next batch's view making (CUDA events).
* ``finetune``: the fine-tuning step (U-Net ResNet-18, 256 px, batch 16, AMP + channels_last)
  through the harness loop against a bare PyTorch loop of the same model.
* ``amp_agreement``: fp32 vs AMP losses of the same model on the same 20 batches.
* ``ddp``: DDP with NCCL at world size 1 (one rank): a few steps, gradients equal to the
  unwrapped model's.
* ``pretrain_*_512*``: the same through the thesis's 512 px tiles, PRICon at resolution 7 and 56
  (peak memory).
* ``host_syncs``, ``eval_precision``, ``fp16``, ``resume`` (``benchmarks/gpu_check_parts.py``):
  syncs per training step per method, AMP vs fp32 evaluation's argmax disagreement, a forced
  fp16 + grad scaler run against fp32, loader-worker draws equal across worker counts.
* ``foundation_model``: ViT-L/16 at 256 px under ``unetr``, ``frozen``, ``lora`` and ``full``
  with AMP: steps/s and peak memory (``benchmarks/gpu_check_fm.py``).
* ``e2e_pool``, ``e2e_torchrun``, ``stage_noise`` (``benchmarks/gpu_check_e2e.py``): a tiny spec
  through ``harness run --executor pool`` and a fine-tune under torchrun (one process), each
  with a SIGTERM mid-training and a resume, against an uninterrupted run; the run-to-run noise
  of one short stage computed twice.

``info`` holds the machine facts (GPU, driver, CUDA, bf16 natively, ``/dev/shm``, CPUs). cuDNN
runs with the harness's own settings (no ``cudnn.benchmark``). How to read the JSON:
``docs/gpu_check.md``.

Run::

    .venv/bin/python benchmarks/gpu_check.py --out gpu_check.json
    .venv/bin/python benchmarks/gpu_check.py --device cpu --tiny   # the logic at toy scale

``benchmarks/test_gpu_check.py`` runs it on CUDA (skipped without) and, in the default test
suite, the ``--device cpu --tiny`` mode, so the script cannot rot.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import gpu_check_e2e as e2e  # next to this script
import gpu_check_parts as more
import numpy as np
import torch
import torch.nn.functional as nnf

sys.path.insert(0, str(Path(__file__).parent))
from gpu_check_fm import fm_part  # noqa: E402

SCALES = {  # batch, tile, crop, steps measured, warm-up steps, fine-tuning size/batch
    "full": dict(batch=256, tile=256, crop=224, steps=20, warmup=5, ft_size=256, ft_batch=16,
                 ft_steps=30, encoder="resnet18"),
    "tiny": dict(batch=4, tile=40, crop=32, steps=3, warmup=1, ft_size=32, ft_batch=2,
                 ft_steps=3, encoder="resnet18"),
}


#: Each end-to-end part's own cap (its commands are killed past it; the part reports an error).
E2E_CAP_S = 90.0


class Timer:
    """Elapsed seconds between points on the device's stream (CUDA events) or the host clock."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def mark(self) -> Any:
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            return ev
        return time.perf_counter()

    def seconds(self, a: Any, b: Any) -> float:
        if self.cuda:
            b.synchronize()
            return a.elapsed_time(b) / 1000.0
        return b - a


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _method(name: str, sc: dict, epochs: int):
    from harness_builtin.methods.pricon import PRICon
    from harness_builtin.methods.simclr import SimCLR

    cls = {"simclr": SimCLR, "pricon": PRICon}[name]
    extra = {"resolution": sc["resolution"]} if name == "pricon" and sc.get("resolution") else {}
    cfg = cls.Config(epochs=epochs, batch_size=sc["batch"], augment={"crop_size": sc["crop"]},
                     num_workers="auto", view_pipeline="device", **extra)
    return cls(cfg)


def thesis_tiles(sc: dict, tiny: bool, resolution: int | None = None) -> dict:
    """The thesis's 512 px tiles (``tile``; toy: 64 px), fewer steps; PRICon's dense map
    upsampled to ``resolution`` (7: the 224 px crop's own map; 56: Table 4.6's finest)."""
    return {**sc, "tile": 64 if tiny else 512, "steps": min(sc["steps"], 8),
            "resolution": resolution and (resolution // 7 * 2 if tiny else resolution)}


def pretrain_part(name: str, sc: dict, device: torch.device, tmp: Path) -> dict[str, Any]:
    from harness.data import device_views
    from harness.engine import pretrain as engine
    from harness.engine.context import StageContext
    from harness.engine.loop import Hook

    n_steps = sc["steps"] + sc["warmup"]
    num_classes = 6
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (sc["batch"] * n_steps, sc["tile"], sc["tile"], 3), dtype=np.uint8)
    masks = rng.integers(0, num_classes, images.shape[:3], dtype=np.uint8) if name == "pricon" else None
    method = _method(name, sc, epochs=1)
    timer = Timer(device)
    marks: dict[str, list[Any]] = {"end": [], "start": []}
    real_call = device_views.DeviceViews.__call__

    def timed_call(self, batch):  # the GPU starts this batch's work here
        marks["start"].append(timer.mark())
        return real_call(self, batch)

    class StepEnds(Hook):
        def after_step(self, step: int, total_steps: int) -> None:
            marks["end"].append(timer.mark())

    real_loop = engine.TrainLoop

    def loop_with_timing(*args, **kwargs):
        kwargs["hooks"] = [*kwargs.get("hooks", []), StepEnds()]
        return real_loop(*args, **kwargs)

    device_views.DeviceViews.__call__ = timed_call
    engine.TrainLoop = loop_with_timing
    try:
        tag = f"{name}_{sc['tile']}_{sc.get('resolution')}"
        ctx = StageContext(out=tmp / f"{tag}_out", work=tmp / f"{tag}_work", inputs={},
                           device=device, label=f"gpu_check {name}", quiet=True,
                           checkpoint_every_s=1e9)
        ctx.out.mkdir(parents=True, exist_ok=True)
        engine.pretrain(ctx, method=method, images=images, masks=masks,
                        encoder_name=sc["encoder"], seed=0, num_classes=num_classes)
    finally:
        device_views.DeviceViews.__call__ = real_call
        engine.TrainLoop = real_loop
    w = sc["warmup"]
    ends, starts = marks["end"], marks["start"]
    measured = timer.seconds(ends[w - 1], ends[-1])
    idle = sum(timer.seconds(ends[i - 1], starts[i]) for i in range(w, len(ends)))
    harness_sps = (len(ends) - w) / measured
    bare_sps = bare_pretrain_steps(name, sc, device, num_classes)
    return {"steps_per_s": harness_sps, "images_per_s": 2 * sc["batch"] * harness_sps,
            "bare_steps_per_s": bare_sps, "ratio": bare_sps / harness_sps,
            "data_wait_fraction": idle / measured, "batch": sc["batch"], "crop": sc["crop"],
            "tile": sc["tile"], "resolution": sc.get("resolution"), "num_workers": _workers(device)}


def _workers(device: torch.device) -> int:
    from harness.engine.runtime import resolve_num_workers

    return resolve_num_workers("auto", device)


def bare_pretrain_steps(name: str, sc: dict, device: torch.device, num_classes: int) -> float:
    """The method's loss + backward + optimizer step on views already on the device (AMP,
    channels_last on CUDA), as a hand-written PyTorch loop."""
    from harness.engine import pretrain as engine
    from harness.engine.runtime import Precision

    method = _method(name, sc, epochs=1)
    model = engine._initial_model(method, sc["encoder"], 0, None).to(device)
    cl = device.type == "cuda"
    fmt = torch.channels_last if cl else torch.contiguous_format
    model.to(memory_format=fmt)
    opt = engine._optimizer(method, model)
    precision = Precision(device, True)
    scaler = precision.scaler()
    b, c = sc["batch"], sc["crop"]
    batch = {f"view{v}": torch.randn(b, 3, c, c, device=device).contiguous(memory_format=fmt)
             for v in (1, 2)}
    if name == "pricon":
        batch.update({f"mask{v}": torch.randint(0, num_classes, (b, c, c), device=device) for v in (1, 2)})
    timer = Timer(device)

    def step():
        with precision.autocast():
            loss, _ = method.training_step(model, batch, num_classes)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    for _ in range(sc["warmup"]):
        step()
    a = timer.mark()
    for _ in range(sc["steps"]):
        step()
    return sc["steps"] / timer.seconds(a, timer.mark())


def finetune_part(sc: dict, device: torch.device, tmp: Path) -> dict[str, Any]:
    from harness.engine.loop import Hook, IterationSource, TrainLoop
    from harness.engine.model import build_unet
    from harness.engine.runtime import Checkpoint, Precision

    n, size, steps = sc["ft_batch"], sc["ft_size"], sc["ft_steps"] + sc["warmup"]
    precision = Precision(device, True)
    fmt = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    x = torch.rand(n, 3, size, size, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, 6, (n, size, size), device=device)
    timer = Timer(device)

    def setup():
        torch.manual_seed(0)
        model = build_unet(sc["encoder"], 6).to(device).to(memory_format=fmt)
        return model, torch.optim.Adam(model.parameters(), 1e-3), precision.scaler()

    model, opt, scaler = setup()
    marks: list[Any] = []
    for i in range(steps):  # bare PyTorch
        with precision.autocast():
            loss = nnf.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        marks.append(timer.mark())
    bare = sc["ft_steps"] / timer.seconds(marks[sc["warmup"] - 1], marks[-1])

    model, opt, scaler = setup()
    marks = []

    class Mark(Hook):
        def after_step(self, step: int, total_steps: int) -> None:
            marks.append(timer.mark())

    def step_fn(batch, info):
        with precision.autocast():
            return nnf.cross_entropy(model(batch[0]), batch[1]), {}

    loop = TrainLoop(label="gpu_check finetune", models={"model": model}, optimizer=opt,
                     scheduler=torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0), scaler=scaler,
                     step_fn=step_fn, source=IterationSource(lambda s: ((x, y) for _ in range(s, steps)),
                                                             steps, steps),
                     checkpoint=Checkpoint(tmp / "ft_work"), checkpoint_every_s=1e9,
                     hooks=[Mark()], quiet=True)
    loop.run()
    harness = sc["ft_steps"] / timer.seconds(marks[sc["warmup"] - 1], marks[-1])
    return {"harness_steps_per_s": harness, "bare_steps_per_s": bare, "ratio": bare / harness,
            "batch": n, "size": size, "amp_dtype": str(precision.dtype)}


def amp_agreement_part(sc: dict, device: torch.device) -> dict[str, Any]:
    """Twenty SGD steps from one initialisation on the same batches, fp32 and AMP."""
    from harness.engine.model import build_unet
    from harness.engine.runtime import Precision

    g = torch.Generator().manual_seed(1)
    size, n = sc["ft_size"], sc["ft_batch"]
    batches = [(torch.rand(n, 3, size, size, generator=g), torch.randint(0, 6, (n, size, size), generator=g))
               for _ in range(20)]
    curves = {}
    for amp in (False, True):
        torch.manual_seed(0)
        model = build_unet(sc["encoder"], 6).to(device)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        precision = Precision(device, amp)
        scaler = precision.scaler()
        losses = []
        for xb, yb in batches:
            with precision.autocast():
                loss = nnf.cross_entropy(model(xb.to(device)), yb.to(device))
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            losses.append(loss.detach())
        curves["amp" if amp else "fp32"] = torch.stack(losses).float().cpu()
    rel = ((curves["amp"] - curves["fp32"]).abs() / curves["fp32"].abs()).tolist()
    return {"fp32": curves["fp32"].tolist(), "amp": curves["amp"].tolist(),
            "max_rel_diff": max(rel), "final_rel_diff": rel[-1],
            "amp_dtype": str(Precision(device, True).dtype)}


def run(device_name: str, tiny: bool, budget_s: float) -> dict[str, Any]:
    device = torch.device(device_name)
    sc = SCALES["tiny" if tiny else "full"]
    started = time.monotonic()
    info: dict[str, Any] = {"device": torch.cuda.get_device_name(device) if device.type == "cuda"
                            else "cpu", "scale": "tiny" if tiny else "full", **more.machine_facts(device)}
    results: dict[str, Any] = {"info": info}
    threads = torch.get_num_threads()
    if tiny and device.type == "cpu":  # intra-op threads only spin on toy tensors (and stall
        torch.set_num_threads(1)       # badly on a shared machine)
    try:
        _run_parts(results, sc, device, started, budget_s, tiny)
    finally:
        torch.set_num_threads(threads)
    info["seconds"] = round(time.monotonic() - started, 1)
    return results


def _run_parts(results: dict[str, Any], sc: dict, device: torch.device, started: float,
               budget_s: float, tiny: bool) -> None:
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp_name:
        tmp = Path(tmp_name)
        parts: list[tuple[str, Callable[[], dict[str, Any]]]] = [
            ("pretrain_simclr", lambda: pretrain_part("simclr", sc, device, tmp)),
            ("pretrain_pricon", lambda: pretrain_part("pricon", sc, device, tmp)),
            ("finetune", lambda: finetune_part(sc, device, tmp)),
            ("amp_agreement", lambda: amp_agreement_part(sc, device)),
            ("ddp", lambda: more.ddp_part(device)),
            ("host_syncs", lambda: more.host_syncs_part(sc, device)),
            ("eval_precision", lambda: more.eval_precision_part(sc, device)),
            ("fp16", lambda: more.fp16_part(sc, device)),
            ("resume", lambda: more.resume_part(sc, device, tmp)),
            ("pretrain_simclr_512", lambda: pretrain_part("simclr", thesis_tiles(sc, tiny), device, tmp)),
            ("pretrain_pricon_512_r7", lambda: pretrain_part("pricon", thesis_tiles(sc, tiny, 7), device, tmp)),
            ("pretrain_pricon_512_r56", lambda: pretrain_part("pricon", thesis_tiles(sc, tiny, 56),
                                                               device, tmp)),
            ("foundation_model", lambda: fm_part(sc is SCALES["tiny"], device)),
            ("e2e_pool", lambda: e2e.e2e_pool_part(device, tmp, tiny, shared, E2E_CAP_S)),
            ("e2e_torchrun", lambda: e2e.e2e_torchrun_part(device, tmp, tiny, shared, E2E_CAP_S)),
            ("stage_noise", lambda: e2e.stage_noise_part(device, tmp, tiny)),
        ]
        shared: dict[str, Any] = {}  # e2e_pool's uninterrupted run, e2e_torchrun's reference
        for name, part in parts:
            left = budget_s - (time.monotonic() - started)
            if left < 20:
                results[name] = {"error": f"skipped: {left:.0f} s of the {budget_s:.0f} s budget left"}
                continue
            t0 = time.monotonic()
            try:
                results[name] = part()
            except Exception as exc:  # noqa: BLE001 - every part reports, none stops the others
                results[name] = {"error": f"{type(exc).__name__}: {exc}",
                                 "traceback": traceback.format_exc(limit=8)}
            results[name]["seconds"] = round(time.monotonic() - t0, 2)
            if device.type == "cuda":
                results[name]["max_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
                torch.cuda.reset_peak_memory_stats(device)
                torch.cuda.empty_cache()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="toy scale (the test suite's CPU run)")
    parser.add_argument("--budget-s", type=float, default=420.0, help="global time budget")
    parser.add_argument("--out", type=Path, default=Path("gpu_check.json"))
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_check: no CUDA device; use --device cpu --tiny to check the logic", file=sys.stderr)
        return 3
    results = run(args.device, args.tiny, args.budget_s)
    args.out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
