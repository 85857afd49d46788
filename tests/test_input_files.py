"""A file that feeds a stage (``methods.supervised.weights``) enters its key by content: a
rewritten file changes the key, the same bytes at another path keep it; the stage info and
record keep path and hash; hashes are cached only while the file's stat is unchanged."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import pytest

from support import write_spec
from harness.errors import DataError
from harness.inputs import check_input_files, file_sha256, input_files
from harness.plugins import build_registry
from harness.runner import Runner
from harness.spec import load_spec
from harness.store import ArtifactStore

REGISTRY = build_registry()

SPEC = """name: weights
dataset: {name: synthetic, image_size: 32, images_per_fold: 4, unlabeled_images: 0}
methods: {supervised: {weights: WEIGHTS}, scratch: {}}
protocols: [full]
folds: [fold1]
finetune: {epochs: 1, batch_size: 2}
"""


def _stages(tmp_path: Path, weights: Path) -> dict[tuple[str, str], object]:
    spec = write_spec(tmp_path, SPEC.replace("WEIGHTS", str(weights)))
    rspec = load_spec(spec, [], registry=REGISTRY)
    runner = Runner(rspec, REGISTRY, ArtifactStore(tmp_path / "store"), tmp_path / "out", quiet=True)
    plan, _, _ = runner.plan()
    return {(s.kind, s.label): s for s in plan.stages()}


def test_key_follows_the_content_not_the_path(tmp_path):
    a = tmp_path / "a" / "r18.pth"
    a.parent.mkdir()
    a.write_bytes(b"weights one" * 1000)
    first = _stages(tmp_path, a)
    enc = first[("encoder", "supervised encoder")]
    digest = hashlib.sha256(a.read_bytes()).hexdigest()
    assert enc.config["settings"]["weights"] == {"sha256": digest}  # no path in the key
    assert enc.info["input_files"] == {"weights": {"path": str(a), "sha256": digest}}

    b = tmp_path / "elsewhere" / "copy.pth"
    b.parent.mkdir()
    shutil.copyfile(a, b)
    moved = _stages(tmp_path, b)
    assert {k: s.key for k, s in moved.items()} == {k: s.key for k, s in first.items()}

    a.write_bytes(b"weights two" * 1000)  # same size, other bytes
    rewritten = _stages(tmp_path, a)
    changed = {k for k in first if rewritten[k].key != first[k].key}
    # the encoder and everything built on it; the scratch row reads no file and keeps its keys
    assert ("encoder", "supervised encoder") in changed
    assert changed and all("supervised" in label for _, label in changed)
    assert rewritten[("encoder", "scratch encoder seed 0")].key == first[("encoder", "scratch encoder seed 0")].key


def test_a_file_changed_after_planning_is_refused(tmp_path):
    w = tmp_path / "w.pth"
    w.write_bytes(b"x" * 64)
    enc = _stages(tmp_path, w)[("encoder", "supervised encoder")]
    assert check_input_files(enc, None)["weights"]["sha256"] == hashlib.sha256(b"x" * 64).hexdigest()
    w.write_bytes(b"y" * 64)
    with pytest.raises(DataError, match="changed since the plan was built"):
        check_input_files(enc, None)


def test_input_file_fields_are_found_by_their_type():
    supervised = REGISTRY.methods["supervised"].cls.Config(weights="/some/file.pth")
    assert input_files(supervised) == {("weights",): Path("/some/file.pth")}
    pricon = REGISTRY.methods["pricon"].cls.Config(imagenet_weights="/w.pth")
    assert input_files(pricon) == {("imagenet_weights",): Path("/w.pth")}
    assert input_files(REGISTRY.methods["supervised"].cls.Config()) == {}


def test_hash_cache_by_stat_and_never_for_a_fresh_or_rewritten_file(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    f = tmp_path / "f.bin"
    f.write_bytes(b"a" * 4096)
    real = hashlib.sha256(b"a" * 4096).hexdigest()
    assert file_sha256(f, cache) == real
    assert not cache.exists() or not list(cache.iterdir())  # ctime is "now": too fresh to cache
    # a settled file (ctime cannot be aged by utime, so fake "now" being later instead)
    later = time.time_ns() + 10 * 10**9
    with monkeypatch.context() as m:
        m.setattr(time, "time_ns", lambda: later)
        assert file_sha256(f, cache) == real
    entries = list(cache.iterdir())
    assert len(entries) == 1
    entry = json.loads(entries[0].read_text())
    assert entry["sha256"] == real and entry["path"] == str(f.resolve())
    # the cache is used while the stat is unchanged (a planted value comes back) ...
    entry["sha256"] = "planted"
    entries[0].write_text(json.dumps(entry))
    assert file_sha256(f, cache) == "planted"
    # ... and a rewrite of the same size with the old mtime put back misses it (ctime moved)
    st = f.stat()
    f.write_bytes(b"b" * 4096)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert file_sha256(f, cache) == hashlib.sha256(b"b" * 4096).hexdigest()


def test_a_missing_input_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="cannot read this input file"):
        file_sha256(tmp_path / "nope.pth")


def test_an_input_folder_is_keyed_by_the_files_in_it(tmp_path):
    """A folder setting (a Hugging Face snapshot) is keyed by its files' names and content: a
    plugin that needs one file says so when it loads (supervised's weights, tested in
    tests/test_hostile_input.py)."""
    folder = tmp_path / "snapshot"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"a" * 64)
    before = file_sha256(folder)
    assert before == file_sha256(folder)
    (folder / "model.safetensors").write_bytes(b"b" * 64)
    assert file_sha256(folder) != before
