"""The pydantic models of a spec (unknown keys, inf and nan rejected) and the resolved spec.

Only structure lives here; what depends on the installed plugins (their names, settings, metric
families) is checked in :mod:`harness.spec.checks`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from harness.protocols import check_protocol_name
from harness.training_settings import TrainingSettings
from harness.num_workers import WorkerCount

#: A protocol name; which ones exist comes from the protocol registry (harness/protocols).
Protocol = Annotated[str, AfterValidator(check_protocol_name)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # inf/nan: typos, never settings


class HoverLossWeights(_Strict):
    """Weights of HoVer-Net's loss terms (its PanNuke config, ``models/hovernet/opt.py``: all 1)."""

    np_ce: float = Field(1.0, ge=0, description="nucleus/background cross-entropy")
    np_dice: float = Field(1.0, ge=0, description="nucleus/background Dice loss")
    hv_mse: float = Field(1.0, ge=0, description="HV maps' mean squared error")
    hv_msge: float = Field(1.0, ge=0, description="HV maps' gradient MSE on nucleus pixels")
    nc_ce: float = Field(1.0, ge=0, description="nucleus class cross-entropy")
    nc_dice: float = Field(1.0, ge=0, description="nucleus class Dice loss")


class FinetuneSettings(_Strict, TrainingSettings):
    """Fine-tuning recipe shared by all methods (thesis §4.1.3 and A.1 defaults); gradient
    clipping and accumulation, ``amp`` and ``channels_last`` come from :class:`TrainingSettings`."""

    architecture: Literal["unet", "dpt", "unetr"] = Field(
        "unet", description="segmentation model: 'unet' (smp U-Net, CNN encoders), 'dpt' (smp's "
        "DPT decoder) or 'unetr' (UNETR/CellViT-style decoder with an image path), for ViT encoders")
    encoder: str = Field(
        "resnet18", description="an smp encoder name, 'tu-<timm model>', a timm ViT name, "
        "'local-dir:<Hugging Face snapshot folder>' or 'fm:<foundation model>' (harness show "
        "method foundation)")
    encoder_args: dict[str, Any] = Field(
        default_factory=dict, description="keyword arguments of the encoder's constructor "
        "(timm.create_model), e.g. {img_size: 64} for a tiny ViT")
    unfreeze_epochs: int = Field(25, ge=0, description="unfreeze protocol: epochs with the "
                                 "encoder frozen before everything trains (CellViT's 25)")
    lora_rank: int = Field(16, ge=1, le=4096, description="lora protocol: adapter rank (THUNDER's 16)")
    lora_alpha: float = Field(16.0, gt=0, description="lora protocol: adapter scale numerator "
                              "(scale alpha / rank)")
    head: Literal["semantic", "hover"] = Field(
        "semantic", description="'semantic': class logits, argmax, instances = connected "
        "components; 'hover': HoVer-Net's nucleus (NP), horizontal/vertical distance (HV) and "
        "class (NC) outputs from the same decoder, instances by HoVer-Net's watershed "
        "post-processing (datasets with instance maps; not semi-supervised methods)")
    hover_loss: HoverLossWeights = Field(
        default_factory=HoverLossWeights, description="head 'hover': weight of each loss term")
    epochs: int = Field(100, ge=1, le=100_000)
    batch_size: int = Field(16, ge=1, le=65_536)
    drop_last: bool = Field(
        False, description="drop each epoch's last partial batch (false: keep it, as the "
        "reference's DataLoader, so an epoch is ceil(n / batch_size) steps; true: this harness's "
        "behaviour before, floor(n / batch_size) steps)")
    lr: float = Field(1e-3, gt=0, le=10)
    weight_decay: float = Field(0.0, ge=0)
    image_size: int | None = Field(
        None, ge=32, le=8192, description="training crop size (random crop); None = full image. "
        "Evaluation always uses full images.")
    augment: bool = Field(True, description="thesis A.1 augmentations (flips, rot90, blur, noise)")
    augment_pipeline: Literal["auto", "device", "cpu"] = Field(
        "auto", description="where the training augmentations run: 'cpu' (per image in the "
        "loader workers), 'device' (batched on the training device from the same distributions, "
        "the loader only reads uint8: far less host CPU per image; other random draws, so other "
        "numbers than 'cpu'), 'auto': device on CUDA with the semantic head, else cpu (not part "
        "of result keys)")
    frozen_bn: Literal["adapt", "fixed"] = Field(
        "adapt", description="frozen protocol: encoder batch-norm statistics keep adapting "
        "('adapt', what the thesis's code did) or stay fixed ('fixed')")
    normalization: Literal["encoder", "thesis_quirk"] = Field(
        "encoder", description="'encoder': the normalisation recorded with the encoder weights; "
        "'thesis_quirk': inputs scaled to [-1/255, 1/255] as the thesis's fine-tuning code did")
    eval_batch_size: int = Field(32, ge=1, le=65_536)
    eval_workers: int | Literal["auto"] = Field(
        "auto", description="processes that score test predictions while the model predicts "
        "(0: in the training process, after predicting); 'auto': none for a small test set, "
        "else one per spare CPU, at most 8 (not part of result keys)")
    num_workers: WorkerCount = Field(
        "auto", description="data-loader workers; auto: from the CPUs this process may use on "
        "CUDA, 0 on CPU (not part of result keys)")
    device: str = Field("auto", description="'auto', 'cpu', 'cuda' or 'cuda:N'")
    eval_precision: Literal["fp32", "amp"] = Field(
        "fp32", description="precision of the evaluation's predictions: fp32 (default, TF32 off, "
        "as the reference evaluated) or amp (mixed precision on CUDA, faster); not part of "
        "result keys")
    pseudolabel_amp: bool = Field(
        False, description="pseudo-labels under mixed precision on CUDA; false (default): fp32, "
        "as the reference labeled")

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if v in ("auto", "cpu", "cuda") or (v.startswith("cuda:") and v[5:].isdigit()):
            return v
        raise ValueError("must be 'auto', 'cpu', 'cuda' or 'cuda:N'")

    @field_validator("image_size")
    @classmethod
    def _div32(cls, v: int | None) -> int | None:
        if v is not None and v % 32:
            raise ValueError(f"must be a multiple of 32 (U-Net downsamples 5 times, DPT to 1/32); "
                             f"try {max(32, round(v / 32) * 32)}")
        return v

    @model_validator(mode="after")
    def _device_augment_head(self) -> "FinetuneSettings":
        if self.augment_pipeline == "device" and self.head != "semantic":
            raise ValueError(f"augment_pipeline: device supports the semantic head only (head "
                             f"{self.head!r} makes its targets from the augmented instance map in "
                             f"the loader); use augment_pipeline: cpu or auto")
        return self


