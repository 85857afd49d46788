"""Specs: pydantic models (``extra="forbid"``), YAML loading, ``--set`` overrides and validation.

Validation reports every problem at once, each as ``file:line: field.path: what is wrong (got X;
allowed: ...; did you mean ...?)``. Structural problems come from pydantic; cross-field problems
(unknown plugins, a ``frozen`` protocol for a method without an encoder stage, folds the dataset
does not have, a batch larger than the training set a fraction leaves...) are checked against the
installed plugins, without touching data or starting any work.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from harness.errors import PluginError, SpecError
from harness.plugins import Registry, did_you_mean
from harness.protocols import check_protocol_name
from harness.spec_checks import (cross_checks, duplicate_keys, fold_problems, labeler_problems,
                                 lenient, mark_overrides, name_problems, number_problems, too_deep)
from harness.spec_checks import where as _where

#: A protocol name: any installed protocol plugin (harness.protocols).
Protocol = Annotated[str, AfterValidator(check_protocol_name)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # inf/nan: typos, never settings


class FinetuneSettings(_Strict):
    """Fine-tuning recipe shared by all methods (thesis §4.1.3 and A.1 defaults)."""

    architecture: Literal["unet"] = Field("unet", description="segmentation model (smp)")
    encoder: str = Field("resnet18", description="any segmentation-models-pytorch encoder name")
    epochs: int = Field(100, ge=1, le=100_000)
    batch_size: int = Field(16, ge=1, le=65_536)
    lr: float = Field(1e-3, gt=0, le=10)
    weight_decay: float = Field(0.0, ge=0)
    image_size: int | None = Field(
        None, ge=32, le=8192, description="training crop size (random crop); None = full image. "
        "Evaluation always uses full images.")
    augment: bool = Field(True, description="thesis A.1 augmentations (flips, rot90, blur, noise)")
    frozen_bn: Literal["adapt", "fixed"] = Field(
        "adapt", description="frozen protocol: encoder batch-norm statistics keep adapting "
        "('adapt', what the thesis's code did) or stay fixed ('fixed')")
    normalization: Literal["encoder", "thesis_quirk"] = Field(
        "encoder", description="'encoder': the normalisation recorded with the encoder weights; "
        "'thesis_quirk': inputs scaled to [-1/255, 1/255] as the thesis's fine-tuning code did")
    eval_batch_size: int = Field(32, ge=1, le=65_536)
    num_workers: int = Field(0, ge=0, le=256)
    device: str = Field("auto", description="'auto', 'cpu', 'cuda' or 'cuda:N'")
    amp: bool = Field(True, description="mixed precision on CUDA (bf16 where supported, else fp16)")
    channels_last: bool = Field(True, description="channels_last memory format on CUDA")

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
            raise ValueError(f"must be a multiple of 32 (U-Net downsamples 5 times); "
                             f"try {max(32, round(v / 32) * 32)}")
        return v


class RowSettings(BaseModel):
    """The harness's own keys of a ``methods:`` row, split off before the method plugin's
    ``Config`` validates the rest. They say how a row is run, not what a cell computes, so they
    are part of no stage key."""

    model_config = ConfigDict(extra="ignore")  # the rest belongs to the plugin's Config
    method: str | None = Field(None, description="plugin behind the row (default: the row name)")
    protocols: list[Protocol] | None = Field(
        None, min_length=1, description="a subset of the spec's protocols for this row only "
        "(e.g. [full] for a semi-supervised method in a spec with [frozen, full])")

    @field_validator("protocols")
    @classmethod
    def _unique(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and len(set(v)) != len(v):
            raise ValueError(f"duplicate entries: {', '.join(sorted({p for p in v if v.count(p) > 1}))}")
        return v


#: Row-level keys of ``methods:`` entries (see :class:`RowSettings`).
ROW_KEYS = tuple(RowSettings.model_fields)


class MetricSettings(_Strict):
    name: Literal["mpq", "bpq", "dice"] = Field("mpq", description="headline metric of the report")
    pq_variant: Literal["instance", "thesis"] = Field(
        "instance", description="'instance': PanNuke protocol with connected components; "
        "'thesis': each class of an image scored as one segment, as the thesis's code did")


class DatasetRef(BaseModel):
    """``dataset: NAME`` or ``dataset: {name: NAME, <the dataset's own options>}``."""

    model_config = ConfigDict(extra="allow")
    name: str

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
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)  # range: spec_checks
    finetune: FinetuneSettings = Field(default_factory=FinetuneSettings)
    metric: MetricSettings = Field(default_factory=MetricSettings)
    unlabeled: DatasetRef | None = Field(
        None, description="unlabeled images for pretraining and semi-supervised methods "
        "(e.g. tcga); default: the fine-tuning dataset's own unlabeled set, if it has one")
    output: str = Field("reports/{name}", description="run folder; {name} is the spec name")

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
        data = self.spec.model_dump(mode="json")
        data["methods"] = {m: {"method": self.spec.plugin_of(m), **self._row_protocols(m),
                               **c.model_dump(mode="json")}
                           for m, c in self.method_configs.items()}
        data["dataset"] = {"name": self.spec.dataset.name,
                           **self.dataset_config.model_dump(mode="json")}
        if self.spec.unlabeled is not None:
            data["unlabeled"] = {"name": self.spec.unlabeled.name,
                                 **self.unlabeled_config.model_dump(mode="json")}
        return data

    def _row_protocols(self, label: str) -> dict[str, Any]:
        """A row's own ``protocols`` (only where the spec gives one, so that the resolved spec
        of every other row stays as it was)."""
        own = (self.spec.methods.get(label) or {}).get("protocols")
        return {} if own is None else {"protocols": self.spec.protocols_of(label)}


