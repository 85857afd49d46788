"""What the CLI's command modules share: consoles, the ``--set``/``--store`` options and
opening the artifact store."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)
DEBUG = False  # `--debug` anywhere on the command line (set by harness.cli.main)

SetOpt = Annotated[Optional[list[str]], typer.Option(
    "--set", help="override a spec value, e.g. --set finetune.epochs=2 (repeatable)")]
StoreOpt = Annotated[Optional[Path], typer.Option(
    "--store", help="artifact store folder (default: $HARNESS_STORE or the user cache dir)")]


def open_store(path: Path | None):
    from harness.errors import UsageError
    from harness.store import STORE_ENV, ArtifactStore

    store = ArtifactStore(path)
    if store.root.exists() and not store.root.is_dir():
        origin = f"--store {path}" if path else f"${STORE_ENV}={store.root}"
        raise UsageError(f"{origin}: is a file, not a folder; point it at a folder (it is "
                         f"created if missing)")
    return store
