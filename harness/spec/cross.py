"""Cross-field checks of a spec whose fields are each valid: the encoder, the protocols each
method supports, unlabeled images for the methods that need them, the headline metric of the
dataset's metric family, label fractions against the batch size and the reference table.

What depends on a kind of plugin is asked of its class (``Method.protocols``,
``Method.needs_unlabeled``, ``Dataset.metric_family`` and the registered
:class:`~harness.metrics.family.MetricFamily`), never decided here by its kind's name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from harness.errors import did_you_mean
from harness.plugins import Registry
from harness.spec.models import ROW_KEYS, FinetuneSettings, Spec
from harness.spec.problems import where
from harness.spec.source import Lines

if TYPE_CHECKING:
    from harness.data.base import Dataset, DatasetConfig


def cross_checks(spec: Spec, registry: Registry, dataset_config: Any, source: str,
                 lines: Lines, problems: list[str]) -> None:
    """Append the problems of every cross-field check (call only when nothing else is wrong:
    they assume valid fields and installed plugins)."""
    def at(*loc: Any) -> str:
        return where(source, lines, loc)

    problems.extend(encoder_problems(spec, registry, at))
    problems.extend(protocol_problems(spec, registry, at))
    ds_cls = registry.datasets[spec.dataset.name].cls
    if not ds_cls.labeled:
        problems.append(f"{at('dataset')}: dataset: '{spec.dataset.name}' is unlabeled (images for "
                        f"pretraining only) and cannot be the fine-tuning dataset; name it under "
                        f"`unlabeled:` and fine-tune on a labeled dataset")
        return
    problems.extend(unlabeled_problems(spec, registry, at))
    problems.extend(head_problems(spec, registry, ds_cls, at))
    problems.extend(fraction_problems(spec, ds_cls, dataset_config, at))
    problems.extend(reference_problems(spec, at))


def head_problems(spec: Spec, registry: Registry, ds_cls: Any, at) -> list[str]:
    """A head other than ``semantic`` needs instance ground truth (a ``pq`` dataset) and
    methods that support it (``Method.heads``; semi-supervised ones train their own U-Net)."""
    if spec.finetune.head == "semantic":
        return []
    problems = []
    if ds_cls.metric_family != "pq":
        problems.append(f"{at('finetune', 'head')}: finetune.head: '{spec.finetune.head}' needs "
                        f"nucleus instances (a dataset scored by PQ); '{spec.dataset.name}' is "
                        f"scored by '{ds_cls.metric_family}': use head 'semantic'")
    for name in spec.methods:
        cls = registry.methods[spec.plugin_of(name)].cls
        heads = getattr(cls, "heads", None)
        if heads is not None and spec.finetune.head not in heads:
            problems.append(f"{at('methods', name)}: methods.{name}: '{cls.name}' supports "
                            f"finetune.head {', '.join(heads)} only, not "
                            f"'{spec.finetune.head}': remove the row or change the head")
    return problems


def encoder_problems(spec: Spec, registry: Registry, at) -> list[str]:
    """An encoder nothing can build; an architecture, method or protocol that cannot take a
    row's encoder (a plain ViT under ``unet``, a torchvision method on a ViT...)."""
    from harness.models.names import encoder_family
    from harness.spec.encoders import encoder_names

    encoders = encoder_names()
    if encoder_family(spec.finetune.encoder, encoders) is None:
        return [f"{at('finetune', 'encoder')}: finetune.encoder: unknown encoder "
                f"'{spec.finetune.encoder}'{did_you_mean(spec.finetune.encoder, encoders)}"
                f"; see segmentation_models_pytorch.encoders.get_encoder_names(), a 'tu-' timm "
                f"name, a timm ViT, 'local-dir:DIR' or 'fm:NAME'"]
    problems: list[str] = []
    seen: set[str] = set()
    for name in spec.methods:
        cls = registry.methods[spec.plugin_of(name)].cls
        row = {k: v for k, v in (spec.methods[name] or {}).items() if k not in ROW_KEYS}
        settings = spec.finetune_of(name, cls.row_encoder(row, spec.finetune.encoder))
        problems.extend(_row_encoder_problems(spec, registry, name, cls, settings, encoders, at, seen))
    return problems


