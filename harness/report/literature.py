"""The report's literature section: published instance-segmentation figures
(``harness/references/literature.yaml``) beside a run's own instance-variant mPQ/bPQ, with the
protocol differences that remain, and the metric family's aggregation statement."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from harness.report.tables import Table, column_name, fmt

if TYPE_CHECKING:
    from harness.plugins import Registry

#: What differs between a harness run and the published protocols, whatever the spec says.
PROTOCOL_NOTES = (
    "Ours: each test fold scored by a model trained on the other folds' labeled images, last "
    "epoch's weights (no validation fold, no model selection); NP, HV and NC from one shared "
    "decoder (HoVer-Net and CellViT: three decoder branches); HoVer-Net's post-processing "
    "(equal to vqdang/hover_net's on stored maps). The published systems train on one fold and "
    "select a checkpoint on another (CellViT) or follow the PanNuke paper's protocol "
    "(HoVer-Net), with larger encoders and longer schedules.")


def family_of(metric: str | None, registry: Registry) -> Any | None:
    """The registered metric family (an instance) of headline metric ``metric``."""
    if not metric:
        return None
    return registry.family_of_metric(metric)


def _pm(value: Any, std: Any) -> str:
    if value is None:
        return "-"
    return fmt(value) + (f" ± {std:.4f}" if std is not None else "")


def literature_tables(report: dict[str, Any]) -> list[Table]:
    tables = []
    for entry in report.get("literature", []):
        table = Table(f"Published instance PQ on `{entry['dataset']}` beside ours (`instance` "
                      f"variant)", ["system", "mPQ", "bPQ", "encoder", "protocol", "source"], [],
                      name=f"literature_{entry['dataset']}")
        several = len({o["fraction"] for o in entry["ours"]}) > 1
        for o in entry["ours"]:
            table.rows.append([f"ours: {o['method']}, {column_name(o['protocol'], o['fraction'], several)}",
                               _pm(o["mpq"], o.get("mpq_std")), _pm(o["bpq"], o.get("bpq_std")),
                               f"head `{o['head']}`", "folds " + ", ".join(o["folds"]), "this run"])
        for s in entry["systems"]:
            name = s["system"] + ("" if s.get("comparable", True) else " (not instance PQ)")
            table.rows.append([name, _pm(s.get("mpq"), s.get("mpq_std")),
                               _pm(s.get("bpq"), s.get("bpq_std")), s.get("encoder", ""),
                               s.get("protocol", ""), " ".join(str(s.get("source", "")).split())])
        table.notes.append(f"Published aggregation: {' '.join(entry['aggregation'].split())}; "
                           f"ours: per image, mean over tissues, mean over our folds and seeds "
                           f"(± std over them).")
        table.notes.append(PROTOCOL_NOTES)
        tables += [table]
    return tables


def pooled_table(report: dict[str, Any]) -> Table:
    entries = report.get("pooled", [])
    several = len({e["fraction"] for e in entries}) > 1
    table = Table("Pooled mPQ+ (counts pooled over images)", ["method", "column", "variant",
                                                              "mPQ+", "n"], [], name="pooled")
    for e in entries:
        table.rows.append([e["method"], column_name(e["protocol"], e["fraction"], several),
                           f"`{e['variant']}`", _pm(e["mpq_plus"], e["std"]), str(e["n"])])
    if entries:
        table.notes.append(" ".join(entries[0]["definition"].split()) + "; beside the headline "
                           "mPQ, which averages per image.")
    return table
