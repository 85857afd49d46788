"""``probe``: how much of the nucleus classes a frozen encoder's features carry, with no training.

The cell's chain is a single ``probe`` stage (a kind this file registers) after the encoder:

* the frozen encoder's batch-norm statistics are recomputed on the cell's training images
  (``finetune.frozen_bn: adapt``, the default, as the frozen protocol's decoder training adapts
  them; ``fixed`` keeps the stored ones), so that a random encoder's initial statistics (0/1)
  are not compared with a pretrained one's as if they were features;
* each **feature level** of stride 8 and 16 (a ResNet's layer2 and layer3 outputs; a ViT, or an
  encoder with neither: its deepest map) is cut into cells, one per feature-map position, each
  paired with the class fractions of its pixels (the one-hot class map average-pooled onto the
  same grid; void ids count for no class);
* a **ridge regression** (closed form in float64, penalty :data:`RIDGE` on standardised
  features) from a cell's features to its class fractions is fitted on the training images and
  scored on the test fold as R^2 over all classes: 1 - residual / total sum of squares, both
  about the training mean (the classical linear evaluation of representations, Alain & Bengio
  2016, "Understanding intermediate layers using linear classifier probes", fitted in closed
  form as in Kornblith et al. 2019, "Do Better ImageNet Models Transfer Better?", on dense
  targets);
* the cell's value, ``probe_r2``, is the mean over the levels; per level and per class R^2 are
  recorded beside it.

Why it is in the harness: a fine-tuned decoder adds its own optimisation noise to what the
encoder gives; a closed-form fit adds none, so at small budgets (the embedded demo) it ranks
encoders where fine-tuned mPQ cannot (specs/demo.yaml states the measured gap and spread). It
is an encoder-quality measure beside, not instead of, the segmentation protocols: its records
carry ``probe_r2`` (the ``probe`` metric family), not the dataset's headline metric.

Deterministic and streaming: sums of feature products are accumulated batch by batch (memory:
features x features per level), so a PanNuke fold costs one forward pass per image.
"""

from __future__ import annotations

from typing import Any, ClassVar

from harness.hookspecs import hookimpl
from harness.keying import flat
from harness.metrics.family import MetricFamily
from harness.protocols.base import TrainingProtocol
from harness.spec.models import FinetuneSettings
from harness.stages.base import StageKind, StageParams
from harness.store import hash_key

#: Ridge penalty on standardised features (the sum of squares of the weights it adds to the
#: residual; with thousands of cells per fit its effect is a mild shrinkage).
RIDGE = 10.0
#: Feature strides probed: the deepest two maps with several cells on small (64 px) images.
STRIDES = (8, 16)


class ProbeFamily(MetricFamily):
    """The ``probe`` protocol's value: not computed from predicted class maps (its stage scores
    itself), read back like any family's."""

    name: ClassVar[str] = "probe"
    metric_names: ClassVar[tuple[str, ...]] = ("probe_r2",)
    description: ClassVar[str] = ("R^2 of a closed-form ridge probe from frozen encoder features "
                                  "to each feature cell's class fractions (the probe protocol)")
    aggregation: ClassVar[str] = "sums of squares over all cells of the test fold, mean over feature levels"

    def headline(self, metrics: dict[str, Any], name: str, variant: str | None) -> float | None:
        return metrics[name]


class Probe(TrainingProtocol):
    name = "probe"
    description = "no training: closed-form ridge probe of frozen features -> class fractions (R^2)"
    frozen_encoder = True
    headline_metric = ("probe_r2", None)

    @classmethod
    def settings_problem(cls, settings: Any) -> str | None:
        if settings.head != "semantic":
            return f"it scores class fractions only: finetune.head '{settings.head}' needs a trained head"
        return None

    def cell_stages(self, plan, *, encoder, split, seed, settings, label):
        probe = plan.create("probe", encoder=encoder, dataset=plan.resources.dataset, split=split,
                            seed=seed, settings=settings, label=label)
        return probe, probe


class ProbeParams(StageParams):
    dataset: str | None  # None: the spec's own dataset
    train_ids: list[str]
    test_ids: list[str]
    settings: FinetuneSettings


class ProbeStage(StageKind):
    kind = "probe"
    description = "ridge probe of a frozen encoder: R^2 of class fractions on the test fold"
    Params = ProbeParams

    @classmethod
    def create(cls, plan: Any, *, encoder: Any, dataset: Any, split: Any, seed: int, settings: Any,
               label: str) -> Any:
        train_ids = flat(split.chosen)
        return cls.make(
            label=label,
            config={"dataset": dataset.fingerprint(), "seed": seed, "protocol": "probe",
                    "fold": split.fold, "fraction": split.fraction,
                    "train_ids": hash_key(train_ids), "test_ids": hash_key(list(split.test_ids)),
                    "ridge": RIDGE, "strides": list(STRIDES), "frozen_bn": settings.frozen_bn,
                    "normalization": settings.normalization, "metric_family": ProbeFamily.name},
            version="1", deps={"encoder": encoder},
            info={"train_ids": split.chosen, "test_ids": list(split.test_ids)},
            params=ProbeParams(dataset=None, train_ids=train_ids, test_ids=list(split.test_ids),
                               settings=settings))

    def run(self, stage, inputs, ctx, env):
        from harness.protocols.ridge import probe_encoder

        params = self.params_of(stage)
        dataset, arrays = env.labeled(params.dataset)
        return probe_encoder(ctx, arrays, params.train_ids, params.test_ids, dataset.num_classes,
                             list(dataset.class_names), params.settings, ridge=stage.config["ridge"],
                             strides=stage.config["strides"])


@hookimpl
def harness_register_protocols():
    return [Probe]


@hookimpl
def harness_register_stage_kinds():
    return [ProbeStage]


@hookimpl
def harness_register_metric_families():
    return [ProbeFamily]
