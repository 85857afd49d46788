"""``harness data prepare|verify|list``: a dataset's official download into the store's cache,
its checks, and what the store holds. A missing or unreadable ``--source`` and a source with no
samples are data problems (exit 3), each one line naming the source and what to pass."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from harness.cli.common import StoreOpt, out
from harness.cli.common import open_store as _store

data_app = typer.Typer(no_args_is_help=True, help="Prepare, verify and list datasets.")


DataSetOpt = Annotated[Optional[list[str]], typer.Option(
    "--set", help="a dataset option, e.g. --set tile_size=256 (repeatable; as in a spec's dataset:)")]


@data_app.command("prepare")
def data_prepare(name: str, source: Annotated[Optional[Path], typer.Option("--source", readable=False, help="the official download (folder or archive)")] = None,
                 set_: DataSetOpt = None,
                 force: Annotated[bool, typer.Option("--force", help="prepare again even if a cache exists")] = False,
                 store: StoreOpt = None) -> None:
    """Convert a dataset's official download into the local cache (generated datasets need no source)."""
    import json

    dataset = open_dataset(name, store, set_)
    if dataset.is_prepared() and not force:
        info = json.loads((dataset.root / "READY").read_text() or "{}")
        origin = f" from {info['source']}" if isinstance(info, dict) and info.get("source") else ""
        out.print(f"{name}: already prepared in {dataset.root}{origin}; use --force to prepare "
                  f"it again", markup=False)
        return
    if source is None and not dataset.auto_prepare:
        from harness.errors import UsageError

        raise UsageError(f"{name}: --source PATH is required ({dataset.source_hint or 'the official download'})")
    from harness.errors import NoSamples

    if source is not None:
        _check_source(name, Path(source), dataset.source_hint)
    try:
        dataset.prepare(source)
    except NoSamples:
        raise NoSamples(f"{name}: --source {source} holds no samples (0 images found); pass "
                        f"{dataset.source_hint or 'the official download'}") from None
    except PermissionError as exc:  # a file inside the source that this user cannot read
        from harness.errors import DataError

        raise DataError(f"{name}: --source {source}: {exc.filename or 'a file'} cannot be read "
                        f"(permission denied); make the download readable to this user "
                        f"(chmod -R u+rX) or copy it") from None
    out.print(f"{name}: prepared in {dataset.root}", markup=False)


def _check_source(name: str, source: Path, hint: str | None) -> None:
    """A missing and an unreadable ``--source`` are both data problems (exit 3), each named."""
    import os

    from harness.errors import DataError

    what = hint or "the official download"
    try:
        is_dir = source.is_dir()
        exists = is_dir or source.exists()
    except OSError as exc:  # e.g. a folder above it that this user cannot enter
        raise DataError(f"{name}: --source {source}: cannot be read ({exc.strerror or exc}); "
                        f"make it readable to this user (chmod -R u+rX) or copy it") from None
    if not exists:
        raise DataError(f"{name}: --source {source} does not exist; pass {what}")
    if not os.access(source, os.R_OK | (os.X_OK if is_dir else 0)):
        kind = "folder" if is_dir else "file"
        raise DataError(f"{name}: --source {source}: the {kind} cannot be read (permission "
                        f"denied); make it readable to this user (chmod -R u+rX) or copy it")


@data_app.command("verify")
def data_verify(name: str, set_: DataSetOpt = None, store: StoreOpt = None) -> None:
    """Check a prepared dataset: counts, shapes, dtypes, class ids, splits, checksums."""
    from harness.errors import DataError

    dataset = open_dataset(name, store, set_)
    if not dataset.is_prepared():
        from harness.data.base import prepare_command_for

        raise DataError(f"{name}: not prepared; run `{prepare_command_for(dataset)}`")
    problems = dataset.verify()
    if problems:
        raise DataError(f"{name}: {len(problems)} problems: " + "; ".join(problems))
    out.print(f"{name}: ok ({dataset.root})", markup=False)


@data_app.command("list")
def data_list(store: StoreOpt = None) -> None:
    """Every prepared dataset cache in the store (all option sets), and installed datasets that
    have none."""
    import json

    from rich.markup import escape

    from harness.plugins import get_registry

    registry = get_registry()
    prepared = _store(store).prepared_datasets
    table = Table()
    for col in ("dataset", "prepared", "where", "source / options"):
        table.add_column(col, overflow="fold")
    for name in sorted(registry.datasets):
        caches = prepared(name)
        for folder in caches:
            try:
                info = json.loads((folder / "READY").read_text() or "{}")
            except json.JSONDecodeError:
                info = {}
            what = info.get("source") or json.dumps(info.get("config", {}), sort_keys=True) \
                if isinstance(info, dict) else ""
            table.add_row(name, "yes", escape(str(folder)), escape(str(what or "")))
        if not caches:
            table.add_row(name, "no", "", escape(registry.dataset(name).cls.source_hint or ""))
    out.print(table)


def open_dataset(name: str, store: Path | None, options: list[str] | None = None):
    from harness.data.open import dataset_in_store
    from harness.plugins import get_registry
    from harness.spec import apply_overrides

    registry = get_registry()
    registry.dataset(name)  # PluginError (exit 4) before any --set is read
    config = registry.config("dataset", name, apply_overrides({}, options or []), source="--set")
    return dataset_in_store(registry, name, config, _store(store))
