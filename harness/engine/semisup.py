"""The semi-supervised loop shared by every ``semisupervised`` method: a mean teacher.

The mechanics follow the reference implementation of the thesis's semi-supervised baselines
(reference §7.5; ReCo's ``train_semisup.py``). Per iteration:

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
optimiser, scheduler, scaler, iteration, RNG) is written every ``max(1, iterations // 20)``
iterations, so a resumed run continues exactly where it stopped.
"""

from __future__ import annotations

import copy
import json
import math
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
from harness.data.views import _MemmapRef
from harness.engine.context import StageContext
from harness.engine.model import build_unet
from harness.engine.runtime import Checkpoint, Precision, console, progress_bar, seed_everything, worker_init_fn
from harness.errors import DataError
from harness.methods import HALF_NORMALIZATION, SemiSupervisedMethod
from harness.store import atomic_torch_save

#: Random streams derived from (seed, iteration).
_LABELED, _UNLABELED, _LABELED_AUG, _STEP = 1, 2, 3, 4
_CHECKPOINTS = 20  # checkpoints (and log entries) per run


def derived_seed(*parts: int) -> int:
    """A 32-bit seed from integers (the spec seed may be any int)."""
    return int(np.random.SeedSequence([p % (2**32) for p in parts]).generate_state(1)[0])


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

def confidence_weighted_ce(logits: torch.Tensor, target: torch.Tensor, confidence: torch.Tensor,
                           strong_threshold: float) -> torch.Tensor:
    """ReCo's ``compute_unsupervised_loss``: per-pixel cross-entropy against the pseudo-labels
    (-1 ignored), times a per-image weight = (pixels with confidence >= ``strong_threshold``) /
    (valid pixels), averaged over the pixels whose loss is positive."""
    b = logits.shape[0]
    valid = (target >= 0).reshape(b, -1).sum(-1).clamp(min=1)
    weight = confidence.reshape(b, -1).ge(strong_threshold).sum(-1) / valid
    loss = nnf.cross_entropy(logits, target, reduction="none", ignore_index=-1)
    positive = loss > 0
    if not bool(positive.any()):
        return loss.sum() * 0.0
    return (weight[:, None, None] * loss)[positive].mean()


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


# --- data --------------------------------------------------------------------------------------

class _Order:
    """Position p of an endless sequence of per-epoch permutations of range(n)."""

    def __init__(self, n: int, seed: int, stream: int):
        self.n, self.seed, self.stream = n, seed, stream
        self._cache: dict[int, np.ndarray] = {}

    def __call__(self, start: int, count: int) -> list[int]:
        out = []
        for p in range(start, start + count):
            epoch, k = divmod(p, self.n)
            if epoch not in self._cache:
                if len(self._cache) > 4:
                    self._cache.clear()
                rng = np.random.default_rng(derived_seed(self.stream, self.seed, epoch))
                self._cache[epoch] = rng.permutation(self.n)
            out.append(int(self._cache[epoch][k]))
        return out


class IterationBatches(torch.utils.data.Dataset):
    """Item t: the labeled batch (augmented) and the unlabeled batch (random crops, float in
    [0, 1], not augmented) of iteration t, a function of (seed, t) alone, whichever process
    loads it and whatever was loaded before."""

    def __init__(self, labeled: SegmentationSamples, unlabeled: np.ndarray, crop: tuple[int, int],
                 batch_size: int, unlabeled_batch_size: int, seed: int):
        self.labeled, self.unlabeled = labeled, unlabeled
        self.crop = crop
        self.batch_size, self.unlabeled_batch_size = batch_size, unlabeled_batch_size
        self.seed = seed
        self._order_l = _Order(len(labeled), seed, _LABELED)
        self._order_u = _Order(len(unlabeled), seed, _UNLABELED)

    def __len__(self) -> int:  # not used by the sampler; any iteration index is valid
        return 2**62

    def __getstate__(self) -> dict[str, Any]:  # spawned workers re-open the memory map
        return {**self.__dict__, "unlabeled": _MemmapRef.wrap(self.unlabeled)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        if isinstance(state["unlabeled"], _MemmapRef):
            state["unlabeled"] = state["unlabeled"].open()
        self.__dict__.update(state)

    def __getitem__(self, t: int) -> dict[str, torch.Tensor]:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derived_seed(_LABELED_AUG, self.seed, t))
            pairs = [self.labeled[i] for i in self._order_l(t * self.batch_size, self.batch_size)]
        rows = self._order_u(t * self.unlabeled_batch_size, self.unlabeled_batch_size)
        rng = np.random.default_rng(derived_seed(_UNLABELED, self.seed, t))
        ch, cw = self.crop
        crops = []
        for row in rows:
            th, tw = self.unlabeled.shape[1:3]
            y, x = int(rng.integers(0, th - ch + 1)), int(rng.integers(0, tw - cw + 1))
            crops.append(torch.from_numpy(np.array(self.unlabeled[row, y:y + ch, x:x + cw])))
        return {
            "image_l": torch.stack([p[0] for p in pairs]),
            "label_l": torch.stack([p[1] for p in pairs]),
            "image_u": torch.stack(crops).permute(0, 3, 1, 2).float().div_(255.0),
        }


