"""Reports built from result records only (so they can be rebuilt and runs merged).

Modules: :mod:`~harness.report.schema` (versioned pydantic models of records and reports,
validated on read), :mod:`~harness.report.stats` (mean/std/CI, paired bootstrap, Wilcoxon, Holm),
:mod:`~harness.report.build` (records -> report), :mod:`~harness.report.provenance`,
:mod:`~harness.report.tables` (tables + Markdown), :mod:`~harness.report.document` (sections),
:mod:`~harness.report.figures` (matplotlib PNGs), :mod:`~harness.report.html` (self-contained
HTML), :mod:`~harness.report.writer` (``write_report``) and :mod:`~harness.report.compare`
(regression gating for ``harness compare``).
"""

from harness.report.schema import load_records, load_report
from harness.report.writer import write_report

__all__ = ["load_records", "load_report", "write_report"]