# --- YAML with line numbers ---------------------------------------------------------------

def _line_index(text: str) -> dict[tuple, int]:
    """Map each key path of a YAML document to its 1-based line."""
    index: dict[tuple, int] = {}
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return index

    def walk(node: Any, path: tuple) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                p = path + (key.value,)
                index[p] = key.start_mark.line + 1
                walk(value, p)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                p = path + (i,)
                index[p] = item.start_mark.line + 1
                walk(item, p)

    if root is not None:
        walk(root, ())
    return index


def _read_yaml(path: Path) -> tuple[Any, dict[tuple, int], list[str]]:
    """The document, its key lines, and its duplicate keys (as problems)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise SpecError(f"spec file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        why = "not UTF-8 text" if isinstance(exc, UnicodeDecodeError) else exc.strerror
        raise SpecError(f"{path}: cannot be read as a spec ({why}); give a YAML file") from None
    try:
        data = yaml.safe_load(text)
        if too_deep(data):
            raise RecursionError(path)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SpecError(f"{where}: not valid YAML: {problem}") from None
    except RecursionError:
        raise SpecError(f"{path}: nested too deeply, too large, or an alias refers to itself; a "
                        f"spec is a few levels of mappings") from None
    if not isinstance(data, dict):
        raise SpecError(f"{path}: a spec is a YAML mapping (name:, dataset:, methods:, ...), "
                        f"got {type(data).__name__}")
    return data, _line_index(text), duplicate_keys(text, str(path))


# --- overrides ----------------------------------------------------------------------------

def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``--set finetune.epochs=2`` style overrides; values are parsed as YAML."""
    data = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise SpecError(f"--set {item!r}: expected KEY.PATH=VALUE, e.g. finetune.epochs=2")
        key, raw = item.split("=", 1)
        parts = [p for p in key.strip().split(".") if p]
        if not parts:
            raise SpecError(f"--set {item!r}: empty key path; name the value to set, e.g. --set finetune.epochs=2")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        # Short forms (`dataset: NAME`, `methods: [a, b]`) become their mapping form so that
        # `--set dataset.image_size=64` or `--set methods.supervised.weights=PATH` reach into them.
        if len(parts) > 1 and parts[0] == "dataset" and isinstance(data.get("dataset"), str):
            data["dataset"] = {"name": data["dataset"]}
        if (len(parts) > 1 and parts[0] == "methods" and not parts[1].isdigit()
                and isinstance(data.get("methods"), list)
                and all(isinstance(m, str) for m in data["methods"])):
            data["methods"] = {m: None for m in data["methods"]}
        node: Any = data
        for i, part in enumerate(parts[:-1]):
            here = ".".join(parts[:i + 1])
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise SpecError(f"--set {item!r}: '{here}': no such list index (the list has "
                                    f"{len(node)} entries); use 0..{len(node) - 1}")
                nxt = node[int(part)]
            else:
                nxt = node.get(part)
                if nxt is None:
                    nxt = node[part] = {}
            if not isinstance(nxt, (dict, list)):
                raise SpecError(f"--set {item!r}: '{here}' is not a mapping (it holds {nxt!r}); "
                                f"set it whole, e.g. --set {here}=VALUE")
            node = nxt
        last = parts[-1]
        if isinstance(node, list):
            if not last.isdigit() or int(last) >= len(node):
                raise SpecError(f"--set {item!r}: index {last} out of range (the list has "
                                f"{len(node)} entries); use 0..{len(node) - 1}")
            node[int(last)] = value
        else:
            node[last] = value
    return data