# --- the loop -----------------------------------------------------------------------------------

def train_semisupervised(ctx: StageContext, *, method: SemiSupervisedMethod, arrays: LabeledArrays,
                         train_ids: Sequence[str], unlabeled_images: np.ndarray, num_classes: int,
                         settings: Any, seed: int) -> dict[str, Any]:
    """Train ``method``'s student and EMA teacher; write the teacher's U-Net to ``model.pt`` and
    the training log to ``train_log.json`` in ``ctx.out``; return a summary. ``settings`` are
    the spec's fine-tuning settings (encoder, image size, normalisation, AMP); the method's
    own config holds the iteration count, batch sizes, optimiser and thresholds. The log (and
    the ``first_*``/``final_*`` losses of the summary) holds means over each checkpoint
    interval of ``max(1, iterations // 20)`` iterations."""
    cfg = method.config
    device = ctx.device
    iterations = cfg.iterations
    batch_u = cfg.unlabeled_batch_size or max(2, cfg.batch_size)
    if not len(train_ids):
        raise DataError(f"{ctx.label}: no labeled training images")
    if unlabeled_images is None or len(unlabeled_images) == 0:
        raise DataError(f"{ctx.label}: the unlabeled dataset has no images; semi-supervised "
                        f"methods need some (spec `unlabeled:`)")
    height, width = (settings.image_size,) * 2 if settings.image_size else tuple(arrays.images.shape[1:3])
    tile_h, tile_w = unlabeled_images.shape[1:3]
    if tile_h < height or tile_w < width:
        raise DataError(f"{ctx.label}: unlabeled tiles of {tile_h}x{tile_w} are smaller than the "
                        f"labeled training size {height}x{width}; the unlabeled batch is cropped "
                        f"to it (set finetune.image_size to at most {min(tile_h, tile_w)})")
    square = height == width

    seed_everything(seed)
    student = method.build_model(build_unet(settings.encoder, num_classes))
    teacher = copy.deepcopy(student)
    for p in teacher.parameters():
        p.requires_grad_(False)
    normalizer = Normalizer(HALF_NORMALIZATION, settings.normalization)
    precision = Precision(device, settings.amp)
    channels_last = settings.channels_last and device.type == "cuda"
    student.to(device)
    teacher.to(device)
    if channels_last:
        student.to(memory_format=torch.channels_last)
        teacher.to(memory_format=torch.channels_last)

    crop = settings.image_size if settings.image_size else None
    labeled = SegmentationSamples(arrays, train_ids, thesis_augment(square, crop, to_float=True))
    batches = IterationBatches(labeled, unlabeled_images, (height, width), cfg.batch_size, batch_u, seed)
    strong = thesis_augment(square)

    optimizer = torch.optim.Adam(student.parameters(), lr=cfg.lr, betas=(0.9, 0.999),
                                 weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=iterations, eta_min=0.0)
    scaler = precision.scaler()

    ckpt = Checkpoint(ctx.work)
    start, history = 0, []
    state = ckpt.load(required=("student", "teacher", "optimizer", "scheduler", "scaler",
                                "iteration", "history"))
    if state is not None:
        student.load_state_dict(state["student"])
        teacher.load_state_dict(state["teacher"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        start, history = state["iteration"], state["history"]
        console.log(f"{ctx.label}: resuming from iteration {start}/{iterations}")

    loader = torch.utils.data.DataLoader(
        batches, batch_size=None, sampler=range(start, iterations), num_workers=cfg.num_workers,
        worker_init_fn=worker_init_fn, pin_memory=device.type == "cuda")
    every = max(1, iterations // _CHECKPOINTS)
    sums: dict[str, float] = {}
    count = 0

    def prepare(x: torch.Tensor) -> torch.Tensor:
        x = normalizer(x)
        return x.contiguous(memory_format=torch.channels_last) if channels_last else x

    started = time.time()
    with progress_bar(ctx.label, iterations, ctx.quiet) as advance:
        advance(start)
        for t, batch in zip(range(start, iterations), loader):
            torch.manual_seed(derived_seed(_STEP, seed, t))  # masks, strong aug, method sampling
            x_l = prepare(batch["image_l"].to(device, non_blocking=True))
            y_l = batch["label_l"].to(device, non_blocking=True)
            u = batch["image_u"].to(device, non_blocking=True)

            with torch.no_grad():
                teacher.train()
                with precision.autocast():
                    t_logits = unet_of(teacher)(prepare(u))
                confidence, pseudo = torch.softmax(t_logits.float(), dim=1).max(dim=1)
                u, y_u, c_u = method.mix(u, pseudo, confidence)
                u, y_u, c_u = strong_augment(u, y_u, c_u, strong)
                x_u = prepare(u)

            student.train()
            with precision.autocast():
                out_l = _outputs(student(x_l))
                out_u = _outputs(student(x_u))
                sup = nnf.cross_entropy(out_l["logits"].float(), y_l, ignore_index=-1)
                unsup = confidence_weighted_ce(out_u["logits"].float(), y_u, c_u, cfg.strong_threshold)
                extra, extra_log = method.extra_loss(out_l, out_u, {"labels": y_l, "pseudo_labels": y_u,
                                                                    "confidence": c_u})
                loss = sup + unsup + (extra if extra is not None else 0.0)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            ema_update(teacher, student, t, cfg.ema_decay)

            values = {"loss": float(loss.detach()), "sup_loss": float(sup.detach()),
                      "unsup_loss": float(unsup.detach()),
                      "extra_loss": float(extra.detach()) if extra is not None else 0.0,
                      **{k: float(v) for k, v in extra_log.items()}}
            if not math.isfinite(values["loss"]):
                raise FloatingPointError(f"{ctx.label}: loss is {values['loss']} at iteration {t + 1}")
            for k, v in values.items():
                sums[k] = sums.get(k, 0.0) + v
            count += 1
            advance(1, loss=values["loss"], sup=values["sup_loss"])

            if (t + 1) % every == 0 or t + 1 == iterations:
                entry = {"iteration": t + 1, "lr": scheduler.get_last_lr()[0],
                         **{k: v / count for k, v in sums.items()}}
                history.append(entry)
                ctx.log_metrics(t + 1, {f"semisup/{k}": v for k, v in entry.items() if k != "iteration"})
                sums, count = {}, 0
                ckpt.save({"student": student.state_dict(), "teacher": teacher.state_dict(),
                           "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                           "scaler": scaler.state_dict(), "iteration": t + 1, "history": history})
    seconds = time.time() - started

    model = unet_of(teacher).to("cpu", memory_format=torch.contiguous_format)
    atomic_torch_save(model.state_dict(), ctx.out / "model.pt")
    (ctx.out / "train_log.json").write_text(json.dumps(history, indent=2))
    first, last = (history[0], history[-1]) if history else ({}, {})
    done = iterations - start
    return {
        "method": method.name,
        "init": "random",
        "train_images": len(labeled),
        "unlabeled_images": len(unlabeled_images),
        "batch_size": cfg.batch_size,
        "unlabeled_batch_size": batch_u,
        "crop_size": [height, width],
        "iterations": iterations,
        "resumed_from_iteration": start,
        "first_loss": first.get("loss"), "final_loss": last.get("loss"),
        "first_sup_loss": first.get("sup_loss"), "final_sup_loss": last.get("sup_loss"),
        "first_unsup_loss": first.get("unsup_loss"), "final_unsup_loss": last.get("unsup_loss"),
        "first_extra_loss": first.get("extra_loss"), "final_extra_loss": last.get("extra_loss"),
        "evaluated": "teacher",
        "normalization": normalizer.describe(),
        "precision": str(precision.dtype).replace("torch.", "") if precision.dtype else "fp32",
        "seconds_this_run": seconds,
        "iterations_per_second": done / seconds if done and seconds > 0 else None,
    }
