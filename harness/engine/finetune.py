"""The fine-tuning loop shared by every method: U-Net on a labeled training split.

Thesis §4.1.3 defaults: Adam (0.9, 0.999), lr 1e-3 with cosine decay to 0 stepped per
iteration, batch 16, 100 epochs, unweighted cross-entropy; the last epoch's weights are kept
(the test fold is never used for selection). Checkpoints every epoch; a rerun resumes from the
last one.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any, Sequence

import torch
import torch.nn.functional as nnf

from harness.data.augment import finetune_train_transforms
from harness.data.base import LabeledArrays
from harness.data.torchdata import Normalizer, SegmentationSamples
from harness.engine.context import StageContext
from harness.engine.model import build_unet, freeze_encoder, load_encoder_weights, set_train_mode
from harness.engine.runtime import Checkpoint, Precision, progress_bar, seed_everything, worker_init_fn
from harness.safeload import STAGE_FIX, load_state_dict_file
from harness.store import atomic_torch_save


def load_encoder_artifact(path) -> tuple[dict[str, Any], dict[str, Any]]:
    state = load_state_dict_file(path / "encoder.pt", fix=STAGE_FIX)
    meta = json.loads((path / "encoder.json").read_text())
    return state, meta


def finetune(ctx: StageContext, *, arrays: LabeledArrays, train_ids: Sequence[str], num_classes: int,
             settings: Any, protocol: str, seed: int) -> dict[str, Any]:
    """Train a U-Net from the encoder artifact in ``ctx.inputs['encoder']``; write
    ``model.pt`` and ``train_log.json`` into ``ctx.out``; return a summary."""
    device = ctx.device
    seed_everything(seed)
    model = build_unet(settings.encoder, num_classes)
    enc_state, enc_meta = load_encoder_artifact(ctx.inputs["encoder"])
    load_encoder_weights(model, enc_state, source=str(ctx.inputs["encoder"] / "encoder.pt"))
    frozen = protocol == "frozen"
    if frozen:
        freeze_encoder(model)
    normalizer = Normalizer(enc_meta["normalization"], settings.normalization)
    precision = Precision(device, settings.amp)
    channels_last = settings.channels_last and device.type == "cuda"
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)

    data = SegmentationSamples(arrays, train_ids,
                               finetune_train_transforms(settings.image_size, settings.augment))
    drop_last = len(data) >= settings.batch_size  # keep every image when the subset is tiny
    loader_gen = torch.Generator()
    loader = torch.utils.data.DataLoader(
        data, batch_size=settings.batch_size, shuffle=True, drop_last=drop_last,
        num_workers=settings.num_workers, worker_init_fn=worker_init_fn, generator=loader_gen,
        pin_memory=device.type == "cuda", persistent_workers=settings.num_workers > 0)
    steps_per_epoch = len(loader)
    total_steps = steps_per_epoch * settings.epochs

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=settings.lr, betas=(0.9, 0.999),
                                 weight_decay=settings.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total_steps),
                                                           eta_min=0.0)
    scaler = precision.scaler()

    ckpt = Checkpoint(ctx.work)
    parts = dict(model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler)
    start_epoch, history = ckpt.resume_training(ctx.label, settings.epochs, **parts)

    started = time.time()
    step = start_epoch * steps_per_epoch
    with progress_bar(f"{ctx.label}", total_steps, ctx.quiet) as advance:
        advance(step)
        for epoch in range(start_epoch, settings.epochs):
            # Per-epoch seeds make a resumed run draw the same batches and augmentations.
            loader_gen.manual_seed(seed * 100_003 + epoch)
            torch.manual_seed(seed * 100_019 + epoch)
            set_train_mode(model, frozen, settings.frozen_bn)
            total, count = 0.0, 0
            for images, masks in loader:
                images = normalizer(images.to(device, non_blocking=True))
                masks = masks.to(device, non_blocking=True)
                if channels_last:
                    images = images.contiguous(memory_format=torch.channels_last)
                with precision.autocast():
                    logits = model(images)
                    loss = nnf.cross_entropy(logits.float(), masks)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                step += 1
                value = float(loss.detach())
                if not math.isfinite(value):
                    raise FloatingPointError(f"{ctx.label}: loss is {value} at step {step}")
                total += value * len(images)
                count += len(images)
                advance(1, epoch=epoch + 1, loss=value)
            epoch_loss = total / max(count, 1)
            history.append({"epoch": epoch + 1, "loss": epoch_loss,
                            "lr": scheduler.get_last_lr()[0]})
            ctx.log_metrics(step, {"train/loss": epoch_loss, "train/lr": scheduler.get_last_lr()[0],
                                   "epoch": epoch + 1})
            ckpt.save_training(epoch + 1, history, **parts)

    model.to("cpu", memory_format=torch.contiguous_format)
    atomic_torch_save(model.state_dict(), ctx.out / "model.pt")
    (ctx.out / "train_log.json").write_text(json.dumps(history, indent=2))
    return {
        "train_images": len(data),
        "steps": total_steps,
        "resumed_from_epoch": start_epoch,
        "final_loss": history[-1]["loss"] if history else None,
        "first_loss": history[0]["loss"] if history else None,
        "normalization": normalizer.describe(),
        "frozen_bn": settings.frozen_bn if frozen else None,
        "precision": str(precision.dtype).replace("torch.", "") if precision.dtype else "fp32",
        "seconds_this_run": time.time() - started,
    }
