"""The protocol contract: how a cell turns its encoder into an evaluated model.

A protocol is a class with a ``name``. Its chain (:meth:`TrainingProtocol.cell_stages`) says
which stages follow the encoder; by default ``finetune -> evaluate``: it builds the model to
train around the encoder artifact, says which parameters train, and how the model is put in
training mode each epoch. The ``finetune`` stage trains what it builds and the ``evaluate``
stage rebuilds the same model to load the trained weights; predictions are the argmax of its
logits at input size. A protocol of another shape (e.g. ``knn``: no training) returns its own
stages, of a kind it may register itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:  # no torch at import: `harness validate` and `list` load every protocol
    from torch import nn

    from harness.plan import Planning, Stage
    from harness.planner import Split
    from harness.spec.models import FinetuneSettings


class TrainingProtocol:
    name: ClassVar[str]
    description: ClassVar[str] = ""
    #: Bump when a change alters results (stage keys of existing protocols do not include it).
    version: ClassVar[str] = "1"
    #: Whether the encoder's parameters stay fixed (then ``finetune.frozen_bn`` applies).
    frozen_encoder: ClassVar[bool] = False

    #: Fine-tuning settings only this protocol reads: in its stages' keys (when not at their
    #: default), in no other protocol's.
    reads: ClassVar[tuple[str, ...]] = ()
    #: ``(metric, variant)`` its cells report instead of the spec's headline metric (a protocol
    #: that scores itself, e.g. ``probe``; a metric family must define the metric); None: the spec's.
    headline_metric: ClassVar[tuple[str, str | None] | None] = None
    #: Encoder families it can take (``cnn``, ``vit``; harness.models.names); None: any.
    encoder_families: ClassVar[tuple[str, ...] | None] = None

    @classmethod
    def settings_problem(cls, settings: FinetuneSettings) -> str | None:
        """Why the fine-tuning ``settings`` make no sense for this protocol (validation), or None."""
        return None

    def cell_stages(self, plan: Planning, *, encoder: Stage, split: Split, seed: int,
                    settings: FinetuneSettings, label: str) -> tuple[Stage, Stage]:
        """``(model, evaluation)``: the stages that turn the ``encoder`` stage into the cell's
        result on ``split`` (:class:`harness.planner.Split`) with fine-tuning ``settings`` (the
        row's), created through ``plan.create`` (:class:`harness.plan.Planning`).
        ``label``: the cell's model stage's label. Default: ``finetune -> evaluate``."""
        dataset = plan.resources.dataset
        model = plan.create("finetune", encoder=encoder, dataset=dataset, chosen=split.chosen,
                            protocol=self.name, seed=seed, settings=settings, label=label,
                            extra={"fold": split.fold, "fraction": split.fraction})
        return model, plan.create("evaluate", model=model, dataset=dataset, test_ids=split.test_ids,
                                  fold=split.fold, settings=settings)

    def build_model(self, encoder_name: str, num_classes: int,
                    settings: FinetuneSettings | None = None) -> nn.Module:
        """A randomly initialised model whose ``.encoder`` takes the encoder artifact's weights
        and whose forward returns logits ``(B, num_classes, H, W)`` at the input's size: the
        ``finetune.architecture`` of ``settings`` (a U-Net without settings)."""
        from harness.engine.model import build_model

        return build_model(encoder_name, num_classes, getattr(settings, "architecture", "unet"),
                           getattr(settings, "encoder_args", None))

    def prepare(self, model: nn.Module, settings: FinetuneSettings | None = None) -> None:
        """After the encoder weights are loaded: e.g. freeze them."""
        if self.frozen_encoder:
            from harness.engine.model import freeze_encoder

            freeze_encoder(model)

    def set_train_mode(self, model: nn.Module, frozen_bn: str, epoch: int = 0) -> None:
        """Called at the start of every epoch (from 0)."""
        from harness.engine.model import set_train_mode

        set_train_mode(model, self.frozen_encoder, frozen_bn)

    def finalize(self, model: nn.Module) -> nn.Module:
        """The trained model as ``model.pt`` stores it, loadable into :meth:`build_model`'s
        network (LoRA merges its adapters here)."""
        return model