# --- error formatting ---------------------------------------------------------------------

def _fmt_value(v: Any) -> str:
    s = repr(v)
    return s if len(s) <= 60 else s[:57] + "..."


def _model_at(model: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """The pydantic model that owns the last element of ``loc`` (for did-you-mean on keys)."""
    current: Any = model
    for part in loc[:-1]:
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        f = current.model_fields.get(part)
        if f is None:
            return None
        ann = f.annotation
        current = next((a for a in getattr(ann, "__args__", (ann,))
                        if isinstance(a, type) and issubclass(a, BaseModel)), ann)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def format_errors(exc: ValidationError, model: type[BaseModel], source: str,
                  lines: dict[tuple, int], prefix: tuple = ()) -> list[str]:
    problems = []
    for err in exc.errors():
        loc = tuple(x for x in err["loc"] if not (isinstance(x, str) and x.startswith("function-")))
        full = prefix + loc
        path = ".".join(str(x) for x in full) or "(top level)"
        where = _where(source, lines, full)
        etype = err["type"]
        if etype == "extra_forbidden":
            owner = _model_at(model, loc)
            allowed = sorted(owner.model_fields) if owner else []
            hint = did_you_mean(str(loc[-1]), allowed)
            problems.append(f"{where}: {path}: unknown key{hint}; allowed keys: "
                            f"{', '.join(allowed) or '(none: it takes no settings)'}")
            continue
        msg = err["msg"].removeprefix("Value error, ")
        got = f" (got {_fmt_value(err.get('input'))})" if etype != "missing" else ""
        hint = ""
        if etype == "literal_error":
            expected = err.get("ctx", {}).get("expected", "")
            options = [o.strip().strip("'") for o in expected.replace(" or ", ",").split(",")]
            hint = did_you_mean(str(err.get("input")), [o for o in options if o])
        if etype == "missing":
            msg = "required field is missing"
        problems.append(f"{where}: {path}: {msg}{got}{hint}")
    return problems


# --- loading and validation ---------------------------------------------------------------

def _plugin_problem(where: str, path: str, name: str, category: str, registry: Registry,
                    plugin_missing: list[str]) -> str | None:
    table = registry.methods if category == "method" else registry.datasets
    if name in table:
        return None
    if any(b.entry_point == name for b in registry.broken):  # installed but failed to load
        plugin_missing.append(f"{where}: {path}: {registry.missing_message(name, category)}")
        return None
    hint = did_you_mean(name, table)
    if hint:
        return f"{where}: {path}: unknown {category} '{name}'{hint}"
    plugin_missing.append(f"{where}: {path}: {registry.missing_message(name, category)}")
    return None


def load_spec(path: str | Path, overrides: list[str] | None = None,
              registry: Registry | None = None) -> ResolvedSpec:
    """Read, override and validate a spec. Raises :class:`SpecError` (exit 2) listing every
    problem, or :class:`PluginError` (exit 4) when the only problem is a plugin that is not
    installed."""
    from harness.plugins import get_registry

    path = Path(path)
    overrides = list(overrides or [])
    source = str(path)
    data, lines, problems = _read_yaml(path)
    data = apply_overrides(data, overrides)
    mark_overrides(lines, overrides)
    registry = registry or get_registry()
    registry.raise_duplicates()

    plugin_missing: list[str] = []
    problems.extend(name_problems(data, source, lines))
    try:
        spec = Spec.model_validate(data)
    except ValidationError as exc:
        problems.extend(format_errors(exc, Spec, source, lines))
        spec = lenient(Spec, data, exc)  # the other fields' checks still run

    # Plugin names can be checked even when other fields are broken.
    for field in ("dataset", "unlabeled"):
        raw = data.get(field)
        ds_name = raw.get("name") if isinstance(raw, dict) else raw
        if isinstance(ds_name, str):
            p = _plugin_problem(_where(source, lines, (field,)), field, ds_name, "dataset",
                                registry, plugin_missing)
            if p:
                problems.append(p)
    raw_methods = data.get("methods")
    method_names = list(raw_methods) if isinstance(raw_methods, (list, dict)) else []
    for i, m in enumerate(method_names):
        if not isinstance(m, str):
            continue
        loc = ("methods", m) if isinstance(raw_methods, dict) else ("methods", i)
        plugin, path = m, f"methods.{m}"
        settings = raw_methods.get(m) if isinstance(raw_methods, dict) else None
        if isinstance(settings, dict) and isinstance(settings.get("method"), str):
            plugin, path, loc = settings["method"], f"methods.{m}.method", loc + ("method",)
        p = _plugin_problem(_where(source, lines, loc), path, plugin, "method", registry,
                            plugin_missing)
        if p:
            problems.append(p)

    method_configs: dict[str, Any] = {}
    dataset_config = unlabeled_config = None
    if spec is not None and not plugin_missing:
        dataset_config, unlabeled_config, method_configs = _settings_checks(
            spec, registry, source, lines, problems)

    if problems:
        raise SpecError(problems + plugin_missing, source=None)
    if plugin_missing:
        raise PluginError(plugin_missing[0] if len(plugin_missing) == 1
                          else "; ".join(plugin_missing))
    assert spec is not None
    return ResolvedSpec(spec=spec, source=source, overrides=overrides,
                        method_configs=method_configs, dataset_config=dataset_config,
                        unlabeled_config=unlabeled_config)


def _settings_checks(spec: Spec, registry: Registry, source: str, lines: dict,
                     problems: list[str]) -> tuple[Any, Any, dict[str, Any]]:
    """Each plugin's own settings, folds, labelers and number ranges (even when other fields
    are broken), then the cross-field checks (only when nothing else is)."""
    dataset_config = _check_dataset(spec.dataset, "dataset", registry, source, lines, problems)
    unlabeled_config = (_check_dataset(spec.unlabeled, "unlabeled", registry, source, lines, problems)
                        if spec.unlabeled is not None else None)
    method_configs = _check_methods(spec, registry, source, lines, problems)
    if dataset_config is not None:
        problems.extend(fold_problems(spec, registry, dataset_config, source, lines))
    problems.extend(labeler_problems(spec, method_configs, registry, source, lines))
    problems.extend(number_problems({(): spec, ("dataset",): dataset_config, ("unlabeled",): unlabeled_config,
                                     **{("methods", m): c for m, c in method_configs.items()}}, source, lines))
    if not problems:
        cross_checks(spec, registry, dataset_config, source, lines, problems)
    return dataset_config, unlabeled_config, method_configs


def _check_dataset(ref: DatasetRef, field: str, registry: Registry, source: str, lines: dict,
                   problems: list[str]):
    info = registry.datasets.get(ref.name)
    if info is None:
        return None
    try:
        return info.cls.Config.model_validate(ref.options)
    except ValidationError as exc:
        problems.extend(format_errors(exc, info.cls.Config, source, lines, prefix=(field,)))
        return None


def _check_methods(spec: Spec, registry: Registry, source: str, lines: dict,
                   problems: list[str]) -> dict[str, Any]:
    configs = {}
    for name, settings in spec.methods.items():
        if not _check_row(spec, name, settings or {}, source, lines, problems):
            continue
        info = registry.methods.get(spec.plugin_of(name))
        if info is None:
            continue
        settings = {k: v for k, v in (settings or {}).items() if k not in ROW_KEYS}
        try:
            configs[name] = info.cls.Config.model_validate(settings)
        except ValidationError as exc:
            problems.extend(format_errors(exc, info.cls.Config, source, lines,
                                          prefix=("methods", name)))
    return configs


def _check_row(spec: Spec, name: str, settings: dict[str, Any], source: str, lines: dict,
               problems: list[str]) -> bool:
    """The row-level keys of ``methods.<name>``; False (with problems added) if they are bad."""
    try:
        row = RowSettings.model_validate(settings)
    except ValidationError as exc:
        problems.extend(format_errors(exc, RowSettings, source, lines, prefix=("methods", name)))
        return False
    extra = [p for p in row.protocols or [] if p not in spec.protocols]
    if extra:
        problems.append(
            f"{_where(source, lines, ('methods', name, 'protocols'))}: methods.{name}.protocols: "
            f"{', '.join(repr(p) for p in extra)} not among the spec's protocols "
            f"({', '.join(spec.protocols)}) (got {row.protocols}); a row can only narrow the "
            f"spec's protocols: drop {'it' if len(extra) == 1 else 'them'} here or add "
            f"{'it' if len(extra) == 1 else 'them'} to the top-level `protocols:`")
        return False
    return True
