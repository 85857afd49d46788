"""The fine-tuning loop shared by every method: U-Net on a labeled training split.

Thesis §4.1.3 defaults: Adam (0.9, 0.999), lr 1e-3 with cosine decay to 0 stepped per
iteration, batch 16, 100 epochs, unweighted cross-entropy; the last epoch's weights are kept
(the test fold is never used for selection). Every epoch sees every training image: the last
batch may be partial (the reference's DataLoader keeps it, so an epoch is ceil(n / batch) steps;
``finetune.drop_last: true`` drops it instead, as this harness did before). A batch-norm layer
that would see a single value per channel (a last batch of one image whose feature map is 1x1,
which PyTorch refuses in train mode) normalises that batch with its running statistics.

The loop is :mod:`harness.engine.loop`
(checkpoints every few minutes of training, at the end and on SIGTERM; a rerun resumes from
the last one bit-identically).
"""

from __future__ import annotations

import contextlib
import json
import time
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import torch

from harness.data.augment import finetune_train_transforms
from harness.data.base import LabeledArrays
from harness.data.device_augment import DeviceAugment, UInt8Samples, resolve_augment_pipeline
from harness.data.torchdata import Normalizer
from harness.engine.context import StageContext
from harness.engine.distributed import TrainableDDP
from harness.engine.loader import epoch_loader
from harness.engine.loop import EpochLog, EpochSource, TrainLoop, optimizer_steps
from harness.engine.model import describe_network, load_encoder_weights
from harness.engine.runtime import (Checkpoint, Precision, resolve_num_workers, seed_everything,
                                    worker_init_fn)
from harness.heads import out_channels
from harness.heads.train import batch_loss, train_samples
from harness.safeload import STAGE_FIX, load_state_dict_file
from harness.store import atomic_torch_save

if TYPE_CHECKING:
    from harness.spec.models import FinetuneSettings


def load_encoder_artifact(path) -> tuple[dict[str, Any], dict[str, Any]]:
    state = load_state_dict_file(path / "encoder.pt", fix=STAGE_FIX)
    meta = json.loads((path / "encoder.json").read_text())
    return state, meta


