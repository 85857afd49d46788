"""Pretraining run to its end, or interrupted part-way and resumed: what resume tests compare."""

from __future__ import annotations

from typing import Any

import pytest
import torch


def pretrain_result(runner: Any, monkeypatch: Any, method_cls: type, interrupt_at: int | None = None,
                    check_checkpoint: Any = None) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The pretrain stage's summary and encoder weights after ``runner.run``; with
    ``interrupt_at``, the run is first interrupted (KeyboardInterrupt) in the method's
    ``interrupt_at``-th training step, ``check_checkpoint(saved)`` sees the checkpoint it left,
    and a second run resumes from it."""
    plan = runner.plan()[0]
    stage = next(s for s in plan.stages() if s.kind == "pretrain")
    if interrupt_at is None:
        runner.run(plan)
    else:
        real_step, calls = method_cls.training_step, {"n": 0}

        def step(self, *args, **kwargs):
            calls["n"] += 1
            if calls["n"] == interrupt_at:
                raise KeyboardInterrupt
            return real_step(self, *args, **kwargs)

        with monkeypatch.context() as m:
            m.setattr(method_cls, "training_step", step)
            with pytest.raises(KeyboardInterrupt):
                runner.run(plan)
        saved = torch.load(runner.store.work_dir("pretrain", stage.key) / "checkpoint.pt",
                           weights_only=True)
        if check_checkpoint is not None:
            check_checkpoint(saved)
        runner.run(runner.plan()[0])
    meta = runner.store.meta("pretrain", stage.key)
    return meta["result"], torch.load(runner.store.stage_dir("pretrain", stage.key) / "encoder.pt")


def resumed_and_fresh(make_runner: Any, tmp_path: Any, monkeypatch: Any, method_cls: type,
                      interrupt_at: int, check_checkpoint: Any = None) -> list[tuple[Any, Any]]:
    """:func:`pretrain_result` of a run interrupted at ``interrupt_at`` and resumed (a runner
    from ``make_runner(tmp_path / "a")``), then of an uninterrupted one (``tmp_path / "b"``)."""
    results = []
    for name, at in (("a", interrupt_at), ("b", None)):
        (tmp_path / name).mkdir()
        results.append(pretrain_result(make_runner(tmp_path / name), monkeypatch, method_cls, at,
                                       check_checkpoint))
    return results
