"""``tnbc``: TNBC breast nuclei, binary segmentation scored with Dice (Naylor et al., IEEE TMI
2019; Zenodo record 1175282).

Source (``harness data prepare tnbc --source PATH``): the extracted ``TNBC_NucleiSegmentation/``
folder (or a folder holding it), or the Zenodo archive ``TNBC_NucleiSegmentation.zip`` (read
member by member, never extracted). Images are ``Slide_XX/<name>.png``, masks
``GT_XX/<name>.png`` with the same file name; ``XX`` is the patient. ``__MACOSX/`` and ``._*``
resource forks are ignored. Sample ids are the file stems (``01_1`` = ``<patient>_<k>``).

Conversion:

* images: RGB kept, RGBA drops its alpha channel, palette images are converted to RGB; other
  modes (greyscale, 16-bit) are a DataError. All images must share one size (the release has
  512x512; the loader takes the size from the files).
* masks: a nucleus is any pixel > 0 (the release is 0/255 single channel; masks with other
  values are accepted and listed in ``READY`` as ``nonbinary_masks``). A mask stored as RGB(A)
  is accepted only when its three colour channels are identical (a grey mask saved as colour);
  otherwise DataError. Alpha is ignored.
* instances: connected components of the nucleus mask, ``scipy.ndimage.label`` with
  4-connectivity (the harness's :data:`harness.metrics.CONNECTIVITY`; the instance map only
  matters for PQ, TNBC is scored with Dice).
* a mask without its image, an image without its mask, an unreadable PNG, a mask whose size
  differs from its image, duplicate stems, and a folder with no ``Slide_*`` images are
  DataError (one line naming the file).

Split (``split_scheme = "fixed"``, groups ``train``/``test``, no validation set, ``folds() ==
["test"]``; the thesis used 43 train / 7 test, §A.3.1). Images are sorted by (patient, k) (k =
the number after the stem's ``_``; stems without one sort after, by name). With n images the
test set has ``n_test = ceil(14 n / 100)`` images, in exact integer arithmetic: 7 for the
release's n = 50 (sklearn's ``test_size=0.14`` computes 0.14*50 = 7.000000000000001 -> 8), at
least 1 and at most n - 1.

* ``split="image"`` (default, the reference's proposed rule): test = the sorted images at
  positions ``np.random.RandomState(0).permutation(n)[:n_test]``.
* ``split="patient"``: whole patients. Patients are taken in sorted order from the end: the
  chosen set is the one that sums exactly to ``n_test`` images and prefers later patients
  (patients are considered last-first; one is included whenever an exact total is still
  reachable with it). When no set of whole patients sums to ``n_test``, the image-level rule
  is used and ``split.json`` records ``"patient_fallback": true``.

Both splits are computed at prepare time and persisted in ``split.json`` (``split`` is a
load-time option, so both share one prepared cache).

Counts: ``expected_group_sizes(config)`` is the thesis's {train: 43, test: 7}. ``verify`` compares
with those when the prepared source looked like the full release (50 images of 512x512,
recorded as ``complete_release`` in ``READY``) and with the counts recorded at prepare time
otherwise.

Fine-tuning note: the harness trains every dataset with ``len(class_names) + 1`` outputs and
cross-entropy, so TNBC uses **2 output channels** (background, nucleus). The thesis's code built
binary models with a single logit and a sigmoid (``generate_masks.py`` L94, L126-128); the
argmax of two softmax channels and a thresholded sigmoid are equivalent decision rules, but
the training loss and parameterisation differ slightly.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from harness.data.base import DatasetConfig, LabeledArrays
from harness.data.cache import CachedDataset, CacheWriter, group_counts
from harness.console import progress_bar
from harness.errors import DataError
from harness.hookspecs import hookimpl
from harness.metrics import CONNECTIVITY

from ._tnbc_source import Source, image_array, mask_array, patient_key

RELEASE_IMAGES = 50
RELEASE_SIZE = 512
THESIS_SPLIT = {"train": 43, "test": 7}
TISSUE = "Breast"
SPLIT_SEED = 0


class TNBCConfig(DatasetConfig):
    split: Literal["image", "patient"] = Field(
        "image", description="'image': the thesis's 43/7 image-level split (RandomState(0) "
        "permutation of the (patient, k)-sorted images); 'patient': whole patients from the end "
        "of the sorted order summing to the same test size (falls back to 'image' when none do). "
        "Load time only.")


# --- split rules -----------------------------------------------------------------------------------

def n_test_images(n: int) -> int:
    """``ceil(0.14 n)`` in exact arithmetic (7 for n = 50), kept within 1..n-1."""
    if n < 2:
        raise ValueError(f"a train/test split needs at least 2 images, got {n}")
    return min(n - 1, max(1, -(-14 * n // 100)))


def image_split(n: int) -> list[int]:
    """Positions (in (patient, k) order) of the test images: RandomState(0).permutation(n)[:n_test]."""
    return sorted(int(i) for i in np.random.RandomState(SPLIT_SEED).permutation(n)[:n_test_images(n)])


def patient_split(patients: list[str]) -> list[str] | None:
    """Whole patients (of the (patient, k)-sorted per-image patient list) whose images sum to
    ``n_test_images(n)``, preferring patients from the end of the sorted order; None if no set does."""
    target = n_test_images(len(patients))
    order = sorted(set(patients), key=patient_key, reverse=True)
    sizes = [patients.count(p) for p in order]
    # reachable[i][r]: some subset of order[i:] sums to exactly r images.
    reachable = [[False] * (target + 1) for _ in range(len(order) + 1)]
    reachable[len(order)][0] = True
    for i in range(len(order) - 1, -1, -1):
        for r in range(target + 1):
            reachable[i][r] = reachable[i + 1][r] or (sizes[i] <= r and reachable[i + 1][r - sizes[i]])
    if not reachable[0][target]:
        return None
    chosen, r = [], target
    for i, p in enumerate(order):
        if sizes[i] <= r and reachable[i + 1][r - sizes[i]]:
            chosen.append(p)
            r -= sizes[i]
    return sorted(chosen, key=patient_key)


class TNBCDataset(CachedDataset):
    name = "tnbc"
    version = "1"
    labeled = True
    class_names = ("nucleus",)
    metric_family = "dice"
    split_scheme = "fixed"
    magnification = "40x"
    description = ("TNBC breast nuclei (Naylor et al.): 50 512x512 patches, binary masks, "
                   "thesis 43/7 train/test split, Dice.")
    source_hint = ("TNBC_NucleiSegmentation.zip from Zenodo, no registration: "
                   "https://zenodo.org/records/1175282 (the zip or its extracted folder)")
    Config = TNBCConfig
    cache_fields = ()  # the split is chosen at load time from split.json
    config: TNBCConfig

    @classmethod
    def folds(cls, config: TNBCConfig) -> list[str]:
        return ["test"]

    @classmethod
    def expected_group_sizes(cls, config: TNBCConfig) -> dict[str, int]:
        return dict(THESIS_SPLIT)

    # --- preparation ---------------------------------------------------------------------------
    @classmethod
    def conformance_fixture(cls, folder: Path) -> dict:
        """A tiny source in the official layout, for `harness plugin check`."""
        from ._fixtures import tnbc

        return {"source": tnbc(folder / "src")}

    def prepare(self, source: Path | None = None) -> None:
        if source is None:
            raise DataError(f"tnbc: --source is required ({self.source_hint})")
        src = Source(Path(source))
        try:
            self._prepare(src)
        finally:
            src.close()

    def _prepare(self, src: Source) -> None:
        entries = src.entries()
        n = len(entries)
        if n < 2:
            raise DataError(f"{src.path}: {n} image(s); a train/test split needs at least 2")
        stems = [e.stem for e in entries]
        patients = [e.patient for e in entries]
        with CacheWriter(self.root) as writer:
            (h, w), non_rgb, nonbinary = _write_samples(writer, src, entries)
            split, fallback = _splits(stems, patients)
            writer.json("split.json", split)
            test_set = set(split["image"]["test"])
            writer.samples(stems, [TISSUE] * n, ["test" if s in test_set else "train" for s in stems])
            complete = n == RELEASE_IMAGES and (h, w) == (RELEASE_SIZE, RELEASE_SIZE)
            writer.finish({"dataset": self.name, "version": self.version, "source": str(src.path),
                           "samples": n, "patients": sorted(set(patients), key=patient_key),
                           "complete_release": complete, "size": [h, w],
                           "n_test": n_test_images(n), "patient_fallback": fallback,
                           "connectivity": CONNECTIVITY, "non_rgb_images": non_rgb,
                           "nonbinary_masks": nonbinary})

    # --- checks and loading ------------------------------------------------------------------------
    def _split_info(self) -> dict[str, Any]:
        return json.loads((self.root / "split.json").read_text())

    def verify(self) -> list[str]:
        arrays, problems = self.checked_arrays()
        if arrays is None:
            return problems
        info = json.loads((self.root / "READY").read_text())
        if info.get("complete_release"):
            expected = dict(THESIS_SPLIT)
        else:  # a partial or modified download: the counts recorded at prepare time
            expected = {"train": info["samples"] - info["n_test"], "test": info["n_test"]}
        counts = group_counts(arrays.groups)
        for group, n in expected.items():
            if counts.get(group, 0) != n:
                problems.append(f"{self.root}: group '{group}' has {counts.get(group, 0)} samples, "
                                f"expected {n}")
        if set(counts) - set(expected):
            problems.append(f"{self.root}: unknown groups {sorted(set(counts) - set(expected))}")
        return problems

    def load(self) -> LabeledArrays:
        arrays = super().load()
        test = set(self._split_info()[self.config.split]["test"])
        unknown = test - set(arrays.ids)
        if unknown:
            raise ValueError(f"{self.root / 'split.json'} names unknown samples {sorted(unknown)[:3]}")
        arrays.groups = ["test" if sid in test else "train" for sid in arrays.ids]
        return arrays


def _write_samples(writer: CacheWriter, src: Source,
                   entries: list) -> tuple[tuple[int, int], list[str], list[str]]:
    """Images, instance maps (connected components of each binary mask) and class maps into
    the cache; the image size, the stems of non-RGB images and of non-binary masks."""
    from scipy import ndimage  # scipy on use: `harness validate`/`list` import this module

    structure = ndimage.generate_binary_structure(2, 1 if CONNECTIVITY == 4 else 2)
    n = len(entries)
    first = image_array(src, entries[0].image)
    h, w = first[0].shape[:2]
    nonbinary: list[str] = []
    non_rgb: list[str] = []
    out_img = writer.array("images", (n, h, w, 3), np.uint8)
    out_inst = writer.array("instances", (n, h, w), np.int32)
    out_cls = writer.array("classes", (n, h, w), np.uint8)
    with progress_bar("prepare tnbc", n) as advance:
        for i, e in enumerate(entries):
            image, mode = first if i == 0 else image_array(src, e.image)
            if mode != "RGB":
                non_rgb.append(e.stem)
            if image.shape[:2] != (h, w):
                raise DataError(f"{src.where(e.image)}: size {image.shape[1]}x"
                                f"{image.shape[0]}, other images are {w}x{h}")
            mask = mask_array(src, e.mask)
            if mask.shape != (h, w):
                raise DataError(f"{src.where(e.mask)}: size {mask.shape[1]}x{mask.shape[0]}"
                                f", its image is {w}x{h}")
            values = np.unique(mask)
            if len(values[values > 0]) > 1:
                nonbinary.append(e.stem)
            fg = mask > 0
            out_img[i] = image
            out_inst[i] = ndimage.label(fg, structure=structure)[0]
            out_cls[i] = fg
            advance(1)
    return (h, w), non_rgb, nonbinary


def _splits(stems: list[str], patients: list[str]) -> tuple[dict[str, Any], bool]:
    """``split.json``: the image split and the patient split (the image split when whole
    patients cannot make up the test set: ``patient_fallback``)."""
    n = len(stems)
    test_img = [stems[i] for i in image_split(n)]
    test_pat_patients = patient_split(patients)
    fallback = test_pat_patients is None
    test_pat = (test_img if fallback else
                [s for s, p in zip(stems, patients) if p in test_pat_patients])
    return {
        "rule": "sort by (patient, k); n_test = ceil(14 n / 100); image: "
                "RandomState(0).permutation(n)[:n_test]; patient: whole patients from "
                "the end summing to n_test, else the image rule",
        "n_test": n_test_images(n),
        "image": {"test": test_img},
        "patient": {"test": test_pat, "test_patients": test_pat_patients or [],
                    "patient_fallback": fallback},
    }, fallback


@hookimpl
def harness_register_datasets():
    return [TNBCDataset]
