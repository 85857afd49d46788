"""The provenance section of a report: where the numbers come from.

Collected from the records (each carries the provenance of the process that computed it) and the
runs' ``run.json`` (resolved spec, overrides): harness version and git commit, plugin versions
of the methods and datasets used, packages, Python/platform, device, and every distinct stage
with its key and wall time (cached stages show the time of the run that computed them).
"""

from __future__ import annotations

from typing import Any


def _distinct(values) -> list[Any]:
    return list(dict.fromkeys(v for v in values if v not in (None, "", [], {})))


def collect_provenance(records: list[dict[str, Any]], runs: list[dict[str, Any]]) -> dict[str, Any]:
    provs = [r.get("provenance") or {} for r in records] + [r.get("provenance") or {} for r in runs]
    used_plugins = {f"method:{r.get('plugin') or r['method']}" for r in records} | \
        {f"dataset:{r['dataset']}" for r in records}
    plugins: dict[str, list[str]] = {}
    packages: dict[str, list[str]] = {}
    for p in provs:
        for name, version in (p.get("plugins") or {}).items():
            if name in used_plugins:
                plugins.setdefault(name, [])
                if version not in plugins[name]:
                    plugins[name].append(version)
        for name, version in (p.get("packages") or {}).items():
            packages.setdefault(name, [])
            if version not in packages[name]:
                packages[name].append(version)
    stages: dict[str, dict[str, Any]] = {}
    for r in records:
        for s in r.get("stages") or []:
            entry = stages.setdefault(s["key"], {"kind": s["kind"], "label": s.get("label", ""),
                                                 "key": s["key"], "seconds": s.get("seconds"),
                                                 "cached": bool(s.get("cached")), "cells": 0})
            entry["cells"] += 1
            entry["cached"] = entry["cached"] and bool(s.get("cached"))
    kind_order = {k: i for i, k in enumerate(dict.fromkeys(s["kind"] for s in stages.values()))}
    per_kind: dict[str, float] = {}
    for s in stages.values():
        per_kind[s["kind"]] = per_kind.get(s["kind"], 0.0) + float(s["seconds"] or 0.0)
    return {
        "harness_version": _distinct(p.get("harness_version") for p in provs),
        "git_commit": _distinct(p.get("git_commit") for p in provs),
        "python": _distinct(p.get("python") for p in provs),
        "platform": _distinct(p.get("platform") for p in provs),
        "device": _distinct(p.get("device") for p in provs),
        "plugins": {k: plugins[k] for k in sorted(plugins)},
        "packages": {k: packages[k] for k in sorted(packages)},
        "overrides": _distinct(o for r in records for o in (r.get("overrides") or [])),
        "runs": [{"name": r.get("name"), "source": r.get("source"), "overrides": r.get("overrides") or [],
                  "cells": r.get("cells"), "spec": r.get("spec")} for r in runs],
        "stages": sorted(stages.values(), key=lambda s: (kind_order[s["kind"]], s["label"], s["key"])),
        "seconds_per_kind": per_kind,
        "seconds_total": sum(per_kind.values()),
    }
