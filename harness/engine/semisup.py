"""The semi-supervised loop shared by every ``semisupervised`` method: a mean teacher.

The mechanics follow the reference implementation of the thesis's semi-supervised baselines
(thesis §A.2; ReCo's ``train_semisup.py``). Per iteration:

1. a labeled batch (``batch_size`` images of ``train_ids``, thesis augmentations: Gaussian noise
   with variance in [0, 25] on the 0-255 scale, rot90, horizontal flip, p = 0.5 each) and an
   unlabeled batch (``unlabeled_batch_size`` random crops of the unlabeled tiles, no
   augmentation). **Crop size**: the labeled training size, i.e. ``finetune.image_size`` when
   set, else the labeled images' size (PanNuke: 256 crops of the 512 TCGA tiles; TNBC: 512,
   the whole tile). Tiles smaller than that are an error.
2. the teacher, in train mode as the reference (its batch-norm running statistics come from
   these forward passes), predicts the un-augmented unlabeled batch without gradients:
   confidence = max softmax, pseudo-label = argmax.
3. the method mixes images, pseudo-labels and confidences (image i with image (i+1) mod B, one
   mask for all three), then the strong augmentation (the same noise/rot90/hflip family) acts
   jointly on them, per image: the geometric ops on all three, the noise on the image only.
4. student losses: cross-entropy on the labeled batch + the confidence-weighted unsupervised
   cross-entropy (per-image weight = fraction of pixels whose teacher confidence is at least
   ``strong_threshold``, averaged over the pixels with a positive loss, as ReCo's
   ``compute_unsupervised_loss``) + the method's :meth:`extra_loss`, all with weight 1.
5. Adam (0.9, 0.999) with L2 weight decay, cosine learning rate to 0 over ``iterations``
   (stepped per iteration), then the EMA update of the teacher: decay_t = min(1 - 1/(t+1),
   ``ema_decay``) over ``parameters()`` only.

**Initialisation**: the U-Net (encoder included) is randomly initialised from the cell's seed.
The thesis's A.2 gives no pretrained weights for these baselines and compares them with
encoders *pretrained by the other methods*; ReCo's own code starts from ImageNet, which would
make these rows an ImageNet comparison instead. Inputs are normalised with mean = std = 0.5
under ``finetune.normalization`` (``thesis_quirk``: [-1/255, 1/255], as every fine-tuning row).

The teacher is what is saved (``model.pt``: the plain smp U-Net state dict, without any extra
head) and evaluated. Every random draw of iteration t is a function of (seed, t) — batches,
crops, augmentations, masks, the method's sampling — and a checkpoint (student, teacher,
optimiser, scheduler, scaler, iteration, RNG, the interval's partial sums) is written by
:mod:`harness.engine.loop` every few minutes of training, at the end and on SIGTERM, so a
resumed run continues exactly where it stopped. The training log holds means over intervals
of ``max(1, iterations // 20)`` iterations.

**Several processes** (``harness stage run --nproc N``): the batches stay global and N processes
compute the one-process step on them. The step and its losses are written once, over a
:class:`~harness.engine.semisup_ddp.Shard` (this rank's slice and the collectives); one process
holds the world-size-1 shard, the identity.
"""

from __future__ import annotations

import copy
import functools
import json
import time
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as nnf
from torchvision import tv_tensors
from torchvision.transforms import v2

from harness.data.augment import RandomGaussianNoise, RandomRot90
from harness.data.base import LabeledArrays
from harness.data.torchdata import Normalizer, SegmentationSamples
from harness.engine import distributed as dist
from harness.engine import semisup_ddp as ddp
from harness.engine.context import StageContext
from harness.engine.loop import Hook, IterationSource, MethodHook, StepInfo, TrainLoop
from harness.engine.model import build_unet
from harness.engine.runtime import (Checkpoint, Precision, resolve_num_workers, seed_everything,
                                    worker_init_fn)
from harness.engine.semisup_data import _STEP, IterationBatches, derived_seed
from harness.errors import DataError
from harness.methods import HALF_NORMALIZATION, SemiSupervisedMethod
from harness.plugin_faults import require_attribute
from harness.store import atomic_torch_save
_LOG_ENTRIES = 20  # log entries (means over an interval) per run


