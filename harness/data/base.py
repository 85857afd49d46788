"""The dataset contract.

A dataset plugin is a class with a ``name``, its foreground ``class_names`` (class id ``i + 1``;
0 is always background), its split scheme and metric family, and a pydantic ``Config``. It
converts the official download once into a fast local cache under ``root`` (``prepare``),
checks that cache (``verify``) and loads it as arrays aligned by explicit sample ids.

Array conventions (what :meth:`Dataset.load` returns):

* images    ``(N, H, W, 3)`` uint8 RGB (may be a read-only memory map)
* instances ``(N, H, W)`` int32, 0 = background, ids need not be contiguous
* classes   ``(N, H, W)`` uint8, 0 = background, ``1..K`` = ``class_names``
* ids       one unique string per sample; every split and record refers to samples by id
* tissues   tissue type per sample (a single value for single-tissue datasets)
* groups    the fold (k-fold datasets) or split (``train``/``val``/``test``) of each sample
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from harness.store import ArtifactStore


class DatasetConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # inf/nan: typos, never options


@dataclass
class LabeledArrays:
    images: np.ndarray
    instances: np.ndarray
    classes: np.ndarray
    ids: list[str]
    tissues: list[str]
    groups: list[str]

    def __post_init__(self) -> None:
        n = len(self.ids)
        for name in ("images", "instances", "classes", "tissues", "groups"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name} has {len(getattr(self, name))} entries, ids has {n}")
        if len(set(self.ids)) != n:
            raise ValueError("sample ids are not unique")

    def __len__(self) -> int:
        return len(self.ids)

    def index_of(self) -> dict[str, int]:
        return {sid: i for i, sid in enumerate(self.ids)}


@dataclass
class Split:
    """One train/test split. ``train`` is grouped by source group (e.g. each training fold) so that
    label fractions can be drawn per group; all entries are sample ids."""

    train: dict[str, list[str]]
    test: list[str]
    val: list[str] = field(default_factory=list)

    @property
    def train_ids(self) -> list[str]:
        return [sid for ids in self.train.values() for sid in ids]


class _ClassFact:
    """A read-only fact of a dataset class, the same read from the class or an instance."""

    def __init__(self, fget: Any):
        self.fget, self.__doc__ = fget, fget.__doc__

    def __get__(self, obj: Any, owner: type) -> Any:
        return self.fget(owner)


class Dataset:
    """A dataset plugin. What is known without the data (folds, expected group sizes, the
    cache's identity, class names and count, metric family) is asked of the class, from its
    validated ``Config`` where it depends on it; an instance is an opened dataset (its prepared
    cache under ``root``)."""

    name: ClassVar[str]
    #: Bump when a change alters the prepared data; part of every stage key built on it.
    version: ClassVar[str] = "1"
    labeled: ClassVar[bool] = True
    #: Whether ``unlabeled_images()`` is available (unlabeled datasets, generated ones).
    has_unlabeled: ClassVar[bool] = False
    class_names: ClassVar[tuple[str, ...]] = ()
    metric_family: ClassVar[str] = "pq"  # "pq" (multi-class nuclei) or "dice" (binary)
    split_scheme: ClassVar[str] = "kfold"  # "kfold" or "fixed" (train/val/test)
    magnification: ClassVar[str] = "40x"
    #: Generated datasets prepare themselves on first use; downloaded ones need `harness data prepare`.
    auto_prepare: ClassVar[bool] = False
    #: Where to get the official download (shown when the dataset is not prepared).
    source_hint: ClassVar[str] = ""
    Config: ClassVar[type[DatasetConfig]] = DatasetConfig

    def __init__(self, config: DatasetConfig | None, root: Path):
        self.config = config if config is not None else self.Config()
        self.root = Path(root)

    # --- identity ----------------------------------------------------------------------------
    @_ClassFact
    def num_classes(cls) -> int:
        """Number of model outputs: background + foreground classes."""
        return len(cls.class_names) + 1

    #: Config fields that change the prepared cache (None: all of them). Fields left out (e.g.
    #: a load-time policy) share one prepared copy; they still enter stage keys.
    cache_fields: ClassVar[tuple[str, ...] | None] = None

    def fingerprint(self) -> dict[str, Any]:
        """What identifies the data as loaded, in stage keys."""
        return {"name": self.name, "version": self.version,
                "config": self.config.model_dump(mode="json")}

    @classmethod
    def cache_identity(cls, config: DatasetConfig) -> dict[str, Any]:
        """What identifies the prepared cache of ``config`` (its folder in the store)."""
        dumped = config.model_dump(mode="json")
        if cls.cache_fields is not None:
            dumped = {k: v for k, v in dumped.items() if k in cls.cache_fields}
        return {"name": cls.name, "version": cls.version, "config": dumped}

    @classmethod
    def resolve_config(cls, config: DatasetConfig, metric: Any) -> tuple[DatasetConfig, list[tuple[str, str]]]:
        """Options that follow the spec's headline metric (``metric``: the spec's ``metric``
        settings, e.g. a default chosen by the PQ variant) filled in, and ``(option, problem)``
        pairs for options that contradict it (reported as spec problems, each with its fix).
        Called by spec validation for the spec's datasets and for datasets opened by name
        (a labeler's). Default: the config unchanged, no problems."""
        return config, []

    # --- preparation ---------------------------------------------------------------------------
    def is_prepared(self) -> bool:
        return (self.root / "READY").exists()

    def prepare(self, source: Path | None = None) -> None:
        raise NotImplementedError

    def verify(self) -> list[str]:
        """Problems found in the prepared cache (empty when it is fine)."""
        return []

    def prepare_command(self) -> str:
        return f"harness data prepare {self.name} --source PATH"

    # --- loading -------------------------------------------------------------------------------
    def load(self) -> LabeledArrays:
        raise NotImplementedError

    def unlabeled_images(self) -> np.ndarray:
        """``(N, H, W, 3)`` uint8 images for pretraining (unlabeled datasets, or the unlabeled
        part of a generated one)."""
        raise NotImplementedError(f"dataset '{self.name}' has no unlabeled images")

    @classmethod
    def folds(cls, config: DatasetConfig) -> list[str]:
        """Names of the evaluation folds under ``config``: each k-fold fold in turn, or
        ``["test"]``. Known without the data (spec validation asks the class)."""
        raise NotImplementedError

    @classmethod
    def expected_group_sizes(cls, config: DatasetConfig) -> dict[str, int] | None:
        """Expected number of samples per group (fold or split) under ``config``, known without
        the data, so that spec validation can check label fractions; None when unknown."""
        return None

    def split(self, fold: str, arrays: LabeledArrays) -> Split:
        """Default split rules: k-fold trains on every other group; fixed uses train/val/test."""
        groups: dict[str, list[str]] = {}
        for sid, group in zip(arrays.ids, arrays.groups):
            groups.setdefault(group, []).append(sid)
        if self.split_scheme == "kfold":
            train = {g: ids for g, ids in sorted(groups.items()) if g != fold}
            return Split(train=train, test=groups.get(fold, []))
        return Split(train={"train": groups.get("train", [])}, test=groups.get("test", []),
                     val=groups.get("val", []))


def mark_ready(root: Path, info: dict[str, Any]) -> None:
    """Write the READY marker last (the caller prepares into a temporary folder and renames)."""
    (Path(root) / "READY").write_text(json.dumps(info, indent=2, sort_keys=True))


class atomic_directory:
    """Context manager: build a directory under a temporary sibling name and rename it into
    place only when the block succeeds, so an interrupted prepare leaves nothing that looks
    finished::

        with atomic_directory(root) as tmp:
            np.save(tmp / "images.npy", images)
            mark_ready(tmp, {...})
    """

    def __init__(self, final: Path):
        self.final = Path(final)
        self.tmp: Path | None = None

    def __enter__(self) -> Path:
        import os
        import tempfile

        self.final.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.final.name}.tmp-{os.getpid()}-",
                                         dir=self.final.parent))
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        import os
        import shutil

        assert self.tmp is not None
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        if self.final.exists():  # a half-finished or older copy: replace it
            old = self.final.with_name(self.final.name + f".old-{os.getpid()}")
            os.rename(self.final, old)
            os.rename(self.tmp, self.final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(self.tmp, self.final)


def prepare_command_for(dataset: Dataset) -> str:
    """``dataset.prepare_command()`` as the user must type it for this cache: with ``--set
    OPTION=VALUE`` for each option of the cache's identity that is not its default, and with
    ``--store ROOT`` when the cache is not in the default store (``$HARNESS_STORE`` or the user
    cache folder), so a fix line prepares what the run looks for."""
    import shlex

    from harness.store import default_store_root

    command = dataset.prepare_command()
    try:
        defaults = type(dataset.config)().model_dump(mode="json")
    except Exception:  # noqa: BLE001 - a Config with required options: name none
        defaults = {}
    for key, value in dataset.cache_identity(dataset.config)["config"].items():
        if key in defaults and value != defaults[key]:
            text = json.dumps(value) if not isinstance(value, str) else value
            command += f" --set {shlex.quote(f'{key}={text}')}"
    root = dataset.root.parent.parent.parent  # <store>/datasets/<name>/<hash>
    if dataset.root.parent.parent.name == "datasets" and \
            root.expanduser().absolute() != default_store_root().absolute():
        command += f" --store {shlex.quote(str(root))}"
    return command


def dataset_root(cls: type[Dataset], config: DatasetConfig | None, store: ArtifactStore) -> Path:
    """Where a dataset's prepared cache lives in an artifact store: keyed by what changes the
    cache, so options that only matter at load time share one prepared copy (``config``
    None: the defaults)."""
    return store.dataset_dir(cls.name, cls.cache_identity(config if config is not None else cls.Config()))
