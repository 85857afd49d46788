"""Report figures (matplotlib, Agg backend, PNG):

* ``bars.png``: mean ± std of each method, one group per protocol (x label fraction);
* ``fractions.png``: metric vs label fraction, one line per (method, protocol), when a run has
  several fractions;
* ``loss.png``: training loss per epoch of the fine-tuning (and pretraining) stages behind the
  records. The per-epoch curves are read from the stage logs in the artifact store the runs used
  (``train_log.json`` / ``pretrain_log.json`` of the stages the records name); where the store is
  gone, the records' own first/last epoch losses are drawn as a dashed two-point line.

Each function returns the PNG path, or None when there is nothing to draw.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from harness.store import ArtifactStore  # noqa: E402

if TYPE_CHECKING:
    from harness.plugins import Registry


DPI = 110


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI, metadata={"Software": None})
    plt.close(fig)
    return path


def _label(report: dict[str, Any]) -> str:
    return (report.get("metric") or "metric") + (f" ({report['variant']})" if report.get("variant") else "")


def bar_chart(report: dict[str, Any], path: Path) -> Path | None:
    rows = [r for r in report["rows"] if r["mean"] is not None]
    if not rows:
        return None
    groups = list(dict.fromkeys((r["protocol"], r["fraction"]) for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    by_key = {(r["method"], r["protocol"], r["fraction"]): r for r in rows}
    width = 0.8 / len(methods)
    fig, ax = plt.subplots(figsize=(max(4.0, 1.4 * len(groups) * max(1, len(methods)) ** 0.5 + 2), 3.6))
    for i, method in enumerate(methods):
        xs, ys, es = [], [], []
        for g, (protocol, fraction) in enumerate(groups):
            r = by_key.get((method, protocol, fraction))
            if r:
                xs.append(g - 0.4 + width * (i + 0.5))
                ys.append(r["mean"])
                es.append(r["std"] or 0.0)
        ax.bar(xs, ys, width * 0.9, yerr=es, capsize=3, label=method)
    several = len({g[1] for g in groups}) > 1
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([f"{p}\n{f * 100:g}%" if several else p for p, f in groups])
    ax.set_ylabel(_label(report))
    ax.set_title("mean ± std over folds and seeds")
    ax.legend(fontsize=8, ncol=min(4, len(methods)))
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def fraction_chart(report: dict[str, Any], path: Path) -> Path | None:
    rows = [r for r in report["rows"] if r["mean"] is not None]
    if len({r["fraction"] for r in rows}) < 2:
        return None
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for method, protocol in dict.fromkeys((r["method"], r["protocol"]) for r in rows):
        pts = sorted((r["fraction"], r["mean"], r["std"] or 0.0) for r in rows
                     if r["method"] == method and r["protocol"] == protocol)
        ax.errorbar([p[0] * 100 for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts],
                    marker="o", capsize=3, label=f"{method} / {protocol}")
    ax.set_xscale("log")
    ticks = sorted({r["fraction"] * 100 for r in rows})
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("label fraction (%)")
    ax.set_ylabel(_label(report))
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def loss_curves(records: list[dict[str, Any]], store_roots: list[Path],
                registry: Registry) -> list[dict[str, Any]]:
    """One curve per distinct training stage: {kind, label, group, epochs, loss, source}; the
    group (method / protocol, or the method for pretraining) picks the colour."""
    curves: dict[str, dict[str, Any]] = {}
    kinds = registry.stage_kinds
    stores = [ArtifactStore(root) for root in store_roots]
    for r in records:
        for s in r.get("stages") or []:
            # the kind's own ``log_file`` (StageKind: None when it keeps no per-epoch log)
            log_file = getattr(kinds[s["kind"]].cls, "log_file", None) if s["kind"] in kinds else None
            if not log_file or s["key"] in curves:
                continue
            group = r["method"] if s["kind"] == "pretrain" else f"{r['method']} / {r['protocol']}"
            base = {"kind": s["kind"], "label": s.get("label", s["key"]), "group": group}
            history = _read_log([store.stage_file(s["kind"], s["key"], log_file) for store in stores])
            # the record's own summary of the stage: `train` (fine-tuning) or `upstream[kind]`
            summary = (r.get("train") if s["kind"] == "finetune" else
                       (r.get("upstream") or {}).get(s["kind"])) or {}
            if history:
                curves[s["key"]] = {**base, "source": "log",
                                    "epochs": [h.get("epoch", i + 1) for i, h in enumerate(history)],
                                    "loss": [h.get("loss") for h in history]}
            elif summary.get("first_loss") is not None:
                curves[s["key"]] = {**base, "source": "record", "epochs": [1, 2],
                                    "loss": [summary["first_loss"], summary.get("final_loss")]}
    return list(curves.values())


def _read_log(paths: list[Path]) -> list[dict[str, Any]] | None:
    """The first of ``paths`` that holds a non-empty per-epoch log."""
    for path in paths:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, list) and data:
            return data
    return None


def loss_chart(curves: list[dict[str, Any]], path: Path) -> Path | None:
    curves = [c for c in curves if any(v is not None and math.isfinite(v) for v in c["loss"])]
    if not curves:
        return None
    kinds = list(dict.fromkeys(c["kind"] for c in curves))
    colours = {g: f"C{i % 10}" for i, g in enumerate(dict.fromkeys(c["group"] for c in curves))}
    fig, axes = plt.subplots(1, len(kinds), figsize=(5.5 * len(kinds), 3.6), squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        chosen = [c for c in curves if c["kind"] == kind]
        seen: set[str] = set()
        for c in chosen:
            ax.plot(c["epochs"], c["loss"], "--" if c["source"] == "record" else "-",
                    marker="." if len(c["epochs"]) < 30 else None, lw=1, alpha=0.8,
                    color=colours[c["group"]], label=None if c["group"] in seen else c["group"])
            seen.add(c["group"])
        only_ends = all(c["source"] == "record" for c in chosen)
        ax.set_title(f"{kind} loss ({len(chosen)} stages)" + (", first/last epoch only" if only_ends else ""))
        if only_ends:
            ax.set_xticks([1, 2], ["first epoch", "last epoch"])
        else:
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, path)


def make_figures(report: dict[str, Any], records: list[dict[str, Any]], folder: Path,
                 store_roots: list[Path], registry: Registry) -> dict[str, Path]:
    """Every figure that has data, as ``{name: png path}`` (names: bars, fractions, loss)."""
    out = {}
    for name, fn in (("bars", lambda p: bar_chart(report, p)),
                     ("fractions", lambda p: fraction_chart(report, p)),
                     ("loss", lambda p: loss_chart(loss_curves(records, store_roots, registry), p))):
        path = fn(folder / f"{name}.png")
        if path is not None:
            out[name] = path
    return out
