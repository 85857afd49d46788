"""What the visualisations read: encoder artifacts (``encoder.pt`` + ``encoder.json``, written
by every encoder and pretraining stage) and one labeled sample of a dataset plugin. Every
problem is a :class:`~harness.errors.HarnessError` with one line that says what to fix."""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from harness.errors import DataError, SpecError
from harness.safeload import load_state_dict_file

if TYPE_CHECKING:
    from harness.plugins import Registry
    from harness.store import ArtifactStore

ARTIFACT = "encoder.pt"
META = "encoder.json"


@dataclass
class EncoderArtifact:
    weights: Path  # encoder.pt
    meta: dict[str, Any]  # encoder.json: encoder, normalization, method
    label: str  # column title

    @property
    def encoder_name(self) -> str:
        return self.meta["encoder"]


def resolve_encoder(arg: str, store_root: Path) -> Path:
    """``--encoder`` -> the ``encoder.pt`` it means: that file, a folder holding one (a stage
    folder), or a stage key (or its prefix, or ``kind/key``) in the store."""
    path = Path(arg).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        if (path / ARTIFACT).is_file():
            return path / ARTIFACT
        raise DataError(f"--encoder {arg}: the folder holds no {ARTIFACT} (give an encoder or "
                        f"pretraining stage folder, or the file itself)")
    if arg.endswith((".pt", ".pth")) or arg.startswith((".", "~", "/")) or arg.count("/") > 1:
        raise DataError(f"--encoder {arg}: no such file")
    from harness.store import ArtifactStore

    store = ArtifactStore(store_root)
    stages = store.stages_holding(ARTIFACT)
    kind, _, key = arg.rpartition("/")
    found = [(k, s) for k, s in stages if s.startswith(key) and (not kind or k == kind)]
    if len(found) == 1:
        return store.stage_file(*found[0], ARTIFACT)
    if found:
        names = ", ".join(f"{k}/{s[:12]}" for k, s in found[:4])
        raise DataError(f"--encoder {arg}: {len(found)} stages in the store match ({names}"
                        f"{', ...' if len(found) > 4 else ''}); give more of the key")
    keys = [s for _, s in stages]
    close = difflib.get_close_matches(key, [k[:max(len(key), 6)] for k in keys], n=1, cutoff=0.6)
    hint = (f" (did you mean '{close[0]}'?)" if close else
            f"; {len(keys)} stages there hold an encoder, e.g. {stages[0][0]}/{keys[0][:12]}"
            if keys else "; it holds no encoder stage")
    raise DataError(f"--encoder {arg}: no such file, and no stage key in the store "
                    f"{store_root} starts with it{hint}")


def read_artifact(weights: Path) -> EncoderArtifact:
    """``encoder.pt`` with its ``encoder.json`` (``NAME.json`` beside ``NAME.pt``, else
    ``encoder.json`` in the same folder)."""
    candidates = [weights.with_suffix(".json"), weights.parent / META]
    meta_path = next((c for c in candidates if c.is_file()), None)
    if meta_path is None:
        raise DataError(f"{weights}: no {META} beside it (it names the encoder and its input "
                        f"normalisation; every encoder stage writes one)")
    try:
        meta = json.loads(meta_path.read_text())
        if not isinstance(meta, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as exc:
        raise DataError(f"{meta_path}: cannot be read ({exc})") from None
    norm = meta.get("normalization")
    if not isinstance(meta.get("encoder"), str) or not isinstance(norm, dict) \
            or not {"mean", "std"} <= set(norm):
        raise DataError(f"{meta_path}: needs 'encoder' (a name) and 'normalization' "
                        f"({{mean, std}})")
    return EncoderArtifact(weights, meta, _label(weights, meta))


def _label(weights: Path, meta: dict[str, Any]) -> str:
    from harness.store import stage_of_folder

    folder = weights.parent.name
    where = folder[:10] if stage_of_folder(weights.parent) else (folder or weights.stem)
    return f"{meta.get('method') or meta['encoder']} ({where})"


def unique_labels(artifacts: list[EncoderArtifact]) -> list[str]:
    labels = [a.label for a in artifacts]
    return [f"{lab} #{i + 1}" if labels.count(lab) > 1 else lab for i, lab in enumerate(labels)]


def load_encoder(artifact: EncoderArtifact):
    """The encoder module with the artifact's weights (strict key match) and its normaliser."""

    from harness.data.torchdata import Normalizer
    from harness.engine.model import key_diff, build_encoder

    name = artifact.encoder_name
    try:
        encoder = build_encoder(name)
    except (KeyError, ValueError) as exc:
        raise DataError(f"{artifact.weights}: encoder.json names encoder '{name}', which "
                        f"segmentation-models-pytorch does not know ({exc})") from None
    state = load_state_dict_file(artifact.weights)
    try:
        encoder.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        diff = key_diff(encoder, state) or str(exc).splitlines()[0]
        raise DataError(f"{artifact.weights}: the weights do not fit encoder '{name}' (named in "
                        f"its encoder.json): {diff}") from None
    return encoder.eval(), Normalizer(artifact.meta["normalization"], "encoder")


def dataset_options(options: list[str] | None) -> list[str]:
    """``--set dataset.image_size=32`` (spec notation) or ``--set image_size=32``."""
    return [o[len("dataset."):] if o.startswith("dataset.") else o for o in options or []]


def load_sample(dataset, sample_id: str) -> tuple[np.ndarray, np.ndarray]:
    """``(image (H, W, 3) uint8, classes (H, W) uint8)`` of one sample of a prepared (or
    auto-prepared) labeled dataset, by its sample id."""
    from harness.data.open import ensure_prepared, load_arrays

    if not dataset.labeled:
        raise SpecError(f"--dataset {dataset.name}: unlabeled; similarity maps need a labeled "
                        f"dataset (its sample ids and ground truth)")
    arrays = load_arrays(ensure_prepared(dataset, announce=False))
    index = arrays.index_of()
    if sample_id not in index:
        close = difflib.get_close_matches(sample_id, arrays.ids, n=1, cutoff=0.6)
        hint = (f"did you mean '{close[0]}'?" if close else
                f"ids look like '{arrays.ids[0]}' .. '{arrays.ids[-1]}'" if arrays.ids else "it is empty")
        raise SpecError(f"--image {sample_id!r}: no such sample in dataset '{dataset.name}' "
                        f"({len(arrays.ids)} samples; {hint})")
    row = index[sample_id]
    return np.array(arrays.images[row]), np.array(arrays.classes[row])


def spec_dataset(spec: Path, dataset: str | None, options: list[str] | None, store: ArtifactStore,
                 registry: Registry):
    """The dataset of ``--spec SPEC`` with the spec's options (``--set`` on top, as
    ``dataset.KEY=VALUE`` overrides of the spec), opened in ``store``; ``--dataset``, if also
    given, must name the same dataset."""
    from harness.data.open import dataset_in_store
    from harness.errors import UsageError
    from harness.spec import load_spec

    rspec = load_spec(spec, [f"dataset.{o}" for o in dataset_options(options)], registry)
    name = rspec.spec.dataset.name
    if dataset is not None and dataset != name:
        raise UsageError(f"--dataset {dataset}: {spec} fine-tunes on '{name}'; give one of "
                         f"--dataset and --spec")
    return dataset_in_store(registry, name, rspec.dataset_config, store)
