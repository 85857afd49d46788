"""Versioned schemas of result records and reports (pydantic), validated on read.

A *record* (``records/<cell_id>.json``, written by the runner) is one cell's result; a *report*
(``report.json``) is built from records only. Both carry a ``schema`` string ``"<name>/<major>"``:
a reader accepts its own major version and rejects any other with a one-line error. Unknown extra
keys are kept (forward compatible within a major version); missing or mistyped required keys are
errors that name the file and the field.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from harness.errors import DataError

RECORD_SCHEMA = "harness.record/1"
REPORT_SCHEMA = "harness.report/2"
#: Older report versions that :func:`load_report` still reads (their rows have the same keys).
READABLE_REPORTS = ("harness.report/1", REPORT_SCHEMA)


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class MetricValue(_Open):
    name: str
    variant: Optional[str] = None
    value: Optional[float] = None


class StageRef(_Open):
    kind: str
    key: str
    label: str = ""
    cached: bool = False
    seconds: Optional[float] = None


class Record(_Open):
    """One cell's result (see ``harness.runner.Runner._record``)."""

    schema_: str = Field(alias="schema")
    run: str
    cell_id: str
    method: str
    plugin: Optional[str] = None
    protocol: str
    fraction: float
    fold: str
    seed: int
    dataset: str
    reference: Optional[str] = None
    metric: MetricValue
    metrics: dict[str, Any]
    split: dict[str, Any] = Field(default_factory=dict)
    train: dict[str, Any] = Field(default_factory=dict)
    upstream: dict[str, Any] = Field(default_factory=dict)
    # stage kinds' record facts (``StageKind.record_facts``, e.g. a plugin's ``labeler``) are
    # further top-level fields, kept as they are
    #: The evaluate stage's summary (test images, classes predicted); empty in old records.
    evaluation: dict[str, Any] = Field(default_factory=dict)
    stages: list[StageRef] = Field(default_factory=list)
    overrides: list[str] = Field(default_factory=list)
    provenance: dict[str, Any] = Field(default_factory=dict)
    created_at: Optional[float] = None

    @field_validator("schema_")
    @classmethod
    def _major(cls, value: str) -> str:
        if value != RECORD_SCHEMA:
            raise ValueError(f"unsupported record schema '{value}' (this harness reads {RECORD_SCHEMA})")
        return value


class Row(_Open):
    """One (method, protocol, fraction) cell of the main table."""

    method: str
    protocol: str
    fraction: float
    metric: str
    variant: Optional[str] = None
    mean: Optional[float] = None
    std: Optional[float] = None
    ci_low: Optional[float] = None
    ci_high: Optional[float] = None
    n: int = 0
    folds: list[str] = Field(default_factory=list)
    seeds: list[int] = Field(default_factory=list)
    best: bool = False
    paper: Optional[float] = None
    diff: Optional[float] = None


class Comparison(_Open):
    """A method against the baseline row on identical (fold, seed) pairs of one column."""

    method: str
    baseline: str
    protocol: str
    fraction: float
    n_pairs: int
    mean_diff: Optional[float] = None
    diff_ci: Optional[list[float]] = None  # paired bootstrap percentile interval (descriptive)
    diff_t_ci: Optional[list[float]] = None  # paired t-interval of the mean difference
    p_signflip: Optional[float] = None  # paired permutation test: marks the table (after Holm)
    signflip: Optional[str] = None  # "exact" (all 2^n sign patterns) or "monte carlo"
    p_signflip_holm: Optional[float] = None
    p_min: Optional[float] = None  # smallest p attainable with n_pairs pairs: 2 / 2^n
    p_bootstrap: Optional[float] = None
    p_wilcoxon: Optional[float] = None
    p_bootstrap_holm: Optional[float] = None
    p_wilcoxon_holm: Optional[float] = None
    significant: bool = False


class Report(_Open):
    schema_: str = Field(alias="schema", default=REPORT_SCHEMA)
    run: Optional[str] = None
    runs: list[str] = Field(default_factory=list)
    metric: Optional[str] = None
    variant: Optional[str] = None
    rows: list[Row]
    baseline: Optional[str] = None
    comparisons: list[Comparison] = Field(default_factory=list)
    #: What the pairs allow (``harness.report.build.power_note``); None without comparisons.
    power: Optional[dict[str, Any]] = None
    paper: list[dict[str, Any]] = Field(default_factory=list)
    breakdown: dict[str, Any] = Field(default_factory=dict)
    # stage kinds' report sections (``StageKind.report_section``, e.g. a plugin's
    # ``labelers``) are further fields, by their key
    encoders: list[dict[str, Any]] = Field(default_factory=list)
    #: Rows whose model predicts a single class on every test image, and the warnings about them.
    single_class: list[dict[str, Any]] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)
    provenance: dict[str, Any] = Field(default_factory=dict)

    @field_validator("schema_")
    @classmethod
    def _readable(cls, value: str) -> str:
        if value not in READABLE_REPORTS:
            raise ValueError(f"unsupported report schema '{value}' (readable: {', '.join(READABLE_REPORTS)})")
        return value

    def dump(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, mode="json")


def _problems(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}"
                     for e in exc.errors()[:5])


def validate_record(data: Any, source: str = "<record>") -> dict[str, Any]:
    """The record as a plain dict after validation; a DataError naming ``source`` otherwise."""
    try:
        return Record.model_validate(data).model_dump(by_alias=True, mode="json")
    except ValidationError as exc:
        raise DataError(f"{source}: not a valid result record ({_problems(exc)})") from None


def load_records(run_dirs: Iterable[Path]) -> list[dict[str, Any]]:
    """Every ``records/*.json`` of the given run folders, validated (runs are merged)."""
    records = []
    for run_dir in run_dirs:
        for path in sorted((Path(run_dir) / "records").glob("*.json")):
            try:
                data = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                raise DataError(f"{path}: cannot be read ({exc})") from None
            records.append(validate_record(data, str(path)))
    return records


def load_report(path: Path) -> Report:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: cannot be read ({exc})") from None
    try:
        return Report.model_validate(data)
    except ValidationError as exc:
        raise DataError(f"{path}: not a valid report ({_problems(exc)})") from None
