"""The prepared-dataset cache: atomic writing, manifest checks, generic loading and checks."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

from harness.data.cache import CachedDataset, CacheWriter, verify_manifest


class Tiny(CachedDataset):
    name: ClassVar[str] = "tiny"
    class_names: ClassVar[tuple[str, ...]] = ("a", "b")

    @classmethod
    def folds(cls, config):
        return ["f1", "f2"]

    @classmethod
    def expected_group_sizes(cls, config):
        return {"f1": 2, "f2": 1}

    def prepare(self, source=None, fail_after_images=False):
        with CacheWriter(self.root) as w:
            images = w.array("images", (3, 8, 8, 3), np.uint8)
            images[:] = 7
            if fail_after_images:
                raise OSError("disk full")
            inst = w.array("instances", (3, 8, 8), np.int32)
            cls = w.array("classes", (3, 8, 8), np.uint8)
            inst[:, 2:4, 2:4] = 5
            cls[:, 2:4, 2:4] = 2
            w.samples(["f1/0", "f1/1", "f2/0"], ["x", "y", "x"], ["f1", "f1", "f2"])
            w.finish({"n": 3})


def test_prepare_load_verify(tmp_path):
    ds = Tiny(None, tmp_path / "tiny")
    ds.prepare()
    assert ds.is_prepared() and ds.verify() == []
    arrays = ds.load()
    assert arrays.ids == ["f1/0", "f1/1", "f2/0"] and arrays.images.shape == (3, 8, 8, 3)
    assert ds.split("f2", arrays).train == {"f1": ["f1/0", "f1/1"]}


def test_interrupted_prepare_leaves_nothing(tmp_path):
    ds = Tiny(None, tmp_path / "tiny")
    with pytest.raises(OSError):
        ds.prepare(fail_after_images=True)
    assert not ds.is_prepared() and not (tmp_path / "tiny").exists()
    assert list(tmp_path.iterdir()) == []


def test_writer_without_finish_writes_nothing(tmp_path):
    with pytest.raises(RuntimeError, match="finish"):
        with CacheWriter(tmp_path / "x") as w:
            w.array("images", (1, 2, 2, 3), np.uint8)
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("damage, message", [
    (lambda root: (root / "classes.npy").unlink(), "missing"),
    (lambda root: _flip_byte(root / "images.npy"), "checksum"),
    (lambda root: _truncate(root / "instances.npy"), "size"),
])
def test_verify_finds_damage(tmp_path, damage, message):
    ds = Tiny(None, tmp_path / "tiny")
    ds.prepare()
    damage(ds.root)
    problems = ds.verify()
    assert problems and message in problems[0]


def test_verify_checks_content(tmp_path):
    ds = Tiny(None, tmp_path / "tiny")
    ds.prepare()
    cls = np.load(ds.root / "classes.npy", mmap_mode="r+")
    cls[1, 0, 0] = 9
    cls.flush()
    del cls
    assert any("checksum" in p for p in verify_manifest(ds.root))
    from harness.data.cache import check_labeled_arrays

    found = check_labeled_arrays(ds.load(), 2)
    assert found and "f1/1" in found[0] and "class id 9" in found[0]


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-10])
