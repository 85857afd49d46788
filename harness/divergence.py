"""A training stage whose loss turned non-finite: one line naming the stage, the method (and its
distribution when it is a third-party plugin), the step and what to try, exit 4 (as ``harness
plugin check`` fails a method whose loss turns non-finite).

The training loop (:mod:`harness.engine.loop`) raises ``FloatingPointError("LABEL: loss is nan at
step N")``, N counted from 1; the executor turns it into :class:`LossNotFinite` here, where the
stage (its kind, label, method and settings) is known. Light: imports no torch.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from harness.errors import PluginError

if TYPE_CHECKING:
    from harness.plan import Stage
    from harness.plugins import Registry

#: the distribution of the harness and its built-in plugins
OWN_DISTRIBUTION = "pathbench-harness"


class LossNotFinite(PluginError):
    """A training stage's loss became NaN or infinite (exit 4, as in ``harness plugin check``)."""


def _step(message: str) -> str:
    found = re.search(r"loss is (\S+) at step (\d+)", message)
    return f"is {found.group(1)} at step {found.group(2)}" if found else "is not finite"


def loss_not_finite(stage: Stage, exc: FloatingPointError, registry: Registry) -> LossNotFinite:
    """The one-line error for ``exc`` raised while computing ``stage``."""
    what = _step(str(exc))
    where = f"{stage.kind} stage '{stage.label}' ({stage.key[:12]})"
    method = (stage.params or {}).get("method") or {}
    name = method.get("plugin")
    if not name:  # fine-tuning and kinds like it: the settings their kind names (lr_setting)
        lr = ((stage.params or {}).get("settings") or {}).get("lr")
        now = f", now {lr:g}" if isinstance(lr, (int, float)) else ""
        kind = registry.stage_kinds.get(stage.kind)
        setting = getattr(kind.cls, "lr_setting", "finetune.lr") if kind is not None else "finetune.lr"
        return LossNotFinite(
            f"{where}: the loss {what} (steps counted from 1): training diverged; lower the "
            f"learning rate ({setting}{now}), e.g. 10x")
    info = registry.methods.get(name)
    lr = (method.get("config") or {}).get("lr")
    now = f", now {lr:g}" if isinstance(lr, (int, float)) else ""
    try_lr = f"lower the method's learning rate (the `lr` of its entry under the spec's " \
             f"methods{now}), e.g. 10x"
    if info is not None and info.distribution != OWN_DISTRIBUTION:
        return LossNotFinite(
            f"{where}: the loss of method plugin '{name}' (from {info.distribution} "
            f"{info.dist_version}) {what} (steps counted from 1): {try_lr}; if it diverges at a "
            f"sane learning rate, guard the plugin's training_step (`harness plugin check {name}` "
            f"runs it on tiny data) or report it to the plugin's authors")
    return LossNotFinite(f"{where}: the loss of method '{name}' {what} (steps counted from 1): "
                         f"training diverged; {try_lr}")
