"""``knn``: dense k-nearest-neighbour labels from the frozen encoder, no training.

The cell's chain is ``knn_bank -> evaluate`` instead of ``finetune -> evaluate``:

* ``knn_bank`` (a stage kind this file registers) runs the frozen encoder (eval mode) over the
  cell's training images and keeps a memory bank of **patch features** at stride
  :data:`STRIDE` (4 px): for a CNN a hypercolumn (Hariharan et al. 2015) of its feature maps of
  stride 4 and deeper (ResNet: 4, 8, 16, 32, the deepest being the map pretraining trains), each
  upsampled bilinearly to stride 4 and L2-normalised, concatenated (every level weighs alike);
  for a ViT its last block's patch tokens (one map). Features are centred by the bank's mean,
  then L2-normalised (SimpleShot's "CL2N", Wang et al. 2019: ReLU features all share a positive
  mean direction that would make every cosine similarity high and the vote flat). The deepest
  map alone gives a 64 px image 2 x 2 patches, too coarse for nuclei: on the synthetic set (64
  px, 16 training images, a random ResNet-18) it predicted background everywhere (mPQ 0), as
  stride 8 did; stride 4 gave mPQ 0.040 (a frozen U-Net decoder, 5 epochs on it: 0.014).
  Each patch is paired with its **patch label**: the distribution of the ground-truth
  classes of its pixels (average pooling of the one-hot class map over the patch; void pixels,
  a class id >= the number of classes, left out; a patch with no labeled pixel is dropped).
  At most :data:`MAX_PATCHES` patches are kept, a subset drawn with the cell's seed.
* ``evaluate`` (the generic kind) loads that bank into :class:`KNNSegmenter`: for every patch
  of a test image, the ``K = 20`` most cosine-similar bank patches (exact search: matrix products of unit
  vectors, the ranking torch.cdist gives, and torch.topk over the bank in chunks) vote with weights ``exp(similarity / T)``, ``T = 0.07``
  (DINO's weighted k-NN classifier, Caron et al. 2021, ``eval_knn.py``: k 20, T 0.07); the
  weighted mean of their patch label distributions is that patch's class distribution
  (dense nearest-neighbour retrieval of patch labels: Balazevic et al. 2023, "Towards In-context
  Scene Understanding", the Hummingbird evaluation). The distributions are upsampled bilinearly
  to the image's pixels; their log is the model's logits, so the argmax is a class map scored
  with the same metric family (PQ, Dice) as the other protocols.

Deterministic: no random draw but the seeded bank subset; exact top-k on CPU and GPU alike.
Cost: a test image of P patches costs P x (bank size) x D multiply-adds (D = 960 for a
ResNet-18 hypercolumn): PanNuke's 256 px images, 4096 patches each, against a full bank are
about 4e11 each, seconds on a GPU.
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING, Any

from harness.hookspecs import hookimpl
from harness.keying import flat
from harness.protocols.base import TrainingProtocol
from harness.spec.models import FinetuneSettings
from harness.stages.base import StageKind, StageParams
from harness.store import hash_key

if TYPE_CHECKING:
    from harness.data.base import Dataset
    from harness.plan import Planning, Stage
    from harness.spec.models import FinetuneSettings

#: Finest feature stride used (px): the patch size of the bank and of the test images' queries.
STRIDE = 4
#: Neighbours that vote, and the temperature of their weights exp(similarity / T) (DINO's).
K, TEMPERATURE = 20, 0.07
#: Most bank patches kept (a seeded subset beyond that): bounds the bank's memory and search.
MAX_PATCHES = 100_000
#: Query patches and bank patches per similarity block (memory: their product in floats).
QUERY_CHUNK, BANK_CHUNK = 4096, 16384


class KNN(TrainingProtocol):
    name = "knn"
    description = "no training: per-patch k-NN labels from frozen encoder features (k 20, T 0.07)"
    frozen_encoder = True

    @classmethod
    def settings_problem(cls, settings: FinetuneSettings) -> str | None:
        if settings.head != "semantic":
            return f"it predicts class maps only: finetune.head '{settings.head}' needs a trained head"
        return None

    def cell_stages(self, plan, *, encoder, split, seed, settings, label):
        dataset = plan.resources.dataset
        bank = plan.create("knn_bank", encoder=encoder, dataset=dataset, chosen=split.chosen, seed=seed,
                           settings=settings, label=label, extra={"fold": split.fold, "fraction": split.fraction})
        return bank, plan.create("evaluate", model=bank, dataset=dataset, test_ids=split.test_ids,
                                 fold=split.fold, settings=settings)

    def build_model(self, encoder_name: str, num_classes: int,
                    settings: FinetuneSettings | None = None):
        return _segmenter_class()(encoder_name, num_classes, getattr(settings, "encoder_args", None))


class KnnBankParams(StageParams):
    dataset: str | None  # None: the spec's own dataset
    train_ids: list[str]
    settings: FinetuneSettings


class KnnBankStage(StageKind):
    kind = "knn_bank"
    description = "frozen-encoder patch features and patch labels of the training images"
    Params = KnnBankParams

    @classmethod
    def create(cls, plan: Planning, *, encoder: Stage, dataset: Dataset, chosen: dict[str, list[str]],
               seed: int, settings: FinetuneSettings, label: str,
               extra: dict[str, Any] | None = None) -> Stage:
        train_ids = flat(chosen)
        return cls.make(
            label=label,
            config={"dataset": dataset.fingerprint(), "seed": seed, "protocol": "knn",
                    "train_ids": hash_key(train_ids), "k": K, "temperature": TEMPERATURE,
                    "max_patches": MAX_PATCHES, "stride": STRIDE, "normalization": settings.normalization, **(extra or {})},
            version="1", deps={"encoder": encoder}, info={"train_ids": chosen},
            params=KnnBankParams(dataset=None, train_ids=train_ids, settings=settings))

    def run(self, stage, inputs, ctx, env):
        import torch

        from harness.data.torchdata import Normalizer
        from harness.engine.finetune import load_encoder_artifact
        from harness.engine.model import load_encoder_weights
        from harness.store import atomic_torch_save

        params = self.params_of(stage)
        settings = params.settings
        dataset, arrays = env.labeled(params.dataset)
        model = KNN().build_model(settings.encoder, dataset.num_classes, settings)
        state, meta = load_encoder_artifact(ctx.inputs["encoder"])
        load_encoder_weights(model, state, source=str(ctx.inputs["encoder"] / "encoder.pt"))
        normalizer = Normalizer(meta["normalization"], settings.normalization)
        index = arrays.index_of()
        rows = [index[s] for s in params.train_ids]
        feats, labels = bank_of(model, arrays.images, arrays.classes, rows, normalizer, ctx.device,
                                settings.eval_batch_size)
        if len(feats) > MAX_PATCHES:
            keep = torch.randperm(len(feats), generator=torch.Generator().manual_seed(stage.config["seed"]))
            keep = keep[:MAX_PATCHES].sort().values
            feats, labels = feats[keep], labels[keep]
        model.set_bank(feats, labels)
        atomic_torch_save(model.state_dict(), ctx.out / "model.pt")
        return {"train_images": len(rows), "bank_patches": len(feats), "k": K,
                "temperature": TEMPERATURE, "normalization": normalizer.describe()}


@lru_cache(maxsize=1)
def _segmenter_class() -> type:
    """:class:`KNNSegmenter`, defined on first use (``harness list`` imports no torch)."""
    import torch
    import torch.nn.functional as nnf

    from harness.engine.model import build_encoder

    class KNNSegmenter(torch.nn.Module):
        """A frozen encoder and a bank of (patch feature, patch label distribution) pairs; its
        forward returns log class distributions ``(B, C, H, W)`` (see the module doc)."""

        def __init__(self, encoder_name: str, num_classes: int, encoder_args: dict[str, Any] | None = None):
            super().__init__()
            self.num_classes = num_classes
            self.encoder = build_encoder(encoder_name, encoder_args)
            self.register_buffer("bank", torch.zeros(0, 1))
            self.register_buffer("bank_labels", torch.zeros(0, num_classes))
            self.register_buffer("bank_mean", torch.zeros(1))

        def set_bank(self, feats: torch.Tensor, labels: torch.Tensor, mean: torch.Tensor | None = None) -> None:
            """Raw features ``feats`` (centred by their mean unless ``mean`` is given, then
            L2-normalised) and their patch label distributions."""
            self.bank_mean = feats.mean(0) if mean is None else mean
            self.bank = nnf.normalize(feats - self.bank_mean, dim=1).contiguous()
            self.bank_labels = labels.contiguous()

        def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
            for name in ("bank", "bank_labels", "bank_mean"):  # shaped like the stored bank
                setattr(self, name, torch.empty_like(state_dict[name]))
            return super().load_state_dict(state_dict, strict=strict, assign=assign)

        def features(self, x: torch.Tensor) -> torch.Tensor:
            return hypercolumn(self.encoder(x), x.shape[-1])

        def vote(self, q: torch.Tensor) -> torch.Tensor:
            return knn_vote(q, self.bank, self.bank_labels)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            f = self.features(x).float()
            b, d, h, w = f.shape
            q = nnf.normalize(f.permute(0, 2, 3, 1).reshape(-1, d) - self.bank_mean, dim=1)
            dist = self.vote(q).reshape(b, h, w, -1).permute(0, 3, 1, 2)
            dist = nnf.interpolate(dist, size=x.shape[-2:], mode="bilinear", align_corners=False)
            return dist.clamp_min(1e-6).log()

    return KNNSegmenter


def bank_of(model: Any, images: Any, classes: Any, rows: Any, normalizer: Any, device: Any,
            batch_size: int) -> tuple[Any, Any]:
    """Patch features ``(N, D)`` and patch label distributions ``(N, C)`` of the images ``rows``
    under ``model`` (a :class:`KNNSegmenter`); patches without labelled pixels are left out."""
    import torch

    model.eval().to(device)
    feats, labels = [], []
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            idx = rows[start:start + batch_size]
            x = torch.from_numpy(images[idx]).to(device).permute(0, 3, 1, 2).float().div_(255.0)
            f = model.features(normalizer(x))
            y = torch.from_numpy(classes[idx].astype("int64")).to(device)
            f, dist = f.permute(0, 2, 3, 1).flatten(0, 2), patch_labels(y, model.num_classes, f.shape[-2:])
            mass = dist.sum(1)
            keep = mass > 0
            feats.append(f[keep].cpu())
            labels.append((dist[keep] / mass[keep, None]).cpu())
    return torch.cat(feats), torch.cat(labels)


def hypercolumn(out: Any, width: int) -> Any:
    """Patch features ``(B, D, h, w)`` from an encoder's output ``out`` (a list of maps, or
    one) for inputs ``width`` px wide: the maps of stride >= STRIDE, upsampled bilinearly to
    the finest of them, each level L2-normalised, concatenated (a single map: that one)."""
    import torch
    import torch.nn.functional as nnf

    maps = [m for m in (out if isinstance(out, (list, tuple)) else [out]) if m.shape[1] > 0]
    deep = [m for m in maps if m.shape[-1] * STRIDE <= width] or maps[-1:]
    size = deep[0].shape[-2:]
    cols = [nnf.normalize(nnf.interpolate(m, size=size, mode="bilinear", align_corners=False)
                          if m.shape[-2:] != size else m, dim=1) for m in deep]
    return torch.cat(cols, 1)


def patch_labels(classes: Any, num_classes: int, size: Any) -> Any:
    """Class distributions ``(B*h*w, C)`` of the ``size`` patches of class maps ``classes``
    ``(B, H, W)`` (long): the one-hot maps average-pooled, void ids (>= C) counting for none."""
    import torch.nn.functional as nnf

    onehot = nnf.one_hot(classes.clamp(max=num_classes), num_classes + 1)[..., :-1]
    dist = nnf.adaptive_avg_pool2d(onehot.permute(0, 3, 1, 2).float(), size)
    return dist.permute(0, 2, 3, 1).flatten(0, 2)


def knn_vote(q: Any, bank: Any, labels: Any) -> Any:
    """Class distributions ``(n, C)`` of unit query features ``q`` ``(n, D)``: the K most
    similar unit ``bank`` rows, weighted by exp(similarity / T), mean of their ``labels``;
    exact top-k over bank chunks."""
    import torch

    out = []
    for qs in q.split(QUERY_CHUNK):
        best_s = best_i = None
        for start in range(0, len(bank), BANK_CHUNK):
            sim = qs @ bank[start:start + BANK_CHUNK].T
            s, i = sim.topk(min(K, sim.shape[1]), dim=1)
            i = i + start
            if best_s is not None:  # merge with the best of the earlier chunks
                s, i = torch.cat([best_s, s], 1), torch.cat([best_i, i], 1)
                s, j = s.topk(min(K, s.shape[1]), dim=1)
                i = i.gather(1, j)
            best_s, best_i = s, i
        w = ((best_s - 1.0) / TEMPERATURE).exp()  # exp(s/T) up to a factor: no overflow
        out.append((w.unsqueeze(-1) * labels[best_i]).sum(1) / w.sum(1, keepdim=True))
    return torch.cat(out)


@hookimpl
def harness_register_protocols():
    return [KNN]


@hookimpl
def harness_register_stage_kinds():
    return [KnnBankStage]
