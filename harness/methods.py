"""The method contract.

A method is a small class with a ``name``, a ``kind`` and a pydantic ``Config`` whose defaults
are the thesis values. Loops, optimisers, AMP, checkpoints and progress live in
:mod:`harness.engine`; a method file holds only what is specific to the method.

Kinds:

``init``            produces encoder weights without training (random init, ImageNet weights).
``pretrain``        trains an encoder on unlabeled images and returns its weights.
``semisupervised``  trains a whole segmentation model from labeled + unlabeled data; it has no
                    separate encoder stage, so the ``frozen`` protocol does not apply to it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

if TYPE_CHECKING:  # the contract imports without torch: `harness validate` and `list` load it
    import torch

    from harness.plan import Planning
    from harness.plugins import Registry
    from harness.spec.models import FinetuneSettings, Spec

from harness.plan import EncoderChain
from harness.training_settings import GradClipSettings, TrainingSettings
from harness.num_workers import WorkerCount

#: What a kind implies for a class that declares only its ``kind`` (and for the base classes
#: below); a class may set any of these itself. Validation asks the class, never its kind.
KIND_DEFAULTS: dict[str, dict[str, Any]] = {
    "pretrain": {"needs_unlabeled": True},
    "semisupervised": {
        "protocols": ("full",), "needs_unlabeled": True, "heads": ("semantic",),
        "protocols_reason": "a semi-supervised method (it trains the whole U-Net; no separate "
                            "encoder stage to freeze)"},
}

#: Normalisation used by most of the thesis's code: mean = std = 0.5 (inputs in [-1, 1]).
HALF_NORMALIZATION = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}


class MethodConfig(BaseModel):
    """Base of every method's settings; unknown keys, inf and nan are errors.

    A nested block given in part (``augment: {crop_size: 64}`` in a spec, or ``--set
    methods.simsiam.augment.crop_size=64``) is merged into the *method's own* default of that
    field (SimSiam's weak jitter stays), not rebuilt from the nested model's class defaults."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _merge_into_field_defaults(cls, data: Any) -> Any:
        return merge_into_defaults(cls, data)


def merge_into_defaults(cls: type[BaseModel], data: Any) -> Any:
    """``data`` with every mapping given for a field whose default is a model laid over that
    default (recursively through nested models): only the keys it names change."""
    if not isinstance(data, dict):
        return data
    out = dict(data)
    for name, field in cls.model_fields.items():
        value = out.get(name)
        if isinstance(value, dict):
            default = field.get_default(call_default_factory=True)
            if isinstance(default, BaseModel):
                out[name] = _over_model(default, value)
    return out


def _over_model(default: BaseModel, over: dict[str, Any]) -> dict[str, Any]:
    merged = default.model_dump()
    for key, value in over.items():
        sub = getattr(default, key) if key in type(default).model_fields else None
        nested = isinstance(value, dict) and isinstance(sub, BaseModel)
        merged[key] = _over_model(sub, value) if nested else value
    return merged


class Method:
    name: ClassVar[str]
    kind: ClassVar[str]
    #: Bump when a change alters results: it is part of every stage key built on this method.
    version: ClassVar[str] = "1"
    #: Whether the method's encoder depends on the cell's seed (random init does; a fixed
    #: weights file does not, so one artifact serves every seed).
    seed_dependent: ClassVar[bool] = True
    Config: ClassVar[type[MethodConfig]] = MethodConfig
    description: ClassVar[str] = ""
    #: The protocols a method can run (validation rejects a row asking for another); None: any.
    #: Default by kind (:data:`KIND_DEFAULTS`): semi-supervised methods only ``("full",)``.
    protocols: ClassVar[tuple[str, ...] | None] = None
    #: Why a method supports only ``protocols`` (in the validation message): "a ... method (...)".
    protocols_reason: ClassVar[str] = ""
    #: Whether the method learns from unlabeled images (validation asks for some); default by
    #: kind: pretraining and semi-supervised methods do.
    needs_unlabeled: ClassVar[bool] = False
    #: ``finetune.head`` values the method supports (None: all); default by kind:
    #: semi-supervised methods train their own semantic U-Net, ``("semantic",)``.
    heads: ClassVar[tuple[str, ...] | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for attr, value in KIND_DEFAULTS.get(cls.__dict__.get("kind", ""), {}).items():
            if all(attr not in k.__dict__ for k in cls.__mro__ if k is not Method):
                setattr(cls, attr, value)

    def __init__(self, config: MethodConfig | None = None):
        self.config = config if config is not None else self.Config()

    @property
    def has_encoder_stage(self) -> bool:
        return self.kind != "semisupervised"

    @classmethod
    def row_encoder(cls, config: dict[str, Any], spec_encoder: str) -> str:
        """The encoder a row of this method fine-tunes, from its settings (``config``, as given
        in the spec) and ``finetune.encoder``: that one, unless the method provides its own
        architecture (a foundation model's)."""
        return spec_encoder

    #: Encoder families the method can train (``cnn``, ``vit``; harness.models.names).
    encoder_families: ClassVar[tuple[str, ...]] = ("cnn",)

    def preflight(self, spec: Spec) -> None:
        """Raise :class:`harness.errors.DataError` if something the method needs (a weights
        file, a dataset) is missing. Called before any work starts."""

    def needed_datasets(self, spec: Spec) -> list[tuple[str, str]]:
        """Datasets beyond the spec's that the method's chain reads, as ``(plugin name, role)``
        (the role names it in the missing-input message). Default: none."""
        return []

    @classmethod
    def spec_problems(cls, row: str, config: MethodConfig, spec: Spec, registry: Registry,
                      locate: Callable[[tuple[Any, ...]], str]) -> list[str]:
        """Problems of row ``row``'s settings ``config`` that only the whole spec shows (e.g. a
        dataset its chain reads), one line each; ``locate(path)`` gives the ``file:line`` of a
        field path (``("methods", row, field, ...)``). Default: none."""
        return []

    def encoder_chains(self, plan: Planning, *, version: str, seed: int, splits: list[Any],
                       settings: FinetuneSettings) -> list[EncoderChain]:
        """The stages that produce the row's encoder(s), created through ``plan.create``
        (:class:`harness.plan.Planning`): one chain per encoder the row fine-tunes (each
        reported under its ``suffix``). ``version``: the plugin's version (part of its stages'
        keys); ``splits``: the splits of the seed's cells; ``settings``: the row's fine-tuning
        settings, whose encoder it builds."""
        from harness.errors import PluginError

        raise PluginError(f"method '{self.name}' of kind '{self.kind}' has no encoder stage "
                          f"this harness version can build")


class InitMethod(Method):
    """Produces an encoder's weights without training."""

    kind: ClassVar[str] = "init"

    def init_encoder(self, encoder: torch.nn.Module, encoder_name: str, seed: int) -> dict[str, Any]:
        """Set ``encoder``'s weights in place (it arrives randomly initialised from ``seed``).

        Returns the input normalisation the weights expect, ``{"mean": [...], "std": [...]}``.
        """
        raise NotImplementedError

    def encoder_chains(self, plan: Planning, *, version: str, seed: int, splits: list[Any],
                       settings: FinetuneSettings) -> list[EncoderChain]:
        """One ``encoder`` stage."""
        return [EncoderChain(plan.create("encoder", method=self, version=version, seed=seed,
                                         settings=settings), splits)]


class PretrainSettings(MethodConfig, TrainingSettings):
    """Settings shared by pretraining methods (thesis §4.1.2 / A.2 defaults); gradient clipping
    and accumulation, ``amp`` and ``channels_last`` come from :class:`TrainingSettings`."""

    epochs: int = Field(100, ge=1, le=100_000, description="passes over the unlabeled images")
    batch_size: int = Field(256, ge=2, le=65_536, description="images per optimizer step (two "
                            "views each)")
    lr: float = Field(0.2, gt=0, le=10, description="peak learning rate (cosine decay to 0 per "
                      "iteration, no warm-up)")
    weight_decay: float = Field(1e-4, ge=0, description="weight decay of the optimizer")
    momentum: float = Field(0.9, ge=0, lt=1, description="the optimizer's (LARS/SGD) momentum; a "
                            "momentum target network needs its own setting")
    optimizer: Literal["lars", "sgd"] = Field("lars", description="LARS (timm) excludes biases and "
                                              "norm parameters from adaptation and weight decay")
    lars_trust_coeff: float = Field(0.02, gt=0, description="LARS eta (reference wrapper's 0.02)")
    max_images: int | None = Field(None, ge=1, description="use a seeded subset of the unlabeled images")
    num_workers: WorkerCount = Field(
        "auto", description="data-loader workers; auto: from the CPUs this process may use on "
        "CUDA, 0 on CPU (not part of result keys)")
    view_pipeline: Literal["auto", "device", "cpu"] = Field(
        "auto", description="where the two views are made: device (batched on the training "
        "device, harness.data.device_views), cpu (per sample in loader workers), auto: device "
        "on CUDA, else cpu. Same distributions, different random streams, like num_workers: "
        "not part of result keys")
    compile: bool = Field(False, description="torch.compile the model (not part of result keys)")
    seed: int | None = Field(
        None, ge=0, description="seed of the pretraining chain (labeler, pseudo-labels, "
        "pretraining); default: each cell's seed. Set it to pretrain once and fine-tune with "
        "every spec seed, as the thesis did for its five TNBC runs")


def decay_groups(module: torch.nn.Module, weight_decay: float, exclude_1d: bool) -> list[dict[str, Any]]:
    if exclude_1d:
        from timm.optim import param_groups_weight_decay

        return param_groups_weight_decay(module, weight_decay)
    return [{"params": [p for p in module.parameters() if p.requires_grad], "weight_decay": weight_decay}]


class PretrainMethod(Method):
    """Trains an encoder on unlabeled images (two augmented views each, plus aligned
    pseudo-label masks when ``needs_masks``). The engine (:mod:`harness.engine.pretrain`) owns
    the loop, the optimiser, AMP, checkpoints and progress; the method builds its heads and
    computes the loss of one batch."""

    kind: ClassVar[str] = "pretrain"
    needs_masks: ClassVar[bool] = False
    #: Under DDP on CUDA: BatchNorm statistics over the global batch (SyncBatchNorm) rather
    #: than each process's slice. Default on: the thesis trained on one GPU, so this keeps its
    #: semantics whatever the GPU count; a method whose design relies on per-device statistics
    #: (e.g. MoCo's shuffled BN) sets it False.
    sync_batchnorm: ClassVar[bool] = True
    Config: ClassVar[type[MethodConfig]] = PretrainSettings
    #: What a subclass's ``Config`` must derive from (the engine reads these settings).
    settings_base: ClassVar[type[MethodConfig]] = PretrainSettings
    config: PretrainSettings

    def view_config(self) -> Any:
        """The two-view augmentation (:class:`harness.data.views.ViewAugmentConfig`)."""
        from harness.data.view_config import ViewAugmentConfig

        return getattr(self.config, "augment", None) or ViewAugmentConfig()

    def pretrain_seed(self, seed: int) -> int:
        """The seed of the pretraining chain of cells of ``seed``: the method's ``seed`` setting
        when given (one chain shared by every fine-tuning seed), else ``seed``."""
        own = self.config.seed
        return seed if own is None else own

    def key_settings(self) -> dict[str, Any]:
        """The settings that enter its pretraining stages' keys (runtime-only ones are dropped
        after): all but ``seed`` (the effective seed is keyed as the stage's ``seed``, so
        ``seed: 0`` shares stages with cells of seed 0)."""
        return {k: v for k, v in self.config.model_dump(mode="json").items() if k != "seed"}

    def encoder_chains(self, plan: Planning, *, version: str, seed: int, splits: list[Any],
                       settings: FinetuneSettings) -> list[EncoderChain]:
        """One ``pretrain`` stage. A method that ``needs_masks`` composes its own chain that
        gives the stage its ``masks`` (PRICon's: ``plugins/methods/pricon/chain.py``)."""
        if self.needs_masks:
            from harness.errors import PluginError

            raise PluginError(f"method '{self.name}' needs masks: its encoder_chains must create "
                              f"the stages that make them and pass them to its pretrain stage")
        return [EncoderChain(plan.create("pretrain", method=self, version=version,
                                         seed=self.pretrain_seed(seed), settings=settings), splits)]

    def build_model(self, encoder: torch.nn.Module, encoder_channels: list[int]) -> torch.nn.Module:
        """Wrap ``encoder`` (an smp encoder whose forward returns a list of feature maps, the last
        one un-pooled) with the method's heads; the result must keep it as ``.encoder``."""
        raise NotImplementedError

    def param_groups(self, model: torch.nn.Module) -> list[dict[str, Any]]:
        """Optimiser parameter groups. With LARS: timm's rule (1-D parameters and biases get no
        weight decay, hence no LARS adaptation, as the reference's LARS wrapper); with SGD: one
        group, weight decay on everything (as official SimSiam). A group with
        ``"fixed_lr": True`` keeps its learning rate instead of following the schedule."""
        return decay_groups(model, self.config.weight_decay, self.config.optimizer == "lars")

    def training_step(self, model: torch.nn.Module, batch: dict[str, torch.Tensor],
                      num_classes: int | None) -> tuple[torch.Tensor, dict[str, float]]:
        """Loss of one batch (``view1``, ``view2`` and, with masks, ``mask1``/``mask2``) and
        extra values to log (0-d tensors, detached: the loop reads them with the losses every
        few dozen steps; a ``float(...)`` here would wait for the device every step). A method that needs the schedule may declare
        ``training_step(self, model, batch, num_classes, *, step, total_steps)``: the engine
        then passes the index (from 0) of the optimizer step this batch makes and the run's
        number of optimizer steps."""
        raise NotImplementedError

    def after_step(self, model: torch.nn.Module, step: int, total_steps: int) -> None:
        """Called after optimizer step ``step`` (from 0) of ``total_steps`` and the learning
        rate's step: update a momentum/EMA target network here (BYOL, MoCo, DINO). Whatever it
        keeps must live in ``model`` (parameters or buffers), which is checkpointed. Default:
        nothing."""

    def init_encoder(self, encoder: torch.nn.Module, encoder_name: str, seed: int) -> None:
        """Starting weights (random by default; PRICon can start from ImageNet)."""


class SemiSupervisedSettings(MethodConfig, GradClipSettings):
    """Settings shared by semi-supervised methods (thesis §A.2 defaults); ``grad_clip_norm``
    comes from :class:`GradClipSettings` (precision and memory format: ``finetune:``)."""

    iterations: int = Field(80_000, ge=1, le=10**8, description="training iterations (cosine lr to 0)")
    batch_size: int = Field(4, ge=1, le=65_536, description="labeled images per iteration")
    unlabeled_batch_size: int | None = Field(None, ge=2, description="unlabeled images per "
                                             "iteration (default: batch_size, at least 2 for mixing)")
    lr: float = Field(5e-4, gt=0, le=10, description="Adam learning rate (cosine decay to 0)")
    weight_decay: float = Field(5e-4, ge=0, description="Adam weight decay")
    ema_decay: float = Field(0.99, gt=0, lt=1, description="teacher EMA: min(1 - 1/(t+1), decay)")
    strong_threshold: float = Field(0.97, gt=0, le=1, description="teacher confidence that counts "
                                    "a pixel in the per-image unsupervised weight")
    num_workers: WorkerCount = Field(
        "auto", description="data-loader workers building the iterations' batches; auto: from "
        "the CPUs this process may use on CUDA, 0 on CPU (batch t is a function of (seed, t): "
        "not part of result keys)")


class SemiSupervisedMethod(Method):
    """Trains a whole U-Net from the labeled split + unlabeled images with a mean teacher; the
    loop is :mod:`harness.engine.semisup`, the method supplies the mixing (and extra losses).
    There is no separate encoder stage, so the ``frozen`` protocol does not apply."""

    kind: ClassVar[str] = "semisupervised"
    #: Under DDP on CUDA: the student's and the teacher's BatchNorm layers normalise over the
    #: global batch (SyncBatchNorm) rather than each process's slice. Default on: the thesis
    #: trained these baselines on one GPU (batch 4 + 4: a slice of 1-2 images per GPU would
    #: make the batch statistics, and the teacher's train-mode pseudo-labels, noisy).
    sync_batchnorm: ClassVar[bool] = True
    Config: ClassVar[type[MethodConfig]] = SemiSupervisedSettings
    #: What a subclass's ``Config`` must derive from (the engine reads these settings).
    settings_base: ClassVar[type[MethodConfig]] = SemiSupervisedSettings
    config: SemiSupervisedSettings

    def build_model(self, unet: torch.nn.Module) -> torch.nn.Module:
        """The student network around ``unet`` (a randomly initialised smp U-Net): the U-Net
        itself (default), or a module that keeps it as ``.unet`` and whose forward returns a
        dict with ``"logits"`` plus whatever :meth:`extra_loss` needs (e.g. a representation
        head). The teacher is an EMA copy of this module; only its ``.unet`` is saved and
        evaluated, so the artifact loads into a plain U-Net."""
        return unet

    def mix(self, images: torch.Tensor, labels: torch.Tensor, confidence: torch.Tensor
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mix the un-augmented unlabeled batch: float images in [0, 1] ``(B, 3, H, W)``, the
        teacher's pseudo-labels (long) and confidences ``(B, H, W)``; one mask per image mixes
        all three alike. Draw randomness from the global torch RNG (the engine seeds it per
        iteration, so a resumed run draws the same)."""
        raise NotImplementedError

    def extra_loss(self, labeled: dict[str, torch.Tensor], unlabeled: dict[str, torch.Tensor],
                   targets: dict[str, torch.Tensor]) -> tuple[torch.Tensor | None, dict[str, float]]:
        """A loss added (weight 1) to the supervised and unsupervised cross-entropy, and values
        to log. ``labeled``/``unlabeled``: the student's outputs (dicts, at least ``"logits"``)
        on the labeled batch and on the mixed, augmented unlabeled batch; ``targets``:
        ``labels`` (labeled ground truth), ``pseudo_labels`` and ``confidence`` (the teacher's,
        mixed and augmented like the unlabeled images). Default: none."""
        return None, {}

    def after_step(self, model: torch.nn.Module, step: int, total_steps: int) -> None:
        """Called with the student after optimizer step ``step`` (from 0) of ``total_steps``,
        after the engine's EMA update of the teacher. Default: nothing."""