def _row_encoder_problems(spec: Spec, registry: Registry, name: str, cls: type,
                          settings: FinetuneSettings, encoders: list[str], at,
                          seen: set[str] | None = None) -> list[str]:
    from harness.models.names import architecture_problem, encoder_family

    family = encoder_family(settings.encoder, encoders)
    if settings.encoder.startswith("fm:"):
        from harness.models.foundation import foundation_models

        known = foundation_models(registry)
        fm = settings.encoder[3:]
        if fm not in known:
            return [f"{at('methods', name)}: methods.{name}: unknown foundation model '{fm}'"
                    f"{did_you_mean(fm, known)}; registered: {', '.join(sorted(known))}"]
    if family is None:
        return [f"{at('methods', name)}: methods.{name}: unknown encoder '{settings.encoder}'"]
    problem = architecture_problem(settings.encoder, settings.architecture, family)
    if problem:
        own = "architecture" in (spec.methods[name] or {})
        return [f"{at(*(('methods', name, 'architecture') if own else ('finetune', 'architecture')))}: "
                f"methods.{name}: {problem} (set `architecture:` in the row or finetune)"]
    problems: list[str] = []
    seen = set() if seen is None else seen  # a spec-wide problem is reported once, not per row
    families = getattr(cls, "encoder_families", ("cnn",))
    if family not in families:
        problems.append(f"{at('methods', name)}: methods.{name}: method '{cls.name}' supports "
                        f"{'/'.join(families)} encoders, not the {family} '{settings.encoder}'")
    for protocol in spec.protocols_of(name):
        problem = getattr(registry.protocol(protocol).cls, "settings_problem", lambda s: None)(settings)
        if problem and f"{protocol}: {problem}" not in seen:
            seen.add(f"{protocol}: {problem}")
            problems.append(f"{at('finetune')}: protocol '{protocol}': {problem}")
        fits = getattr(registry.protocol(protocol).cls, "encoder_families", None)
        if fits is not None and family not in fits:
            problems.append(f"{at('methods', name)}: methods.{name}: protocol '{protocol}' needs "
                            f"a {'/'.join(fits)} encoder, not the {family} '{settings.encoder}'")
    return problems


def protocol_problems(spec: Spec, registry: Registry, at) -> list[str]:
    """Protocols of a row that its method does not support (``Method.protocols``)."""
    problems = []
    for name in spec.methods:
        cls = registry.methods[spec.plugin_of(name)].cls
        supported = getattr(cls, "protocols", None)
        if supported is None:
            continue
        for protocol in [p for p in spec.protocols_of(name) if p not in supported]:
            problems.append(_protocol_problem(spec, name, cls, protocol, list(supported), at))
    return problems


def _protocol_problem(spec: Spec, name: str, cls: type, protocol: str, supported: list[str],
                      at) -> str:
    own = "protocols" in (spec.methods[name] or {})
    row = f"protocols: [{', '.join(supported)}]"
    missing = [p for p in supported if p not in spec.protocols]
    fix = (f"give the row '{row}'" if not missing else
           f"add {', '.join(repr(p) for p in missing)} to the spec's protocols and give the row "
           f"'{row}'")
    reason = getattr(cls, "protocols_reason", "") or \
        f"method '{spec.plugin_of(name)}' (it supports {', '.join(supported)})"
    return (f"{at('methods', name, 'protocols')}: methods.{name}{'.protocols' if own else ''}: "
            f"protocol '{protocol}' is not possible for {reason}; {fix} "
            f"(methods: {{{name}: {{{row}}}}})")


