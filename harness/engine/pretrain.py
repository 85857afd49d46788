"""The pretraining loop shared by every ``pretrain`` method.

Two augmented views per unlabeled image (plus aligned pseudo-label masks for methods that need
them), streamed from the dataset's uint8 memory map; LARS (timm) or SGD with per-iteration
cosine decay to 0 (thesis §4.1.2, no warm-up); AMP on CUDA; checkpoints and resume by
:mod:`harness.engine.loop`. The method builds its heads and computes the loss of a batch
(told the step index and the total when its ``training_step`` accepts ``step`` and
``total_steps``); its ``after_step`` runs after every optimizer step (a momentum target).
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

import numpy as np
import torch

from harness.console import console
from harness.engine.context import StageContext
from harness.engine.distributed import wrap_ddp
from harness.engine.init_encoder import save_encoder_artifact
from harness.engine.loader import epoch_loader
from harness.engine.loop import EpochLog, EpochSource, MethodHook, TrainLoop, optimizer_steps
from harness.engine.model import build_encoder
from harness.engine.runtime import (Checkpoint, Precision, resolve_num_workers, seed_everything,
                                    worker_init_fn)
from harness.methods import PretrainMethod
from harness.plugin_faults import require_attribute
from harness.store import atomic_torch_save


def _optimizer(method: PretrainMethod, model: torch.nn.Module) -> torch.optim.Optimizer:
    cfg = method.config
    groups = method.param_groups(model)
    if cfg.optimizer == "lars":
        from timm.optim import Lars

        # timm adapts only groups with weight decay != 0; biases and norm parameters sit in a
        # zero-decay group, so they get neither LARS scaling nor decay (``pricon:src/optim.py``, Lightning-Bolts' LARS with ``exclude_bias_n_norm``; timm's ``param_groups_weight_decay``).
        return Lars(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                    trust_coeff=cfg.lars_trust_coeff, trust_clip=True)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def _cosine_schedule(optimizer: torch.optim.Optimizer, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    def cosine(step: int) -> float:
        return 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / max(1, total_steps)))

    lambdas = [(lambda step: 1.0) if g.get("fixed_lr") else cosine for g in optimizer.param_groups]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)


def _image_rows(n: int, max_images: int | None, seed: int) -> np.ndarray:
    """All image rows, or a seeded subset of ``max_images``."""
    rows = np.arange(n)
    if max_images is not None and max_images < n:
        rows = np.sort(np.random.RandomState(seed).permutation(n)[:max_images])
    return rows


def pretrain(ctx: StageContext, *, method: PretrainMethod, images: np.ndarray,
             masks: np.ndarray | None, encoder_name: str, seed: int, num_classes: int | None,
             start_from: dict[str, Any] | None = None,
             encoder_args: dict[str, Any] | None = None) -> dict[str, Any]:
    """Pretrain an encoder; write ``encoder.pt``/``encoder.json`` (the fine-tuning input),
    ``model.pt`` (encoder + heads, to continue training in a later cycle) and
    ``pretrain_log.json``."""
    cfg = method.config
    device = ctx.device
    model = _initial_model(method, encoder_name, seed, start_from, encoder_args).to(device)
    precision = Precision(device, cfg.amp)
    channels_last = cfg.channels_last and device.type == "cuda"
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if cfg.compile:  # in place (state_dict keys unchanged); methods call
        getattr(model, "encoder", model).compile()  # model.encoder, so compile that
    data, make_views = _views_data(method, images, masks, seed, device)
    batch_size = min(cfg.batch_size, len(data))
    loader = epoch_loader(data, batch_size=batch_size, drop_last=True,
                          num_workers=resolve_num_workers(cfg.num_workers, device),
                          device=device, worker_init_fn=worker_init_fn, shard=True)
    source = EpochSource(loader, cfg.epochs, seed, begin=lambda epoch: model.train())
    accumulation = cfg.grad_accumulation
    total_steps = optimizer_steps(source.total, source.period, accumulation)
    optimizer = _optimizer(method, model)
    scheduler = _cosine_schedule(optimizer, total_steps)
    # under torchrun: DDP, SyncBatchNorm on CUDA where the method asks for it
    net = wrap_ddp(model, device, getattr(method, "sync_batchnorm", True))
    _warn_compile_with_syncbn(ctx, method, net is not model, device)
    step_fn = _step_fn(method, net, device, make_views, channels_last, precision, num_classes)
    loop = TrainLoop(
        label=ctx.label, models={"model": model}, optimizer=optimizer, scheduler=scheduler,
        scaler=precision.scaler(), step_fn=step_fn, source=source, checkpoint=Checkpoint(ctx.work),
        checkpoint_every_s=ctx.checkpoint_every_s,
        hooks=[MethodHook(method, model), EpochLog(ctx, scheduler, "pretrain")],
        grad_clip_norm=cfg.grad_clip_norm, accumulation=accumulation,
        quiet=ctx.quiet, progress_fields=lambda period, step: {"epoch": period + 1},
        ddp=net if net is not model else None)
    started = time.time()
    history = loop.run()
    start_epoch = loop.start // source.period

    model.to("cpu")
    view_cfg = method.view_config()
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


def _views_data(method: PretrainMethod, images: np.ndarray, masks: np.ndarray | None, seed: int,
                device: torch.device) -> tuple[Any, Any]:
    """The dataset of the pretraining images (``max_images`` of them) and, with the device view
    pipeline, the module that makes the two views on the device (None: the dataset makes
    them in the loader)."""
    from harness.data.device_views import DeviceViews, TileDataset, resolve_view_pipeline
    from harness.data.views import TwoViewDataset

    cfg = method.config
    rows = _image_rows(len(images), cfg.max_images, seed)
    view_cfg = method.view_config()
    if resolve_view_pipeline(cfg.view_pipeline, device) == "device":
        # the loader streams uint8 tiles; the views are made where the model runs
        return TileDataset(images, masks, indices=rows), DeviceViews(view_cfg)
    return TwoViewDataset(images, masks, view_cfg, indices=rows), None


def _warn_compile_with_syncbn(ctx: StageContext, method: PretrainMethod, ddp: bool,
                              device: torch.device) -> None:
    if method.config.compile and ddp and device.type == "cuda" \
            and getattr(method, "sync_batchnorm", True):
        console.log(f"warning: {ctx.label}: compile: true with SyncBatchNorm (DDP on CUDA): "
                    f"torch.compile breaks the graph at every SyncBatchNorm layer, so it may be "
                    f"slower than compile: false")


def _step_fn(method: PretrainMethod, net: torch.nn.Module, device: torch.device, make_views: Any,
             channels_last: bool, precision: Precision, num_classes: int | None):
    """One training step on a loader batch: to the device, views made there (device pipeline),
    channels-last, the method's step under autocast."""
    def step_fn(batch, info):
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        if make_views is not None:
            batch = make_views(batch)
        if channels_last:
            batch = {k: v.contiguous(memory_format=torch.channels_last) if v.ndim == 4 else v
                     for k, v in batch.items()}
        with precision.autocast():
            return method.training_step(net, batch, num_classes)

    return step_fn


def _initial_model(method: PretrainMethod, encoder_name: str, seed: int,
                   start_from: dict[str, Any] | None,
                   encoder_args: dict[str, Any] | None = None) -> torch.nn.Module:
    """The method's model (encoder + heads) from the seed, or a previous cycle's state."""
    seed_everything(seed)
    encoder = build_encoder(encoder_name, encoder_args)
    method.init_encoder(encoder, encoder_name, seed)
    model = method.build_model(encoder, list(encoder.out_channels))
    require_attribute(method, model, "encoder", encoder, "build_model")
    if start_from is not None:
        model.load_state_dict(start_from)
    return model