# --- augmentation ----------------------------------------------------------------------------

def thesis_augment(square: bool, crop: int | None = None, to_float: bool = False) -> v2.Transform:
    """Thesis A.2 augmentations for the semi-supervised baselines: horizontal flip, rot90
    (square images only; a non-square batch could not be stacked) and Gaussian noise with
    variance in [0, 25] (0-255 scale), each with p = 0.5. ``to_float``: uint8 in, float in."""
    ops: list[v2.Transform] = []
    if crop is not None:
        ops.append(v2.RandomCrop(crop))
    ops.append(v2.RandomHorizontalFlip(p=0.5))
    if square:
        ops.append(RandomRot90(p=0.5))
    if to_float:
        ops.append(v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True))
    ops.append(RandomGaussianNoise((0.0, 25.0), p=0.5))
    return v2.Compose(ops)


def strong_augment(images: torch.Tensor, labels: torch.Tensor, confidence: torch.Tensor,
                   transform: v2.Transform) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``transform`` per image, jointly on image (float [0, 1]), labels and confidences; the
    noise touches the image only (labels and confidences are masks to it)."""
    out_i, out_l, out_c = [], [], []
    for img, lab, conf in zip(images, labels, confidence):
        a, b, c = transform(tv_tensors.Image(img), tv_tensors.Mask(lab), tv_tensors.Mask(conf))
        out_i.append(a.as_subclass(torch.Tensor))
        out_l.append(b.as_subclass(torch.Tensor))
        out_c.append(c.as_subclass(torch.Tensor))
    return torch.stack(out_i), torch.stack(out_l), torch.stack(out_c)


# --- losses and the teacher ------------------------------------------------------------------

def supervised_ce(logits: torch.Tensor, target: torch.Tensor, global_target: torch.Tensor,
                  shard: ddp.Shard) -> torch.Tensor:
    """This rank's share of the global batch's mean cross-entropy (-1 ignored): the sum over this
    rank's pixels, times the world size, over the global batch's valid pixels. Alone (world 1)
    the mean cross-entropy itself, bit for bit."""
    count = (global_target >= 0).sum()
    total = nnf.cross_entropy(logits, target, ignore_index=-1, reduction="sum")
    return total * shard.world / count


def confidence_weighted_ce(logits: torch.Tensor, target: torch.Tensor, confidence: torch.Tensor,
                           strong_threshold: float, shard: ddp.Shard | None = None) -> torch.Tensor:
    """ReCo's ``compute_unsupervised_loss``: per-pixel cross-entropy against the pseudo-labels
    (-1 ignored), times a per-image weight = (pixels with confidence >= ``strong_threshold``) /
    (valid pixels), averaged over the pixels whose loss is positive. Under ``shard`` (DDP) this
    rank's share: the weights are local, the mean is over the global batch's positive pixels
    (their count summed over the ranks), times the world size."""
    shard = shard or ddp.Shard()
    b = logits.shape[0]
    valid = (target >= 0).reshape(b, -1).sum(-1).clamp(min=1)
    weight = confidence.reshape(b, -1).ge(strong_threshold).sum(-1) / valid
    loss = nnf.cross_entropy(logits, target, reduction="none", ignore_index=-1)
    positive = loss > 0
    count = shard.total(positive.sum())
    if loss.device.type == "cuda":  # the same mean without waiting for the device
        return masked_mean(weight[:, None, None] * loss, positive, count, shard.world)
    if int(count) == 0:
        return loss.sum() * 0.0
    return (weight[:, None, None] * loss)[positive].sum() * shard.world / count


def masked_mean(values: torch.Tensor, mask: torch.Tensor, count: torch.Tensor | None = None,
                scale: int = 1) -> torch.Tensor:
    """``values[mask].sum() * scale / count`` (``count``: ``mask.sum()`` unless given, e.g. summed
    over the ranks; 0, attached to the graph, when it is 0) without a host sync: no ``bool()``,
    no boolean indexing. Equal to the indexed form up to float summation order, so the CPU keeps
    that form (its results unchanged) and CUDA uses this one."""
    count = mask.sum() if count is None else count
    total = torch.where(mask, values, torch.zeros_like(values)).sum()
    return torch.where(count > 0, total * scale / count.clamp(min=1), values.sum() * 0.0)


@torch.no_grad()
def ema_update(teacher: torch.nn.Module, student: torch.nn.Module, step: int, max_decay: float) -> float:
    """teacher <- d * teacher + (1 - d) * student over ``parameters()`` (buffers are the
    teacher's own), d = min(1 - 1/(step + 1), max_decay); ``step`` counts from 0, so the first
    update copies the student. Returns d."""
    decay = min(1.0 - 1.0 / (step + 1), max_decay)
    t_params = [p for p in teacher.parameters()]
    s_params = [p.detach() for p in student.parameters()]
    torch._foreach_mul_(t_params, decay)
    torch._foreach_add_(t_params, s_params, alpha=1.0 - decay)
    return decay


def unet_of(model: torch.nn.Module) -> torch.nn.Module:
    """The plain segmentation model inside a method's network (see ``build_model``)."""
    return getattr(model, "unet", model)


def _outputs(out: Any) -> dict[str, torch.Tensor]:
    return out if isinstance(out, dict) else {"logits": out}


# --- the step and its hooks ------------------------------------------------------------------

class _MeanTeacherStep:
    """The loss of iteration ``t`` (steps 2-4 of the module docstring) on this process's
    :class:`~harness.engine.semisup_ddp.Shard` of the global batch; the loop does step 5. One
    process holds the identity shard (its default), so one and N processes run this one step."""

    def __init__(self, method, student, teacher, normalizer, precision, channels_last, strong, seed, device,
                 shard: ddp.Shard | None = None):
        self.method, self.student, self.teacher = method, student, teacher
        self.normalizer, self.precision, self.channels_last = normalizer, precision, channels_last
        self.strong, self.seed, self.device = strong, seed, device
        self.shard = shard or ddp.Shard()

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        x = self.normalizer(x)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def __call__(self, batch: dict[str, torch.Tensor], info: StepInfo) -> tuple[torch.Tensor, dict[str, Any]]:
        torch.manual_seed(derived_seed(_STEP, self.seed, info.batch_index))  # masks, strong aug, sampling
        device, precision, method, shard = self.device, self.precision, self.method, self.shard
        y_all = batch["label_l"].to(device, non_blocking=True)
        x_l, y_l = self.prepare(shard.take(batch["image_l"]).to(device, non_blocking=True)), shard.take(y_all)
        u = batch["image_u"].to(device, non_blocking=True)

        with torch.no_grad():
            self.teacher.train()
            with precision.autocast():
                t_logits = unet_of(self.teacher)(self.prepare(shard.take(u)))
            confidence, pseudo = torch.softmax(t_logits.float(), dim=1).max(dim=1)
            confidence, pseudo = shard.gather(confidence), shard.gather(pseudo)
            u, y_all_u, c_all_u = method.mix(u, pseudo, confidence)  # the global batch, as alone
            u, y_all_u, c_all_u = strong_augment(u, y_all_u, c_all_u, self.strong)
            x_u, y_u, c_u = self.prepare(shard.take(u)), shard.take(y_all_u), shard.take(c_all_u)

        self.student.train()
        with precision.autocast():
            out_l = _outputs(self.student(x_l))
            out_u = _outputs(self.student(x_u))
            sup = supervised_ce(out_l["logits"].float(), y_l, y_all, shard)
            unsup = confidence_weighted_ce(out_u["logits"].float(), y_u, c_u,
                                           method.config.strong_threshold, shard)
            extra, extra_log = None, {}
            if ddp.overrides_extra_loss(method):  # on the global batch, on every rank
                extra, extra_log = method.extra_loss(
                    *shard.gathered(out_l, out_u),
                    {"labels": y_all, "pseudo_labels": y_all_u, "confidence": c_all_u})
            loss = shard.every_output_used(sup + unsup + (extra if extra is not None else 0.0), out_l, out_u)
        sup_log, unsup_log = shard.mean_logs(sup, unsup)
        return loss, {"sup_loss": sup_log, "unsup_loss": unsup_log,
                      "extra_loss": extra.detach() if extra is not None else 0.0, **extra_log}


class TeacherEMA(Hook):
    """Step 5's EMA update of the teacher after each optimizer step (:func:`ema_update`)."""

    def __init__(self, teacher: torch.nn.Module, student: torch.nn.Module, max_decay: float):
        self.teacher, self.student, self.max_decay = teacher, student, max_decay

    def after_step(self, step: int, total_steps: int) -> None:
        ema_update(self.teacher, self.student, step, self.max_decay)


class IntervalLog(Hook):
    """A history entry ``{iteration, lr, ...means}`` and ``semisup/`` metrics per interval."""

    def __init__(self, ctx: StageContext, scheduler: Any):
        self.ctx, self.scheduler = ctx, scheduler

    def after_period(self, loop: TrainLoop, period: int, means: dict[str, float]) -> None:
        entry = {"iteration": loop.position, "lr": self.scheduler.get_last_lr()[0], **means}
        loop.history.append(entry)
        self.ctx.log_metrics(loop.position, {f"semisup/{k}": v for k, v in entry.items() if k != "iteration"})


# --- the stage ----------------------------------------------------------------------------------

def _student_and_teacher(method: SemiSupervisedMethod, encoder: str, num_classes: int,
                         device: torch.device, channels_last: bool) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The student (a random U-Net in the method's network) and its EMA copy, on ``device``."""
    unet = build_unet(encoder, num_classes)
    student = method.build_model(unet)
    require_attribute(method, student, "unet", unet, "build_model")
    teacher = copy.deepcopy(student)
    for p in teacher.parameters():
        p.requires_grad_(False)
    for model in (student, teacher):
        model.to(device)
        if channels_last:
            model.to(memory_format=torch.channels_last)
    return student, teacher


def _loss_summary(history: list[dict[str, Any]]) -> dict[str, Any]:
    first, last = (history[0], history[-1]) if history else ({}, {})
    return {f"{end}_{k}": entry.get(k) for k in ("loss", "sup_loss", "unsup_loss", "extra_loss")
            for end, entry in (("first", first), ("final", last))}


def _crop_size(label: str, arrays: LabeledArrays, train_ids: Sequence[str],
               unlabeled_images: np.ndarray | None, settings: Any) -> tuple[int, int]:
    """The training crop (``finetune.image_size``, else the labeled size); DataError when
    there is nothing to train on or the unlabeled tiles are smaller."""
    if not len(train_ids):
        raise DataError(f"{label}: no labeled training images")
    if unlabeled_images is None or len(unlabeled_images) == 0:
        raise DataError(f"{label}: the unlabeled dataset has no images; semi-supervised "
                        f"methods need some (spec `unlabeled:`)")
    height, width = (settings.image_size,) * 2 if settings.image_size else tuple(arrays.images.shape[1:3])
    tile_h, tile_w = unlabeled_images.shape[1:3]
    if tile_h < height or tile_w < width:
        raise DataError(f"{label}: unlabeled tiles of {tile_h}x{tile_w} are smaller than the "
                        f"labeled training size {height}x{width}; the unlabeled batch is cropped "
                        f"to it (set finetune.image_size to at most {min(tile_h, tile_w)})")
    return height, width


def _iteration_loader(batches: Any, iterations: int, num_workers: int, device: torch.device,
                      start: int) -> torch.utils.data.DataLoader:
    """Iterations ``start .. iterations - 1`` of ``batches`` (one batch per index); workers
    lowered where ``/dev/shm`` cannot hold what they prefetch."""
    from harness.engine.loader import fit_shared_memory

    num_workers, prefetch = fit_shared_memory(batches, 1, num_workers, 2)
    return torch.utils.data.DataLoader(
        batches, batch_size=None, sampler=range(start, iterations), num_workers=num_workers,
        worker_init_fn=worker_init_fn, pin_memory=device.type == "cuda",
        prefetch_factor=prefetch if num_workers else None)


def train_semisupervised(ctx: StageContext, *, method: SemiSupervisedMethod, arrays: LabeledArrays,
                         train_ids: Sequence[str], unlabeled_images: np.ndarray, num_classes: int,
                         settings: Any, seed: int) -> dict[str, Any]:
    """Train ``method``'s student and EMA teacher; write the teacher's U-Net to ``model.pt`` and
    the training log to ``train_log.json`` in ``ctx.out``; return a summary. ``settings`` are
    the spec's fine-tuning settings (encoder, image size, normalisation, AMP); the method's
    own config holds the iteration count, batch sizes, optimiser and thresholds. The log (and
    the ``first_*``/``final_*`` losses of the summary) holds means over each logging interval
    of ``max(1, iterations // 20)`` iterations."""
    cfg = method.config
    device = ctx.device
    iterations = cfg.iterations
    batch_u = cfg.unlabeled_batch_size or max(2, cfg.batch_size)
    height, width = _crop_size(ctx.label, arrays, train_ids, unlabeled_images, settings)
    square = height == width
    if dist.world_size() > 1:  # under torchrun the batches are global: each rank a slice
        ddp.check_split(cfg.batch_size, batch_u, dist.world_size())

    seed_everything(seed)
    channels_last = settings.channels_last and device.type == "cuda"
    student, teacher = _student_and_teacher(method, settings.encoder, num_classes, device, channels_last)
    net, shard = ddp.distribute(method, student, teacher, device)  # (student, None) alone
    normalizer = Normalizer(HALF_NORMALIZATION, settings.normalization)
    precision = Precision(device, settings.amp)

    crop = settings.image_size if settings.image_size else None
    labeled = SegmentationSamples(arrays, train_ids, thesis_augment(square, crop, to_float=True))
    batches = IterationBatches(labeled, unlabeled_images, (height, width), cfg.batch_size, batch_u, seed)
    strong = thesis_augment(square)

    optimizer, scheduler = _adam_cosine(student, cfg)
    make_loader = functools.partial(_iteration_loader, batches, iterations,
                                    resolve_num_workers(cfg.num_workers, device), device)
    step = _MeanTeacherStep(method, net, teacher, normalizer, precision, channels_last,
                            strong, seed, device, shard)
    loop = TrainLoop(
        label=ctx.label, models={"student": student, "teacher": teacher}, optimizer=optimizer,
        scheduler=scheduler, scaler=precision.scaler(), step_fn=step, checkpoint=Checkpoint(ctx.work),
        source=IterationSource(make_loader, iterations, max(1, iterations // _LOG_ENTRIES)),
        checkpoint_every_s=ctx.checkpoint_every_s, quiet=ctx.quiet,
        hooks=[TeacherEMA(teacher, student, cfg.ema_decay), MethodHook(method, student),
               IntervalLog(ctx, scheduler)],
        grad_clip_norm=cfg.grad_clip_norm)
    started = time.time()
    history = loop.run()
    seconds = time.time() - started
    if dist.rank() == 0:  # under DDP the teachers agree (the students' averaged weights)
        model = unet_of(teacher).to("cpu", memory_format=torch.contiguous_format)
        atomic_torch_save(model.state_dict(), ctx.out / "model.pt")
        (ctx.out / "train_log.json").write_text(json.dumps(history, indent=2))
    return {"method": method.name, "init": "random", "train_images": len(labeled),
            "unlabeled_images": len(unlabeled_images), "batch_size": cfg.batch_size,
            "unlabeled_batch_size": batch_u, "crop_size": [height, width], "iterations": iterations,
            "resumed_from_iteration": loop.start, **_loss_summary(history), "evaluated": "teacher",
            "normalization": normalizer.describe(),
            "precision": str(precision.dtype).replace("torch.", "") if precision.dtype else "fp32",
            "seconds_this_run": seconds, "iterations_per_second": _rate(iterations - loop.start, seconds)}


def _adam_cosine(student: torch.nn.Module, cfg: Any) -> tuple[torch.optim.Optimizer, Any]:
    """Adam with the method's learning rate and decay, cosine-annealed to 0 over the iterations."""
    optimizer = torch.optim.Adam(student.parameters(), lr=cfg.lr, betas=(0.9, 0.999),
                                 weight_decay=cfg.weight_decay)
    return optimizer, torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.iterations,
                                                                 eta_min=0.0)


def _rate(iterations: int, seconds: float) -> float | None:
    return iterations / seconds if iterations > 0 and seconds > 0 else None
