"""The ``knn`` protocol (harness/protocols/knn.py): one file, a chain ``knn_bank -> evaluate``
with no training, exact chunked k-NN voting, and its cells in records and the report."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from support import run_cli, write_spec
from harness.protocols import knn

SPEC = """
name: knn_toy
dataset: {name: synthetic, image_size: 64, images_per_fold: 8, unlabeled_images: 0}
methods: [scratch]
protocols: [knn, frozen]
fractions: [1.0]
folds: [fold1]
finetune: {epochs: 1, batch_size: 4, device: cpu, num_workers: 0}
"""


def _segmenter(bank, labels):
    model = knn._segmenter_class()("resnet18", labels.shape[1])
    model.set_bank(torch.nn.functional.normalize(bank, dim=1), labels)
    return model


def test_vote_is_exact_and_deterministic_across_bank_chunks(monkeypatch):
    """Chunked top-k merging finds the one-block neighbours (the similarities of a chunk may
    round differently from the whole product's: 1e-6); a repeated vote is bit-identical."""
    g = torch.Generator().manual_seed(0)
    bank, q = torch.randn(1000, 16, generator=g), torch.randn(300, 16, generator=g)
    labels = torch.softmax(torch.randn(1000, 4, generator=g), 1)
    model = _segmenter(bank, labels)
    q = torch.nn.functional.normalize(q, dim=1)
    whole = model.vote(q)
    monkeypatch.setattr(knn, "BANK_CHUNK", 37)
    monkeypatch.setattr(knn, "QUERY_CHUNK", 64)
    chunked = model.vote(q)
    assert torch.allclose(chunked, whole, atol=1e-6) and torch.equal(chunked.argmax(1), whole.argmax(1))
    assert torch.equal(model.vote(q), chunked)
    # the neighbours of a bank vector include itself (similarity 1), which dominates at T 0.07
    own = model.vote(model.bank[:50])
    assert (own.argmax(1) == labels[:50].argmax(1)).float().mean() > 0.9


def test_bank_state_loads_into_a_fresh_segmenter():
    g = torch.Generator().manual_seed(1)
    # a ResNet-18 hypercolumn at stride 4: 64 + 128 + 256 + 512 = 960 dimensions
    model = _segmenter(torch.randn(40, 960, generator=g), torch.softmax(torch.randn(40, 3, generator=g), 1))
    fresh = knn._segmenter_class()("resnet18", 3)
    fresh.load_state_dict(model.state_dict())
    x = torch.rand(2, 3, 64, 64, generator=g)
    model.eval(), fresh.eval()
    assert torch.equal(model(x), fresh(x)) and model(x).shape == (2, 3, 64, 64)


def test_knn_cells_run_end_to_end_and_show_in_the_report(tmp_path):
    spec = write_spec(tmp_path, SPEC)
    res = run_cli("run", str(spec), "--store", str(tmp_path / "store"), "--output", str(tmp_path / "out"),
                  "--quiet", env={"OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    records = {json.loads(p.read_text())["protocol"]: json.loads(p.read_text())
               for p in (tmp_path / "out" / "records").glob("*.json")}
    rec = records["knn"]
    assert [s["kind"] for s in rec["stages"]] == ["encoder", "knn_bank", "evaluate"]
    assert rec["train"]["bank_patches"] > 0 and rec["train"]["k"] == knn.K
    assert rec["split"]["train_ids"] == records["frozen"]["split"]["train_ids"]
    assert set(rec["metrics"]) == set(records["frozen"]["metrics"])  # the same metric family
    assert np.isfinite(rec["metric"]["value"])
    assert "knn" in (tmp_path / "out" / "report.md").read_text()


def test_knn_rejects_a_hover_head(tmp_path):
    spec = write_spec(tmp_path, SPEC.replace("num_workers: 0}", "num_workers: 0, head: hover}"))
    res = run_cli("validate", str(spec))
    assert res.returncode == 2 and "knn" in res.stderr and "head" in res.stderr
    assert len(res.stderr.strip().splitlines()) <= 2, res.stderr