class RowSettings(BaseModel):
    """The harness's own keys of a ``methods:`` row, split off before the method plugin's
    ``Config`` validates the rest. They say how a row is run, not what a cell computes, so they
    are part of no stage key."""

    model_config = ConfigDict(extra="ignore")  # the rest belongs to the plugin's Config
    method: str | None = Field(None, description="plugin behind the row (default: the row name)")
    protocols: list[Protocol] | None = Field(
        None, min_length=1, description="a subset of the spec's protocols for this row only "
        "(e.g. [full] for a semi-supervised method in a spec with [frozen, full])")
    architecture: Literal["unet", "dpt", "unetr"] | None = Field(
        None, description="this row's finetune.architecture (e.g. unetr for a foundation-model "
        "row beside U-Net rows); it enters the row's stage keys as finetune.architecture")

    @field_validator("protocols")
    @classmethod
    def _unique(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and len(set(v)) != len(v):
            raise ValueError(f"duplicate entries: {', '.join(sorted({p for p in v if v.count(p) > 1}))}")
        return v


#: Row-level keys of ``methods:`` entries (see :class:`RowSettings`).
ROW_KEYS = tuple(RowSettings.model_fields)


class MetricSettings(_Strict):
    """The report's headline metric. Which names and variants exist is up to the metric family
    of the dataset (:mod:`harness.metrics.family`); :mod:`harness.spec.checks` checks them."""

    name: str = Field("mpq", description="headline metric of the report (one of the dataset's "
                      "metric family: mpq or bpq for PQ, dice for Dice)")
    pq_variant: str = Field(
        "instance", description="variant of a family that has several (PQ: 'instance', the "
        "PanNuke protocol with connected components; 'thesis', each class of an image scored as "
        "one segment, as the thesis's code did)")


class DatasetRef(BaseModel):
    """``dataset: NAME`` or ``dataset: {name: NAME, <the dataset's own options>}``."""

    model_config = ConfigDict(extra="allow")
    name: str

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class ExecutionSettings(BaseModel):
    """Where the stages run (``harness/execute/``): part of no stage key and of no record. The
    keys beside ``executor`` are that executor's own settings, validated by its ``Config``; those
    every executor has (``gpus_per_stage``) are ``harness.execute.base.ExecutorConfig``'s."""

    model_config = ConfigDict(extra="allow")
    executor: str = Field("local", description="executor plugin: local, pool, slurm, ...")
    checkpoint_every_s: float | None = Field(
        None, ge=0, le=7 * 86_400, description="seconds of training between checkpoints of a "
        "stage (also written at its end and on SIGTERM/SIGUSR1/Ctrl-C); default 300; the "
        "environment variable HARNESS_CHECKPOINT_EVERY_S, when set, wins. Part of no stage key")

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class Spec(_Strict):
    name: str = Field(..., pattern=r"^[A-Za-z0-9_.-]+$", description="identifier of the comparison")
    description: str = ""
    reference: str | None = Field(
        None, description="table of the thesis's published numbers to show beside ours "
        "(a key of harness/references/thesis_results.yaml)")
    dataset: DatasetRef
    methods: dict[str, dict[str, Any] | None]
    protocols: list[Protocol] = Field(default_factory=lambda: ["frozen", "full"], min_length=1)
    fractions: list[float] = Field(default_factory=lambda: [1.0], min_length=1)
    folds: list[str] | None = Field(None, description="evaluation folds; default: all")
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)  # range: spec.values
    finetune: FinetuneSettings = Field(default_factory=FinetuneSettings)
    metric: MetricSettings = Field(default_factory=MetricSettings)
    unlabeled: DatasetRef | None = Field(
        None, description="unlabeled images for pretraining and semi-supervised methods "
        "(e.g. tcga); default: the fine-tuning dataset's own unlabeled set, if it has one")
    output: str = Field("reports/{name}", description="run folder; {name} is the spec name")
    loggers: dict[str, dict[str, Any] | None] = Field(
        default_factory=dict, description="experiment trackers that record the run (e.g. "
        "[tensorboard, mlflow], or a mapping name -> the logger's settings); part of no stage key")
    execution: ExecutionSettings = Field(default_factory=ExecutionSettings)

    @field_validator("dataset", "unlabeled", mode="before")
    @classmethod
    def _dataset_str(cls, v: Any) -> Any:
        return {"name": v} if isinstance(v, str) else v

    @field_validator("methods", mode="before")
    @classmethod
    def _methods_list(cls, v: Any) -> Any:
        if isinstance(v, list):
            if not all(isinstance(m, str) for m in v):
                raise ValueError("a list of method names, or a mapping name -> settings")
            return {m: None for m in v}
        return v

    @field_validator("loggers", mode="before")
    @classmethod
    def _loggers_list(cls, v: Any) -> Any:
        if v is None:
            return {}
        if isinstance(v, list):
            if not all(isinstance(m, str) for m in v):
                raise ValueError("a list of logger names, or a mapping name -> settings")
            return {m: None for m in v}
        return v

    @field_validator("methods")
    @classmethod
    def _methods_nonempty(cls, v: dict) -> dict:
        if not v:
            raise ValueError("name at least one method")
        return v

    def plugin_of(self, label: str) -> str:
        """The method plugin behind a row: ``methods: {point_only: {method: pricon, ...}}``
        runs the ``pricon`` plugin under the row label ``point_only``; by default the label is
        the plugin name."""
        settings = self.methods.get(label) or {}
        return settings.get("method", label)

    def finetune_of(self, label: str, encoder: str | None = None) -> FinetuneSettings:
        """A row's fine-tuning settings: the spec's, with the encoder its method provides (a
        foundation model's) and the row's own ``architecture``."""
        update: dict[str, Any] = {}
        if encoder is not None and encoder != self.finetune.encoder:
            update["encoder"] = encoder
        own = (self.methods.get(label) or {}).get("architecture")
        if own is not None and own != self.finetune.architecture:
            update["architecture"] = own
        return self.finetune.model_copy(update=update) if update else self.finetune

    def protocols_of(self, label: str) -> list[str]:
        """The protocols of a row, in the spec's order: the spec's ``protocols``, or the subset
        the row names with its own ``protocols:`` key (validated to be a subset)."""
        own = (self.methods.get(label) or {}).get("protocols")
        return [p for p in self.protocols if own is None or p in own]

    @field_validator("fractions")
    @classmethod
    def _fractions(cls, v: list[float]) -> list[float]:
        bad = [f for f in v if not (0.0 < f <= 1.0)]
        if bad:
            raise ValueError(f"label fractions must lie in (0, 1]; {bad} do not")
        return v

    @field_validator("protocols", "fractions", "seeds", "folds")
    @classmethod
    def _unique(cls, v: list | None) -> list | None:
        if v is not None and len(set(v)) != len(v):
            dupes = sorted({str(x) for x in v if v.count(x) > 1})
            raise ValueError(f"duplicate entries: {', '.join(dupes)}")
        return v


