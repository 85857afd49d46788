"""Spec checks beyond the pydantic models: cross-field checks against the installed plugins,
names that become paths, output placeholders, duplicate YAML keys, number ranges, the
``--set`` origin of a value, and labeler settings. Every check appends to a list of problems so
that validation reports them all at once; none imports :mod:`harness.spec` (no cycle).
"""

from __future__ import annotations

import math
import re
import string
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from harness.plugins import Registry, did_you_mean

#: Names that become file or folder names (the spec's name, row names, folds): no separators,
#: no leading dot (so never "." or ".."), no control characters.
SAFE_NAME = re.compile(r"^[A-Za-z0-9_+-][A-Za-z0-9_.+-]{0,99}$")
SAFE_HINT = "letters, digits and _ . + - only, not starting with a dot, at most 100 characters"
#: Placeholders an ``output:`` may use.
OUTPUT_FIELDS = ("name",)
#: Integers beyond this are typos or attacks (1e30 epochs), never settings.
MAX_INT = 2**53
SEED_RANGE = (0, 2**32 - 1)


def where(source: str, lines: dict[tuple, Any], loc: tuple) -> str:
    """``file:line`` of the longest known prefix of ``loc``, or the ``--set`` that gave it."""
    for n in range(len(loc), 0, -1):
        line = lines.get(tuple(loc[:n]))
        if isinstance(line, str):
            return line
        if line is not None:
            return f"{source}:{line}"
    return source


def mark_overrides(lines: dict[tuple, Any], overrides: list[str]) -> None:
    """Values set with ``--set`` are reported as ``--set KEY=VALUE``, not by a spec line."""
    for item in overrides:
        key = item.split("=", 1)[0]
        parts = tuple(int(p) if p.isdigit() else p for p in key.strip().split(".") if p)
        lines.update({k: f"--set {item}" for k in [*lines, parts] if k[:len(parts)] == parts})


def lenient(model: type[BaseModel], data: dict[str, Any], exc: Exception) -> Any:
    """``model`` validated without the top-level fields that failed (their defaults instead),
    so that the checks of the other fields still run; None if that fails too."""
    from pydantic import ValidationError

    broken = {e["loc"][0] for e in exc.errors() if e["loc"]} if isinstance(exc, ValidationError) else set()
    try:
        return model.model_validate({k: v for k, v in data.items() if k not in broken})
    except ValidationError:
        return None


def printable(text: str) -> str:
    """``text`` with control characters escaped (a name holding ESC [2J must not clear the
    screen when echoed)."""
    return "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in str(text))


def too_deep(data: Any, limit: int = 40, max_nodes: int = 100_000) -> bool:
    """Whether a loaded document nests deeper than ``limit``, refers to itself (an alias
    inside its own anchor) or expands to more than ``max_nodes`` values: no spec does."""
    count = 0

    def walk(node: Any, depth: int, ancestors: frozenset) -> bool:
        nonlocal count
        count += 1
        if not isinstance(node, (dict, list)):
            return False
        if depth > limit or id(node) in ancestors or count > max_nodes:
            return True
        inner = ancestors | {id(node)}
        return any(walk(v, depth + 1, inner) for v in (node.values() if isinstance(node, dict) else node))

    return walk(data, 0, frozenset())


