"""Helpers of the hostile-input corpus: the CLI in process (torch is imported once, so dozens
of cases fit in seconds), payload files, and file-system listings around a run."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.strip()]


def cli(capsys, *args: str) -> Result:
    """``harness ARGS`` through :func:`harness.cli.app.main` in this process."""
    from harness.cli import app as cli_module

    capsys.readouterr()
    old = sys.argv
    sys.argv = ["harness", *args]
    try:
        with pytest.raises(SystemExit) as exit_info:
            cli_module.main()
    finally:
        sys.argv = old
    captured = capsys.readouterr()
    code = exit_info.value.code
    return Result(code if isinstance(code, int) else (0 if code is None else 1),
                  captured.out, captured.err)


def wide_console(monkeypatch, columns: int = 2000) -> None:
    """Rich wraps log lines at the console's width, read from ``COLUMNS`` at each line unless
    the console was created while ``COLUMNS`` was set (then fixed at that value: whichever
    test of this process imported it first decides, so it differs under pytest-xdist)."""
    from harness.console import console

    monkeypatch.setenv("COLUMNS", str(columns))
    monkeypatch.setattr(console, "_width", None)


def assert_one_line_error(result: Result, code: int, *needles: str) -> str:
    """Exactly one ``error:`` line (progress logs of a run may come before it), no traceback,
    the documented exit code, and each needle (file, field, option, fix) in the line."""
    assert result.code == code, (result.code, result.err)
    assert "Traceback" not in result.err and "error: unexpected" not in result.err, result.err
    errors = [line for line in result.lines if line.startswith("error:")]
    assert len(errors) == 1 and result.lines[-1] == errors[0], result.err
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    return errors[0]


class Payload:
    """A pickle whose unpickling creates ``marker``: proof that code from a file ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def plant_payload(path: Path, marker: Path) -> Path:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state": Payload(marker), "epoch": 1}, path)
    return path


def listing(root: Path) -> set[str]:
    """Every path under ``root`` (files, folders, links), relative to it."""
    return {str(p.relative_to(root)) for p in Path(root).rglob("*")}
