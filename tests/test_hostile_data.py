"""Corrupted data sources and tampered caches: a source with zero samples is refused at prepare
(nothing half-written stays), and `run` refuses a prepared cache that no longer matches its
manifest (flipped bytes, truncation, missing or garbled files) with one line, exit 3."""

from __future__ import annotations

import os

import numpy as np
import pytest

from support import REPO
from hostile import assert_one_line_error, cli, listing, wide_console
from test_dataset_lizard import write_fixture

DRY = ["--dry-run", "--set", "methods=[scratch]", "--set", "protocols=[full]", "--set",
       "folds=[fold1]", "--set", "finetune.batch_size=4"]


@pytest.fixture(autouse=True)
def wide(monkeypatch):
    wide_console(monkeypatch)


@pytest.fixture
def prepared(tmp_path, capsys):
    source = write_fixture(tmp_path / "conic")
    store = tmp_path / "store"
    result = cli(capsys, "data", "prepare", "lizard", "--source", str(source), "--store", str(store))
    assert result.code == 0, result.err
    return store, next(store.glob("datasets/lizard/*/READY")).parent


def _flip(path):
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path):
    path.write_bytes(path.read_bytes()[:-64])


TAMPER = [
    ("flipped_byte_images", "images.npy", _flip, "checksum differs"),
    ("flipped_byte_samples", "samples.json", lambda p: p.write_text(p.read_text().replace("fold1", "fold2", 1)), "checksum differs"),
    ("truncated_classes", "classes.npy", _truncate, "size"),
    ("missing_instances", "instances.npy", os.remove, "lists missing files"),
    ("garbled_manifest", "manifest.json", lambda p: p.write_text("{not json"), "manifest.json"),
]


@pytest.mark.parametrize("name,tamper,needle", [t[1:] for t in TAMPER], ids=[t[0] for t in TAMPER])
def test_run_refuses_a_tampered_cache(prepared, capsys, tmp_path, name, tamper, needle):
    store, root = prepared
    ok = cli(capsys, "run", str(REPO / "specs" / "lizard.yaml"), "--store", str(store), *DRY)
    assert ok.code == 0, ok.err  # intact: runs (and remembers that its checksums matched)
    tamper(root / name)
    before = listing(tmp_path)
    result = cli(capsys, "run", str(REPO / "specs" / "lizard.yaml"), "--store", str(store), *DRY)
    assert_one_line_error(result, 3, "dataset 'lizard'", str(root), needle,
                          f"harness data prepare lizard --source PATH --store {store} --force")
    assert listing(tmp_path) == before


def test_a_source_with_zero_samples_is_refused_at_prepare(tmp_path, capsys):
    source = write_fixture(tmp_path / "conic")
    np.save(source / "images.npy", np.zeros((0, 256, 256, 3), np.uint8))
    np.save(source / "labels.npy", np.zeros((0, 256, 256, 2), np.int32))
    (source / "patch_info.csv").write_text("patch_info\n")
    (source / "counts.csv").unlink()
    store = tmp_path / "store"
    result = cli(capsys, "data", "prepare", "lizard", "--source", str(source), "--store", str(store))
    assert result.code == 3, result.err
    assert "Traceback" not in result.err and "unexpected" not in result.err
    line = assert_one_line_error(result, 3, f"lizard: --source {source} holds no samples",
                                 "CoNIC")  # names the source and what to pass, not the cache
    assert str(store) not in line, line
    assert not list(store.glob("datasets/lizard/*/READY"))
    assert not [p for p in store.rglob("*") if p.is_file()]  # nothing half-written stays


def test_missing_and_unreadable_source_are_both_data_errors(tmp_path, capsys, monkeypatch):
    """Exit 3 for both (was 3 and 2), each line naming the --source and the fix. Root reads
    any folder, so the unreadable one is simulated by os.access."""
    source = tmp_path / "conic"
    source.mkdir()
    store = str(tmp_path / "store")
    missing = cli(capsys, "data", "prepare", "lizard", "--source", str(tmp_path / "nope"), "--store", store)
    assert_one_line_error(missing, 3, f"--source {tmp_path / 'nope'} does not exist", "pass ")
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if str(p) == str(source)
                        else real_access(p, mode, **kw))
    unreadable = cli(capsys, "data", "prepare", "lizard", "--source", str(source), "--store", store)
    assert_one_line_error(unreadable, 3, f"--source {source}: the folder cannot be read",
                          "permission denied", "chmod -R u+rX")