def duplicate_keys(text: str, source: str) -> list[str]:
    """Mapping keys given twice (YAML lets the later one win silently), with both lines."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except (yaml.YAMLError, RecursionError):
        return []
    problems: list[str] = []
    stack = [(root, ())]
    while stack:
        node, path = stack.pop()
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key, value in node.value:
                name = key.value if isinstance(key, yaml.ScalarNode) else None
                line = key.start_mark.line + 1
                if name is not None and name in seen:
                    full = ".".join(str(p) for p in path + (name,))
                    problems.append(f"{source}:{line}: {full}: duplicate key (also on line "
                                    f"{seen[name]}); YAML would silently keep this one: keep one")
                elif name is not None:
                    seen[name] = line
                stack.append((value, path + (name,)))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((item, path + (i,)) for i, item in enumerate(node.value))
    return sorted(problems, key=lambda p: int(p.split(":")[1]) if p.split(":")[1].isdigit() else 0)


def name_problems(data: dict[str, Any], source: str, lines: dict) -> list[str]:
    """Names that become paths (spec name, row names, folds) and the ``output`` template."""
    problems = []

    def bad(loc: tuple, what: str, value: Any) -> None:
        problems.append(f"{where(source, lines, loc)}: {'.'.join(map(str, loc))}: {what} "
                        f"(got {printable(repr(value))}); use {SAFE_HINT}")

    name = data.get("name")
    # (the model's own pattern reports other characters; this adds "..", ".x" and the length)
    if isinstance(name, str) and re.fullmatch(r"[A-Za-z0-9_.-]+", name) and not SAFE_NAME.match(name):
        bad(("name",), "not usable as a folder name", name)
    methods = data.get("methods")
    rows = list(methods) if isinstance(methods, (dict, list)) else []
    for i, row in enumerate(rows):
        if isinstance(row, str) and (not SAFE_NAME.match(row) or "__" in row):
            loc = ("methods", row) if isinstance(methods, dict) else ("methods", i)
            what = "row names become record file names; no '__' (it separates cell ids)" \
                if "__" in row else "row names become record file names"
            bad(loc, what, row)
    folds = data.get("folds")
    for i, fold in enumerate(folds if isinstance(folds, list) else []):
        if isinstance(fold, str) and not SAFE_NAME.match(fold):
            bad(("folds", i), "fold names become record file names", fold)
    if folds == []:
        problems.append(f"{where(source, lines, ('folds',))}: folds: an empty list means "
                        f"nothing; leave folds out (or null) for all folds, or name some")
    output = data.get("output")
    if isinstance(output, str):
        problems.extend(output_problems(output, data.get("name"), where(source, lines, ("output",)),
                                        "output"))
    return problems


def output_problems(output: str, name: Any, at: str, what: str) -> list[str]:
    """An ``output`` template that cannot become a run folder."""
    if "\0" in output:
        return [f"{at}: {what}: contains a NUL character (got {printable(repr(output))}); "
                f"give a plain folder path"]
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(output) if f is not None]
    except ValueError as exc:
        return [f"{at}: {what}: {exc} (got {output!r}); write braces as {{{{ and }}}}, or use "
                f"{{name}}"]
    unknown = [f for f in fields if f not in OUTPUT_FIELDS]
    if unknown:
        return [f"{at}: {what}: unknown placeholder {{{printable(unknown[0])}}} (got "
                f"{printable(repr(output))}); the only placeholder is {{name}}"]
    path = Path(output.format(name=name if isinstance(name, str) else "x"))
    if path.exists() and not path.is_dir():
        return [f"{at}: {what}: {path} is an existing file, not a folder; choose another path"]
    return []


def number_problems(models: dict[tuple, Any], source: str, lines: dict) -> list[str]:
    """Integers no setting can mean (above 2**53, from `1e30`) and seeds outside
    [0, 2**32 - 1], in every validated model (the spec's, each method's, each dataset's)."""
    problems = []
    stack = list(models.items())
    while stack:
        loc, value = stack.pop()
        if isinstance(value, BaseModel):
            stack.extend((loc + (k,), getattr(value, k)) for k in type(value).model_fields)
        elif isinstance(value, (list, tuple)):
            stack.extend((loc + (i,), v) for i, v in enumerate(value))
        elif isinstance(value, int) and not isinstance(value, bool):
            is_seed = any(p in ("seed", "seeds") for p in loc if isinstance(p, str))
            lo, hi = SEED_RANGE if is_seed else (-MAX_INT, MAX_INT)
            if not lo <= value <= hi:
                what = "a seed" if is_seed else "a setting"
                problems.append(f"{where(source, lines, loc)}: {'.'.join(map(str, loc))}: out of "
                                f"range for {what} (got {value:.3g}); allowed {lo}..{hi}")
        elif isinstance(value, float) and not math.isfinite(value):
            problems.append(f"{where(source, lines, loc)}: {'.'.join(map(str, loc))}: must be a "
                            f"finite number (got {value})")
    return sorted(problems)


def labeler_problems(spec: Any, method_configs: dict[str, Any], registry: Registry,
                     source: str, lines: dict) -> list[str]:
    """Every labeler setting of every row (any settings field of type LabelerSettings): its
    dataset must be an installed labeled dataset, and its train_groups folds it has."""
    from harness.methods import LabelerSettings

    problems = []
    for row, config in method_configs.items():
        for field in type(config).model_fields:
            labeler = getattr(config, field)
            if not isinstance(labeler, LabelerSettings):
                continue
            loc = ("methods", row, field)
            name = labeler.dataset or spec.dataset.name
            info = registry.datasets.get(name)
            at = where(source, lines, loc + ("dataset",))
            if info is None:
                problems.append(f"{at}: {'.'.join(loc)}.dataset: unknown dataset '{printable(name)}'"
                                f"{did_you_mean(name, registry.datasets)}; installed: "
                                f"{', '.join(sorted(registry.datasets))}")
                continue
            if not info.cls.labeled:
                problems.append(f"{at}: {'.'.join(loc)}.dataset: '{name}' is unlabeled; a labeler "
                                f"trains on labels: name a labeled dataset")
                continue
            groups = _groups(info.cls, None if labeler.dataset else spec.dataset, registry)
            unknown = [g for g in labeler.train_groups or [] if groups and g not in groups]
            if unknown:
                problems.append(f"{where(source, lines, loc + ('train_groups',))}: "
                                f"{'.'.join(loc)}.train_groups: unknown groups "
                                f"{', '.join(map(printable, unknown))}; dataset '{name}' has "
                                f"{', '.join(groups)}")
    return problems


def _groups(cls: Any, ref: Any, registry: Registry) -> list[str] | None:
    """The groups (folds, or train/val/test) of a dataset, known without its data."""
    try:
        config = cls.Config.model_validate(ref.options) if ref is not None else None
        dataset = cls(config, root=Path("/nonexistent"))
        sizes = dataset.expected_group_sizes() if hasattr(dataset, "expected_group_sizes") else None
        if sizes:
            return sorted(sizes)
        return list(dataset.folds()) if cls.split_scheme == "kfold" else ["train", "val", "test"]
    except Exception:  # noqa: BLE001 - a dataset that needs its data to know its groups
        return None


def fold_problems(spec: Any, registry: Registry, dataset_config: Any, source: str,
                  lines: dict) -> list[str]:
    """Folds the spec names that the dataset does not have."""
    info = registry.datasets.get(spec.dataset.name)
    if info is None or spec.folds is None:
        return []
    try:
        folds = info.cls(dataset_config, root=Path("/nonexistent")).folds()
    except Exception:  # noqa: BLE001 - a dataset that needs its data to list folds
        return []
    return [f"{where(source, lines, ('folds', i))}: folds: unknown fold '{printable(f)}'"
            f"{did_you_mean(f, folds)}; dataset '{spec.dataset.name}' has {', '.join(folds)}"
            for i, f in enumerate(spec.folds) if f not in folds and SAFE_NAME.match(f)]


def cross_checks(spec: Any, registry: Registry, dataset_config: Any, source: str,
                  lines: dict, problems: list[str]) -> None:
    import segmentation_models_pytorch as smp

    from harness.data.fractions import fraction_count

    def at(*loc: Any) -> str:
        return where(source, lines, loc)

    # An encoder the U-Net cannot build.
    encoders = smp.encoders.get_encoder_names()
    if spec.finetune.encoder not in encoders:
        problems.append(f"{at('finetune', 'encoder')}: finetune.encoder: unknown encoder "
                        f"'{spec.finetune.encoder}'{did_you_mean(spec.finetune.encoder, encoders)}"
                        f"; see segmentation_models_pytorch.encoders.get_encoder_names()")

    # Protocols that a method cannot run.
    for name in spec.methods:
        info = registry.methods[spec.plugin_of(name)]
        if "frozen" in spec.protocols_of(name) and info.cls.kind == "semisupervised":
            own = "protocols" in (spec.methods[name] or {})
            fix = ("give the row 'protocols: [full]'" if "full" in spec.protocols else
                   "add 'full' to the spec's protocols and give the row 'protocols: [full]'")
            problems.append(
                f"{at('methods', name, 'protocols')}: methods.{name}{'.protocols' if own else ''}: "
                f"protocol 'frozen' is not possible for a semi-supervised method (it trains the "
                f"whole U-Net; no separate encoder stage to freeze); {fix} "
                f"(methods: {{{name}: {{protocols: [full]}}}})")

    ds_info = registry.datasets[spec.dataset.name]
    dataset = ds_info.cls(dataset_config, root=Path("/nonexistent"))
    if not ds_info.cls.labeled:
        problems.append(f"{at('dataset')}: dataset: '{spec.dataset.name}' is unlabeled (images for "
                        f"pretraining only) and cannot be the fine-tuning dataset; name it under "
                        f"`unlabeled:` and fine-tune on a labeled dataset")
        return

    # Methods that learn from unlabeled images need some.
    if spec.unlabeled is not None:
        un_info = registry.datasets[spec.unlabeled.name]
        if not un_info.cls.has_unlabeled:
            problems.append(f"{at('unlabeled')}: unlabeled: dataset '{spec.unlabeled.name}' has no "
                            f"unlabeled images")
    elif not ds_info.cls.has_unlabeled:
        for name in spec.methods:
            if registry.methods[spec.plugin_of(name)].cls.kind in ("pretrain", "semisupervised"):
                problems.append(
                    f"{at('methods', name)}: methods.{name}: needs unlabeled images and dataset "
                    f"'{spec.dataset.name}' has none; add e.g. `unlabeled: tcga` to the spec")

    # Metric family.
    family = ds_info.cls.metric_family
    allowed_metrics = ["dice"] if family == "dice" else ["mpq", "bpq"]
    if spec.metric.name not in allowed_metrics:
        problems.append(f"{at('metric', 'name')}: metric.name: '{spec.metric.name}' does not "
                        f"apply to dataset '{spec.dataset.name}' (metric family {family}); "
                        f"allowed: {', '.join(allowed_metrics)}")

    try:
        folds = dataset.folds()
    except Exception:  # noqa: BLE001 - a dataset that needs its data to list folds
        folds = None

    # Fractions that leave too few training images (needs the dataset's expected counts).
    sizes = dataset.expected_group_sizes() if hasattr(dataset, "expected_group_sizes") else None
    if sizes and folds:
        eval_folds = spec.folds or folds
        for frac in spec.fractions:
            for fold in eval_folds:
                train_groups = {g: n for g, n in sizes.items()
                                if (g != fold if ds_info.cls.split_scheme == "kfold" else g == "train")}
                per_group = {g: fraction_count(frac, n) for g, n in train_groups.items()}
                empty = [g for g, n in train_groups.items() if n == 0 or frac * n <= 0]
                if empty:
                    problems.append(f"{at('fractions')}: fractions: {frac} leaves no training "
                                    f"image in {', '.join(empty)}")
                total = sum(per_group.values())
                if total < spec.finetune.batch_size:
                    problems.append(
                        f"{at('fractions')}: fractions: {frac} leaves {total} training images for "
                        f"fold '{fold}', fewer than finetune.batch_size "
                        f"{spec.finetune.batch_size}; raise the fraction or lower the batch size")
                    break

    # Reference table.
    if spec.reference is not None:
        from harness.references import load_thesis_results

        tables = load_thesis_results()
        if spec.reference not in tables:
            problems.append(f"{at('reference')}: reference: unknown table "
                            f"'{spec.reference}'{did_you_mean(spec.reference, tables)}; "
                            f"known: {', '.join(tables)}")
