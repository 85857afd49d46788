"""The pretraining loop shared by every ``pretrain`` method.

Two augmented views per unlabeled image (plus aligned pseudo-label masks for methods that need
them), streamed from the dataset's uint8 memory map; LARS (timm) or SGD with per-iteration
cosine decay to 0 (thesis §4.1.2, no warm-up); AMP on CUDA; checkpoint every epoch and resume.
The method only builds its heads and computes the loss of a batch.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

import numpy as np
import torch

from harness.engine.context import StageContext
from harness.engine.init_encoder import save_encoder_artifact
from harness.engine.model import build_encoder
from harness.engine.runtime import Checkpoint, Precision, progress_bar, seed_everything, worker_init_fn
from harness.methods import PretrainMethod
from harness.store import atomic_torch_save


def _optimizer(method: PretrainMethod, model: torch.nn.Module) -> torch.optim.Optimizer:
    cfg = method.config
    groups = method.param_groups(model)
    if cfg.optimizer == "lars":
        from timm.optim import Lars

        # timm adapts only groups with weight decay != 0; biases and norm parameters sit in a
        # zero-decay group, so they get neither LARS scaling nor decay (reference §7.9).
        return Lars(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                    trust_coeff=cfg.lars_trust_coeff, trust_clip=True)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def _cosine_schedule(optimizer: torch.optim.Optimizer, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    def cosine(step: int) -> float:
        return 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / max(1, total_steps)))

    lambdas = [(lambda step: 1.0) if g.get("fixed_lr") else cosine for g in optimizer.param_groups]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)


def pretrain(ctx: StageContext, *, method: PretrainMethod, images: np.ndarray,
             masks: np.ndarray | None, encoder_name: str, seed: int, num_classes: int | None,
             start_from: dict[str, Any] | None = None) -> dict[str, Any]:
    """Pretrain an encoder; write ``encoder.pt``/``encoder.json`` (the fine-tuning input),
    ``model.pt`` (encoder + heads, to continue training in a later cycle) and
    ``pretrain_log.json``."""
    from harness.data.views import TwoViewDataset

    cfg = method.config
    device = ctx.device
    seed_everything(seed)
    encoder = build_encoder(encoder_name)
    method.init_encoder(encoder, encoder_name, seed)
    model = method.build_model(encoder, list(encoder.out_channels))
    if start_from is not None:
        model.load_state_dict(start_from)
    model.to(device)
    precision = Precision(device, getattr(cfg, "amp", True))

    rows = np.arange(len(images))
    if cfg.max_images is not None and cfg.max_images < len(rows):
        rows = np.sort(np.random.RandomState(seed).permutation(len(rows))[:cfg.max_images])
    view_cfg = method.view_config()
    data = TwoViewDataset(images, masks, view_cfg, indices=rows)
    batch_size = min(cfg.batch_size, len(data))
    loader_gen = torch.Generator()
    loader = torch.utils.data.DataLoader(
        data, batch_size=batch_size, shuffle=True, drop_last=True, num_workers=cfg.num_workers,
        worker_init_fn=worker_init_fn, generator=loader_gen, pin_memory=device.type == "cuda",
        persistent_workers=cfg.num_workers > 0)
    steps_per_epoch = len(loader)
    total_steps = steps_per_epoch * cfg.epochs
    optimizer = _optimizer(method, model)
    scheduler = _cosine_schedule(optimizer, total_steps)
    scaler = precision.scaler()

    ckpt = Checkpoint(ctx.work)
    parts = dict(model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler)
    start_epoch, history = ckpt.resume_training(ctx.label, cfg.epochs, **parts)

    started = time.time()
    step = start_epoch * steps_per_epoch
    with progress_bar(ctx.label, total_steps, ctx.quiet) as advance:
        advance(step)
        for epoch in range(start_epoch, cfg.epochs):
            loader_gen.manual_seed(seed * 100_003 + epoch)
            torch.manual_seed(seed * 100_019 + epoch)
            model.train()
            total, count, extra_sum = 0.0, 0, {}
            for batch in loader:
                batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
                with precision.autocast():
                    loss, extra = method.training_step(model, batch, num_classes)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                step += 1
                value = float(loss.detach())
                if not math.isfinite(value):
                    raise FloatingPointError(f"{ctx.label}: loss is {value} at step {step}")
                total += value
                count += 1
                for k, v in extra.items():
                    extra_sum[k] = extra_sum.get(k, 0.0) + float(v)
                advance(1, epoch=epoch + 1, loss=value)
            entry = {"epoch": epoch + 1, "loss": total / max(count, 1),
                     "lr": scheduler.get_last_lr()[0],
                     **{k: v / max(count, 1) for k, v in extra_sum.items()}}
            history.append(entry)
            ctx.log_metrics(step, {f"pretrain/{k}": v for k, v in entry.items()})
            ckpt.save_training(epoch + 1, history, **parts)

    model.to("cpu")
    normalization = {"mean": list(view_cfg.mean), "std": list(view_cfg.std)}
    save_encoder_artifact(ctx, model.encoder.state_dict(), encoder_name, normalization, method.name)
    atomic_torch_save(model.state_dict(), ctx.out / "model.pt")
    (ctx.out / "pretrain_log.json").write_text(json.dumps(history, indent=2))
    return {
        "images": len(data), "batch_size": batch_size, "steps": total_steps,
        "resumed_from_epoch": start_epoch,
        "first_loss": history[0]["loss"] if history else None,
        "final_loss": history[-1]["loss"] if history else None,
        "seconds_this_run": time.time() - started,
    }
