"""Console output and progress bars (no torch import, so data commands start fast)."""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)

console = Console(stderr=True, highlight=False)


def is_quiet() -> bool:
    return bool(os.environ.get("CI")) or not sys.stderr.isatty()


@contextmanager
def progress_bar(description: str, total: int, quiet: bool | None = None) -> Iterator[Callable[..., None]]:
    """Yields ``advance(n=1, **fields)``. Quiet (CI, pipes): no bar."""
    quiet = is_quiet() if quiet is None else quiet
    if quiet:
        yield lambda n=1, **kw: None
        return
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                        console=console, transient=True)
    with progress:
        task = progress.add_task(description, total=total, info="")

        def advance(n: int = 1, **fields: Any) -> None:
            info = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                            for k, v in fields.items())
            progress.update(task, advance=n, info=info)

        yield advance
