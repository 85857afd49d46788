"""``--set KEY.PATH=VALUE`` overrides of a spec's document (values parsed as YAML)."""

from __future__ import annotations

import copy
from typing import Any

import yaml

from harness.errors import SpecError


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
            # A YAML alias (`augment: *views`) is one object in several places (deepcopy keeps
            # that): copy the path being written so the --set changes only the key it names.
            nxt = copy.copy(nxt)
            node[int(part) if isinstance(node, list) else part] = nxt
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
