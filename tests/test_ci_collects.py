"""Every pytest selection `.ci/run` runs after the README's command collects without error.

CI's run of session 9 failed here, not in the default tests: a benchmark imported a test
helper with ``from conftest import ...`` and got the repository root's ``conftest.py`` (helpers
now live in ``tests/support.py``). Collection is cheap, so the default suite checks it.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys

from support import REPO


def _ci_pytest_commands() -> list[list[str]]:
    """The arguments of each ``python -m pytest`` call in `.ci/run` after the README's."""
    text = (REPO / ".ci" / "run").read_text().replace("\\\n", " ")
    commands = []
    for line in text.splitlines():
        match = re.search(r"python -m pytest(?P<args>[^|&>;]*)", line)
        if match and not line.lstrip().startswith("#"):
            commands.append(shlex.split(match["args"]))
    return commands[1:]  # the first is the README's command: this very suite


def test_ci_script_runs_three_more_selections():
    markers = [args[args.index("-m") + 1] for args in _ci_pytest_commands()]
    assert markers == ["slurm", "slow", "benchmark"], markers


def test_each_later_ci_selection_collects_without_error():
    for args in _ci_pytest_commands():
        run = subprocess.run([sys.executable, "-m", "pytest", *args, "--collect-only", "-q"],
                             cwd=REPO, capture_output=True, text=True, timeout=600)
        tail = "\n".join(run.stdout.splitlines()[-15:])
        assert run.returncode == 0, f"pytest {' '.join(args)} --collect-only:\n{tail}{run.stderr[-2000:]}"
        assert "error" not in run.stdout.splitlines()[-1], tail
