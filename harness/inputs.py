"""Files that feed a stage (a weights file, any file a plugin reads) enter its key by content.

A plugin marks such a setting with the :data:`InputFile` type (``weights: InputFile | None``).
In a stage key the setting's value is ``{"sha256": ...}`` of the file's bytes, not its path:
rewriting the file changes the key, the same bytes at another path give the same key. The stage
keeps path and hash in its ``info`` (``input_files``), and its kind checks, before it runs,
that the file still has that hash (:func:`check_input_files`), so a file replaced between
planning and running is refused rather than stored under the old key.

Hashing a 100 MB file takes a few tenths of a second, so hashes are cached per store
(``<store>/file-hashes/``), keyed by the file's resolved path and checked against its size,
mtime, ctime, inode and device. An entry is only written when the file's mtime and ctime lie
:data:`SETTLED_S` seconds before the hash began (git's "racily clean" rule): a write in the
same timestamp tick as the hashing could otherwise leave an unchanged stat beside new bytes.
ctime cannot be set back by ``touch``/``os.utime``, so a rewrite always misses the cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel

from harness.errors import DataError

if TYPE_CHECKING:
    from harness.plan import Stage


class _InputFileMarker:
    def __repr__(self) -> str:
        return "InputFile"


_MARKER = _InputFileMarker()

#: A setting that names a file whose content feeds the stage (keyed by its sha256), or a folder
#: (a Hugging Face snapshot), keyed by the relative names and sha256s of the files in it.
InputFile = Annotated[Path, _MARKER]

#: Seconds a file's mtime/ctime must precede its hashing for the hash to be cached.
SETTLED_S = 2.0
_BLOCK = 1 << 20


def _marked(annotation: Any) -> bool:
    if annotation is None:
        return False
    if _MARKER in getattr(annotation, "__metadata__", ()):
        return True
    return any(_marked(a) for a in typing.get_args(annotation))


def input_files(model: BaseModel, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Path]:
    """Field path -> file of every :data:`InputFile` setting of ``model`` that is set
    (nested models included)."""
    out: dict[tuple[str, ...], Path] = {}
    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            out.update(input_files(value, prefix + (name,)))
        elif value is not None and (_marked(field.annotation)
                                    or any(m is _MARKER for m in field.metadata)):
            out[prefix + (name,)] = Path(value).expanduser()
    return out


def _stat_id(st: os.stat_result) -> dict[str, int]:
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns,
            "ino": st.st_ino, "dev": st.st_dev}


def file_sha256(path: Path, cache_dir: Path | None = None) -> str:
    """sha256 of ``path``'s bytes, from the cache when the file's stat is unchanged; of a
    folder: of its files' relative names and hashes (hidden ones, e.g. ``.cache``, skipped)."""
    path = Path(path).expanduser().resolve()
    if path.is_dir():
        return _folder_sha256(path, cache_dir)
    try:
        st = path.stat()
    except OSError as exc:
        raise DataError(f"{path}: cannot read this input file ({exc.strerror})") from None
    entry = None
    if cache_dir is not None:
        entry = Path(cache_dir) / (hashlib.sha256(str(path).encode()).hexdigest()[:32] + ".json")
        try:
            cached = json.loads(entry.read_text())
            if cached.get("path") == str(path) and cached.get("stat") == _stat_id(st):
                return cached["sha256"]
        except (OSError, ValueError, KeyError):
            pass
    started = time.time_ns()
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            while block := fh.read(_BLOCK):
                digest.update(block)
    except OSError as exc:
        raise DataError(f"{path}: cannot read this input file ({exc.strerror})") from None
    value = digest.hexdigest()
    after = path.stat()
    settled = started - int(SETTLED_S * 1e9)
    if (entry is not None and _stat_id(after) == _stat_id(st)
            and st.st_mtime_ns < settled and st.st_ctime_ns < settled):
        from harness.store import atomic_write_json

        try:
            atomic_write_json(entry, {"path": str(path), "stat": _stat_id(st), "sha256": value})
        except OSError:
            pass  # a read-only store: hash again next time
    return value


def _folder_sha256(folder: Path, cache_dir: Path | None) -> str:
    digest = hashlib.sha256()
    for file in sorted(folder.rglob("*")):
        rel = file.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts) or not file.is_file():
            continue
        digest.update(f"{rel.as_posix()}\0{file_sha256(file, cache_dir)}\n".encode())
    return digest.hexdigest()


def keyed_settings(model: BaseModel, dumped: dict[str, Any], cache_dir: Path | None
                   ) -> tuple[dict[str, Any], dict[str, dict[str, str]]]:
    """``dumped`` (``model``'s settings as they enter a key) with every input file's path
    replaced by ``{"sha256": ...}``, and ``{"a.b": {"path", "sha256"}}`` for the stage's info."""
    files = input_files(model)
    if not files:
        return dumped, {}
    keyed = json.loads(json.dumps(dumped))
    info: dict[str, dict[str, str]] = {}
    for path, file in files.items():
        digest = file_sha256(file, cache_dir)
        node = keyed
        for part in path[:-1]:
            node = node[part]
        if path[-1] in node:
            node[path[-1]] = {"sha256": digest}
        info[".".join(path)] = {"path": str(file), "sha256": digest}
    return keyed, info


def check_input_files(stage: Stage, cache_dir: Path | None) -> dict[str, dict[str, str]]:
    """The stage's input files (``info['input_files']``), each checked to still hold the bytes
    its key was computed from; a DataError (exit 3) names a file that changed since planning."""
    files = stage.info.get("input_files") or {}
    for name, entry in files.items():
        now = file_sha256(Path(entry["path"]), cache_dir)
        if now != entry["sha256"]:
            raise DataError(f"{stage.label}: {name}: {entry['path']} changed since the plan was "
                            f"built (sha256 {entry['sha256'][:12]}... -> {now[:12]}...); run again "
                            f"to plan with the new file")
    return files