@dataclass
class ResolvedSpec:
    """A validated spec with each plugin's own settings parsed."""

    spec: Spec
    source: str
    overrides: list[str]
    method_configs: dict[str, Any]
    dataset_config: Any
    unlabeled_config: Any = None

    @property
    def name(self) -> str:
        return self.spec.name

    def output_dir(self, root: Path | None = None) -> Path:
        out = Path(self.spec.output.format(name=self.spec.name))
        if root is not None and not out.is_absolute():
            out = root / out
        return out

    def resolved(self) -> dict[str, Any]:
        """Every setting, defaults filled in (what a record stores as provenance)."""
        data = self.spec.model_dump(mode="json", exclude={"execution"})  # where, not what
        data["methods"] = {m: {"method": self.spec.plugin_of(m), **self._row_protocols(m),
                               **c.model_dump(mode="json")}
                           for m, c in self.method_configs.items()}
        if not data.get("loggers"):  # a spec without loggers resolves as it always did
            data.pop("loggers", None)
        data["dataset"] = {"name": self.spec.dataset.name,
                           **self.dataset_config.model_dump(mode="json")}
        if self.spec.unlabeled is not None:
            data["unlabeled"] = {"name": self.spec.unlabeled.name,
                                 **self.unlabeled_config.model_dump(mode="json")}
        return data

    def _row_protocols(self, label: str) -> dict[str, Any]:
        """A row's own ``protocols`` and ``architecture`` (only where the spec gives them, so that the resolved spec
        of every other row stays as it was)."""
        row = self.spec.methods.get(label) or {}
        own = {} if row.get("protocols") is None else {"protocols": self.spec.protocols_of(label)}
        if row.get("architecture") is not None:  # likewise a row's own architecture
            own["architecture"] = row["architecture"]
        return own
