"""Opening the datasets a spec names: generated on first use where a dataset can be, checked
against its manifest, memory-mapped. Used by the CLI's data commands, the runner, the stage
kinds (through :class:`Resources`) and viz."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from harness.console import console
from harness.data.base import Dataset, DatasetConfig, LabeledArrays, dataset_root, prepare_command_for
from harness.errors import DataError

if TYPE_CHECKING:
    from harness.plugins import Registry
    from harness.spec.models import ResolvedSpec
    from harness.store import ArtifactStore


def dataset_in_store(registry: Registry, name: str, config: DatasetConfig | dict | None,
                     store: ArtifactStore) -> Dataset:
    """Dataset plugin ``name`` with ``config`` (validated; None: its defaults) at its prepared
    cache's folder in ``store`` (neither opened nor prepared)."""
    config = registry.config("dataset", name, config)
    return registry.create("dataset", name, config,
                           root=dataset_root(registry.dataset(name).cls, config, store))


def open_dataset(rspec: ResolvedSpec, registry: Registry, store: ArtifactStore,
                 prepare: bool = True) -> Dataset:
    return _open(registry, rspec.spec.dataset.name, rspec.dataset_config, store, prepare)


def _open(registry: Registry, name: str, config: DatasetConfig | None, store: ArtifactStore,
          prepare: bool) -> Dataset:
    """A dataset in the store, generated on first use if it can be; else a DataError with the
    command that prepares it."""
    return ensure_prepared(dataset_in_store(registry, name, config, store), prepare)


def ensure_prepared(dataset: Dataset, generate: bool = True, announce: bool = True) -> Dataset:
    """``dataset``, generated now if it is missing and can be (with ``generate``; logged with
    ``announce``); a DataError with the command that prepares it if it cannot."""
    if not dataset.is_prepared():
        if dataset.auto_prepare and generate:
            from harness.claims import claimed

            # one worker generates; others sharing the store wait for it (harness.claims)
            claim_at = dataset.root.with_name(f".{dataset.root.name}.claim.json")
            with claimed(claim_at, dataset.is_prepared, f"dataset '{dataset.name}'") as claim:
                if claim is not None:
                    if announce:
                        console.log(f"generating dataset '{dataset.name}' into {dataset.root}")
                    dataset.prepare(None)
        elif not dataset.auto_prepare:
            hint = f" ({dataset.source_hint})" if dataset.source_hint else ""
            raise DataError(f"dataset '{dataset.name}' is not prepared (looked in {dataset.root}); "
                            f"run `{prepare_command_for(dataset)}`{hint}")
    return dataset


def _refuse_tampered(dataset: Dataset) -> None:
    """A DataError (exit 3) when a prepared cache no longer matches its manifest, as
    `harness data verify` would find (checksums only of files changed since they matched)."""
    from harness.data.cache import cache_problems_at_run

    problems = cache_problems_at_run(dataset.root)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise DataError(f"dataset '{dataset.name}' in {dataset.root} does not match its manifest: "
                        f"{problems[0]}{more}; prepare it again: `{prepare_command_for(dataset)} "
                        f"--force`")


def load_arrays(dataset: Dataset) -> LabeledArrays:
    _refuse_tampered(dataset)
    try:
        return dataset.load()
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"dataset '{dataset.name}' in {dataset.root} cannot be read "
                        f"({type(exc).__name__}: {exc}); run `harness data verify {dataset.name}` "
                        f"or prepare it again") from None


class Resources:
    """The datasets a plan needs, each opened once; unlabeled images only when a stage that
    needs them actually runs (a dry run never touches them)."""

    def __init__(self, rspec: ResolvedSpec, registry: Registry, store: ArtifactStore,
                 prepare: bool = True):
        self.rspec, self.registry, self.store, self.prepare = rspec, registry, store, prepare
        self.dataset = open_dataset(rspec, registry, store, prepare=prepare)
        self.arrays = load_arrays(self.dataset)
        self._labeled: dict[str, tuple[Dataset, LabeledArrays]] = {}
        self._unlabeled: Dataset | None = None

    def labeled(self, name: str | None) -> tuple[Dataset, LabeledArrays]:
        """A labeled dataset by plugin name (default options); None = the spec's own."""
        if name is None or name == self.dataset.name:
            return self.dataset, self.arrays
        if name not in self._labeled:
            info = self.registry.dataset(name)
            config, _ = info.cls.resolve_config(self.registry.config("dataset", name),
                                                self.rspec.spec.metric)
            ds = _open(self.registry, name, config, self.store, self.prepare)
            self._labeled[name] = (ds, load_arrays(ds))
        return self._labeled[name]

    def unlabeled_dataset(self) -> Dataset:
        if self._unlabeled is None:
            ref = self.rspec.spec.unlabeled
            if ref is None:
                self._unlabeled = self.dataset
            else:
                self._unlabeled = _open(self.registry, ref.name, self.rspec.unlabeled_config,
                                        self.store, self.prepare)
        return self._unlabeled

    def unlabeled_images(self):
        ds = self.unlabeled_dataset()
        if ds is not self.dataset:
            _refuse_tampered(ds)
        try:
            return ds.unlabeled_images()
        except (OSError, ValueError) as exc:
            raise DataError(f"unlabeled images of dataset '{ds.name}' in {ds.root} cannot be read "
                            f"({type(exc).__name__}: {exc})") from None
