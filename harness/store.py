"""Content-addressed artifact store.

Every stage output lives under ``<root>/stages/<kind>/<key>/`` where ``key`` hashes the stage's
resolved config, its upstream keys and the plugin's version. A stage is written into a temporary
folder and renamed into place only when complete, so nothing half-written is ever read as
finished. Training stages checkpoint into ``<root>/work/<kind>/<key>/`` and resume from there
after a crash; the work folder is removed once the stage is committed. While a worker computes
a stage it holds a claim on it (``<root>/claims/<kind>/<key>.json``, :mod:`harness.claims`), so
that workers sharing the store compute each stage once; correctness never depends on the claim.

Only this module knows the layout: other code asks the store for a stage's folder
(:meth:`ArtifactStore.stage_dir`) or one of its files (:meth:`ArtifactStore.stage_file`, e.g. the
per-epoch log its kind declares as ``log_file``), the published stages of a kind
(:meth:`ArtifactStore.stages_of`) and a published stage's meta (:func:`stage_meta`).

Location: ``--store PATH`` on the command line, else ``$HARNESS_STORE``, else the user's cache
directory (``~/.cache/harness/store`` on Linux).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import platformdirs

STORE_ENV = "HARNESS_STORE"

#: A published stage's own record, written last into its folder (:meth:`ArtifactStore.commit`).
META_FILE = "meta.json"


def default_store_root() -> Path:
    env = os.environ.get(STORE_ENV)
    if env:
        return Path(env).expanduser()
    return Path(platformdirs.user_cache_dir("harness")) / "store"


def canonical_json(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)


def hash_key(data: Any, length: int = 24) -> str:
    return hashlib.sha256(canonical_json(data).encode()).hexdigest()[:length]


def atomic_write_text(path: Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; results are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def json_safe(data: Any) -> Any:
    """NaN/inf become null so that the files are strict JSON (browsers, jq, other languages)."""
    import math

    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {str(k): json_safe(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [json_safe(v) for v in data]
    try:
        import numpy as np

        if isinstance(data, np.generic):
            return json_safe(data.item())
        if isinstance(data, np.ndarray):
            return json_safe(data.tolist())
    except ImportError:  # pragma: no cover
        pass
    if isinstance(data, Path):
        return str(data)
    return data


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(json_safe(data), indent=2, sort_keys=True,
                                       allow_nan=False) + "\n")


def atomic_torch_save(obj: Any, path: Path) -> None:
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def stage_meta(folder: Path) -> dict[str, Any]:
    """The meta (kind, key, result, seconds, provenance...) of the published stage in ``folder``
    (a stage's input folder, :meth:`ArtifactStore.stage_dir`)."""
    return json.loads((Path(folder) / META_FILE).read_text())


def stage_of_folder(folder: Path) -> tuple[str, str] | None:
    """``(kind, key)`` when ``folder`` is laid out as a stage folder of a store, else None."""
    folder = Path(folder)
    return (folder.parent.name, folder.name) if folder.parent.parent.name == "stages" else None


class ArtifactStore:
    def __init__(self, root: Path | str | None = None):
        self.root = Path(root).expanduser() if root else default_store_root()

    # --- locations ---------------------------------------------------------------------------
    def stage_dir(self, kind: str, key: str) -> Path:
        return self.root / "stages" / kind / key

    def stage_file(self, kind: str, key: str, name: str) -> Path:
        """A file of a stage's artifact (e.g. its kind's ``log_file``)."""
        return self.stage_dir(kind, key) / name

    def work_dir(self, kind: str, key: str) -> Path:
        return self.root / "work" / kind / key

    def claim_path(self, kind: str, key: str) -> Path:
        return self.root / "claims" / kind / f"{key}.json"

    def claim(self, kind: str, key: str, label: str = ""):
        """Context manager: hold the claim on a stage while computing it; yields None when
        another worker published it meanwhile (reuse it). See :mod:`harness.claims`."""
        from harness.claims import claimed

        return claimed(self.claim_path(kind, key), lambda: self.is_done(kind, key), label)

    def dataset_dir(self, name: str, fingerprint: Any) -> Path:
        return self.root / "datasets" / name / hash_key(fingerprint, 16)

    def prepared_datasets(self, name: str) -> list[Path]:
        """The folders of dataset ``name`` prepared in this store (each holds its ``READY``)."""
        return sorted(p.parent for p in (self.root / "datasets" / name).glob("*/READY"))

    def calibration_file(self, kind: str, key: str, device: str) -> Path:
        """Where a stage's measured cost on ``device`` is kept (``harness.execute.calibrate``)."""
        return self.root / "calibration" / kind / key / f"{hash_key(device, 12)}.json"

    # --- state -------------------------------------------------------------------------------
    def is_done(self, kind: str, key: str) -> bool:
        return (self.stage_dir(kind, key) / META_FILE).exists()

    def stages_of(self, kind: str) -> list[str]:
        """Keys of the published stages of ``kind``, sorted."""
        return sorted(p.parent.name for p in (self.root / "stages" / kind).glob(f"*/{META_FILE}"))

    def stages_holding(self, name: str) -> list[tuple[str, str]]:
        """``(kind, key)`` of every stage folder holding a file ``name``, sorted."""
        return sorted((p.parent.parent.name, p.parent.name)
                      for p in (self.root / "stages").glob(f"*/*/{name}"))

    def has_checkpoint(self, kind: str, key: str) -> bool:
        return any(self.work_dir(kind, key).glob("*.pt"))

    def meta(self, kind: str, key: str) -> dict[str, Any]:
        return stage_meta(self.stage_dir(kind, key))

    # --- writing -----------------------------------------------------------------------------
    def new_tmp(self, kind: str, key: str) -> Path:
        return self.scratch_dir(f"{kind}-{key}-")

    def scratch_dir(self, prefix: str) -> Path:
        """A new empty folder under the store's ``tmp/`` (on the store's file system, so that
        a finished one can be renamed into place)."""
        base = self.root / "tmp"
        base.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=prefix, dir=base))

    def commit(self, kind: str, key: str, tmp: Path, meta: dict[str, Any]) -> Path:
        """Write ``meta.json`` last and rename ``tmp`` into place; drop the work folder."""
        meta = {**meta, "kind": kind, "key": key, "committed_at": time.time()}
        atomic_write_json(tmp / META_FILE, meta)
        final = self.stage_dir(kind, key)
        final.parent.mkdir(parents=True, exist_ok=True)
        try:  # one atomic rename publishes it (fails if the folder exists and is not empty)
            if final.exists():
                raise FileExistsError(final)
            os.rename(tmp, final)
        except OSError:
            if not final.exists():
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # computed concurrently: keep theirs
        shutil.rmtree(self.work_dir(kind, key), ignore_errors=True)
        return final

    def discard(self, tmp: Path) -> None:
        shutil.rmtree(tmp, ignore_errors=True)
