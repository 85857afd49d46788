"""The store owns its folder layout: other code asks it for the published stages of a kind, the
stages holding a file, a stage's files and meta, and whether a folder is a stage folder."""

from __future__ import annotations

from harness.store import ArtifactStore, stage_meta, stage_of_folder


def _publish(store: ArtifactStore, kind: str, key: str, files: dict[str, str]) -> None:
    tmp = store.new_tmp(kind, key)
    for name, text in files.items():
        (tmp / name).write_text(text)
    store.commit(kind, key, tmp, {"result": {"n": len(files)}})


def test_published_stages_their_files_and_meta(tmp_path):
    store = ArtifactStore(tmp_path)
    _publish(store, "pretrain", "bbb", {"encoder.pt": "", "pretrain_log.json": "[]"})
    _publish(store, "pretrain", "aaa", {"pretrain_log.json": "[]"})
    _publish(store, "encoder", "ccc", {"encoder.pt": ""})
    assert store.stages_of("pretrain") == ["aaa", "bbb"] and store.stages_of("finetune") == []
    assert store.stages_holding("encoder.pt") == [("encoder", "ccc"), ("pretrain", "bbb")]
    log = store.stage_file("pretrain", "aaa", "pretrain_log.json")
    assert log.read_text() == "[]" and log.parent == store.stage_dir("pretrain", "aaa")
    meta = stage_meta(store.stage_dir("pretrain", "bbb"))
    assert meta == store.meta("pretrain", "bbb") and meta["result"] == {"n": 2}
    assert (meta["kind"], meta["key"]) == ("pretrain", "bbb")
    assert stage_of_folder(store.stage_dir("encoder", "ccc")) == ("encoder", "ccc")
    assert stage_of_folder(tmp_path / "elsewhere" / "weights") is None