def unlabeled_problems(spec: Spec, registry: Registry, at) -> list[str]:
    """Methods that learn from unlabeled images (``Method.needs_unlabeled``) need some."""
    if spec.unlabeled is not None:
        if registry.datasets[spec.unlabeled.name].cls.has_unlabeled:
            return []
        return [f"{at('unlabeled')}: unlabeled: dataset '{spec.unlabeled.name}' has no "
                f"unlabeled images"]
    if registry.datasets[spec.dataset.name].cls.has_unlabeled:
        return []
    return [f"{at('methods', name)}: methods.{name}: needs unlabeled images and dataset "
            f"'{spec.dataset.name}' has none; add e.g. `unlabeled: tcga` to the spec"
            for name in spec.methods
            if getattr(registry.methods[spec.plugin_of(name)].cls, "needs_unlabeled", False)]


def metric_problems(spec: Spec, registry: Registry, source: str, lines: Lines) -> list[str]:
    """The headline metric (and variant) must be one of the dataset's metric family."""
    info = registry.datasets.get(spec.dataset.name)
    if info is None or not info.cls.labeled:
        return []  # no such plugin, or an unlabeled dataset: reported elsewhere
    family = registry.metric_families.get(info.cls.metric_family)
    name, fam = spec.metric.name, info.cls.metric_family
    if family is None:
        return [f"{where(source, lines, ('dataset',))}: dataset: '{spec.dataset.name}' has "
                f"metric family '{fam}', which no installed plugin provides; installed: "
                f"{', '.join(sorted(registry.metric_families)) or 'none'}"]
    allowed = list(family.cls.metric_names)
    if name not in allowed:
        known = any(name in f.cls.metric_names for f in registry.metric_families.values())
        what = (f"'{name}' does not apply to dataset '{spec.dataset.name}' (metric family {fam})"
                if known else f"unknown metric '{name}'{did_you_mean(name, allowed)}")
        return [f"{where(source, lines, ('metric', 'name'))}: metric.name: {what}; "
                f"allowed: {', '.join(allowed)}"]
    variants = list(family.cls.variants)
    if variants and spec.metric.pq_variant not in variants:
        variant = spec.metric.pq_variant
        return [f"{where(source, lines, ('metric', 'pq_variant'))}: metric.pq_variant: unknown "
                f"variant '{variant}' of metric family {fam}{did_you_mean(variant, variants)}; "
                f"allowed: {', '.join(variants)}"]
    return []


def fraction_problems(spec: Spec, ds_cls: type[Dataset], config: DatasetConfig, at) -> list[str]:
    """Fractions that leave too few training images (needs the dataset's expected counts)."""
    from harness.data.fractions import fraction_count

    try:
        folds = ds_cls.folds(config)
        sizes = ds_cls.expected_group_sizes(config)
    except Exception:  # noqa: BLE001 - a dataset that needs its data to list folds
        return []
    if not (sizes and folds):
        return []
    problems = []
    kfold = ds_cls.split_scheme == "kfold"
    for frac in spec.fractions:
        for fold in spec.folds or folds:
            train_groups = {g: n for g, n in sizes.items() if (g != fold if kfold else g == "train")}
            empty = [g for g, n in train_groups.items() if n == 0 or frac * n <= 0]
            if empty:
                problems.append(f"{at('fractions')}: fractions: {frac} leaves no training "
                                f"image in {', '.join(empty)}")
            total = sum(fraction_count(frac, n) for n in train_groups.values())
            if total < spec.finetune.batch_size:
                problems.append(
                    f"{at('fractions')}: fractions: {frac} leaves {total} training images for "
                    f"fold '{fold}', fewer than finetune.batch_size "
                    f"{spec.finetune.batch_size}; raise the fraction or lower the batch size")
                break
    return problems


def reference_problems(spec: Spec, at) -> list[str]:
    """A reference table the thesis data does not have."""
    if spec.reference is None:
        return []
    from harness.references import load_thesis_results

    tables = load_thesis_results()
    if spec.reference in tables:
        return []
    return [f"{at('reference')}: reference: unknown table "
            f"'{spec.reference}'{did_you_mean(spec.reference, tables)}; known: {', '.join(tables)}"]