def _initial_model(ctx: StageContext, encoder: str, num_classes: int, protocol: Any,
                   channels_last: bool, settings: Any = None) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The protocol's model with the encoder artifact's weights (frozen where the protocol
    says), on the device; and the artifact's metadata."""
    model = protocol.build_model(encoder, num_classes, settings=settings)
    enc_state, enc_meta = load_encoder_artifact(ctx.inputs["encoder"])
    load_encoder_weights(model, enc_state, source=str(ctx.inputs["encoder"] / "encoder.pt"))
    protocol.prepare(model, settings)
    model.to(ctx.device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return model, enc_meta


def finetune(ctx: StageContext, *, arrays: LabeledArrays, train_ids: Sequence[str], num_classes: int,
             settings: FinetuneSettings, protocol: Any, seed: int) -> dict[str, Any]:
    """Train ``protocol``'s model (:class:`harness.protocols.base.TrainingProtocol`) from the
    encoder artifact in ``ctx.inputs['encoder']``; write ``model.pt`` and ``train_log.json``
    into ``ctx.out``; return a summary."""
    device = ctx.device
    seed_everything(seed)
    channels_last = settings.channels_last and device.type == "cuda"
    head = settings.head
    model, enc_meta = _initial_model(ctx, settings.encoder, out_channels(head, num_classes),
                                     protocol, channels_last, settings)
    normalizer = Normalizer(enc_meta["normalization"], settings.normalization)
    precision = Precision(device, settings.amp)

    data, augment = _training_data(head, arrays, train_ids, settings, device)
    # the reference keeps the last partial batch; drop_last (opt-in) never drops a whole epoch
    drop_last = settings.drop_last and len(data) >= settings.batch_size
    _check_one_image_per_process(len(data), settings, drop_last, arrays.images.shape[1:3])
    loader = epoch_loader(data, batch_size=settings.batch_size, drop_last=drop_last,
                          num_workers=resolve_num_workers(settings.num_workers, device), device=device,
                          worker_init_fn=worker_init_fn, shard=True)
    def begin(epoch: int) -> None:
        protocol.set_train_mode(model, settings.frozen_bn, epoch)
        net.follow()

    source = EpochSource(loader, settings.epochs, seed, begin=begin)
    accumulation = settings.grad_accumulation
    total_steps = optimizer_steps(source.total, source.period, accumulation)

    optimizer, scheduler = _adam_cosine(model, settings, total_steps)
    # under torchrun: DDP, and BatchNorm over the global batch on CUDA (SyncBatchNorm), as the
    # thesis's one-GPU fine-tuning normalised it (batch 16 over 8 GPUs is 2 images per rank);
    # wrapped again when an epoch's protocol changes what trains (unfreeze: ``begin``)
    net = TrainableDDP(model, device, sync_batchnorm=True)
    step_fn = _segmentation_step(model, normalizer, precision, device, channels_last,
                                 batch_loss(head, settings), net=net, augment=augment)
    loop = TrainLoop(
        label=ctx.label, models={"model": model}, optimizer=optimizer, scheduler=scheduler,
        scaler=precision.scaler(), step_fn=step_fn, source=source,
        checkpoint=Checkpoint(ctx.work), checkpoint_every_s=ctx.checkpoint_every_s,
        hooks=[EpochLog(ctx, scheduler, "train", per_image=True)], weight_of=lambda batch: len(batch[0]),
        grad_clip_norm=settings.grad_clip_norm, accumulation=accumulation,
        quiet=ctx.quiet, progress_fields=lambda period, step: {"epoch": period + 1},
        ddp=net if net.distributed else None)
    started = time.time()
    history = loop.run()
    start_epoch = loop.start // source.period

    model.to("cpu", memory_format=torch.contiguous_format)
    atomic_torch_save(protocol.finalize(model).state_dict(), ctx.out / "model.pt")
    (ctx.out / "train_log.json").write_text(json.dumps(history, indent=2))
    return {
        "train_images": len(data),
        "steps": total_steps,
        "resumed_from_epoch": start_epoch,
        **_summary(history, normalizer, settings, protocol.frozen_encoder, precision),
        "seconds_this_run": time.time() - started,
        "network": describe_network(model, settings),
        **({"augment_pipeline": "device"} if augment is not None else {}),  # cpu: as before
    }


def _summary(history: list[dict[str, Any]], normalizer: Normalizer, settings: Any, frozen: bool,
             precision: Precision) -> dict[str, Any]:
    """The losses and how the run normalised and computed, for the stage's summary."""
    return {
        "final_loss": history[-1]["loss"] if history else None,
        "first_loss": history[0]["loss"] if history else None,
        "normalization": normalizer.describe(),
        "frozen_bn": settings.frozen_bn if frozen else None,
        "precision": str(precision.dtype).replace("torch.", "") if precision.dtype else "fp32",
    }


def _training_data(head: str, arrays: LabeledArrays, train_ids: Sequence[str], settings: FinetuneSettings,
                   device: torch.device) -> tuple[torch.utils.data.Dataset, DeviceAugment | None]:
    """The training samples and, with ``augment_pipeline`` resolving to ``device``, the batched
    augmentation the step applies (:mod:`harness.data.device_augment`; the samples are then
    uint8 and un-augmented)."""
    pipeline = resolve_augment_pipeline(settings.augment_pipeline, device, head)
    if pipeline == "device":
        return UInt8Samples(arrays, train_ids, settings.image_size), DeviceAugment(settings.augment)
    return train_samples(head, arrays, train_ids,
                         finetune_train_transforms(settings.image_size, settings.augment)), None


def _check_one_image_per_process(n: int, settings: Any, drop_last: bool, shape: Sequence[int]) -> None:
    """Under DDP, a process whose local batch is one image of at most 32 px (a 1x1 deepest
    map) would switch its batch norm to running statistics on its own
    (:func:`single_sample_batchnorm`): SyncBatchNorm's collectives would no longer match
    across processes (a hang under NCCL). Refused with a one-line error."""
    from harness.engine.distributed import world_size
    from harness.engine.loader import rank_batch_sizes
    from harness.errors import SpecError

    world = world_size()
    side = settings.image_size or max(shape)
    if world > 1 and side <= 32 and 1 in rank_batch_sizes(n, settings.batch_size, drop_last, world):
        raise SpecError(f"finetune.batch_size {settings.batch_size} ({n} images) over {world} "
                        f"processes gives a process a batch of one {side} px image, whose batch "
                        f"norm cannot be synchronised; use a batch_size that leaves each process "
                        f"at least 2 images, or fewer processes")


def _adam_cosine(model: torch.nn.Module, settings: Any, total_steps: int):
    """Adam (0.9, 0.999) over the trainable parameters, cosine decay to 0 per iteration."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=settings.lr, betas=(0.9, 0.999),
                                 weight_decay=settings.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total_steps),
                                                           eta_min=0.0)
    return optimizer, scheduler


def _segmentation_step(model, normalizer, precision, device, channels_last, loss_fn, net=None,
                       augment=None):
    """The loop's step: the head's loss (:func:`harness.heads.train.batch_loss`) of a batch of
    (images, masks, further targets of the head); ``net`` runs ``model`` (DDP or itself);
    ``augment`` (a :class:`DeviceAugment`) makes uint8 (images, masks) training inputs."""
    def step_fn(batch, info):
        images, *targets = batch
        images = images.to(device, non_blocking=True)
        targets = tuple(t.to(device, non_blocking=True) for t in targets)
        if augment is not None:
            images, mask = augment(images, targets[0])
            targets = (mask, *targets[1:])
        images = normalizer(images)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        single = len(images) == 1 and model.training
        with precision.autocast(), (single_sample_batchnorm(model) if single else contextlib.nullcontext()):
            logits = (net or model)(images)
            loss = loss_fn(logits, targets)
        return loss, {}

    return step_fn


@contextlib.contextmanager
def single_sample_batchnorm(model: torch.nn.Module) -> Iterator[None]:
    """Inside: a batch-norm layer in train mode whose input holds one value per channel (batch
    of one, 1x1 map: batch statistics undefined, PyTorch raises) normalises with its running
    statistics for that call and leaves them unchanged; every other layer is untouched."""
    def before(module, args):
        x = args[0]
        if module.training and x.numel() == x.shape[1]:
            module.training = False
            module._single_sample = True

    def after(module, args, output):
        if getattr(module, "_single_sample", False):
            module.training = True
            del module._single_sample

    handles = []
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and module.training:
            handles += [module.register_forward_pre_hook(before), module.register_forward_hook(after)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
