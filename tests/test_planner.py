"""Who builds a cell's chain: the method the stages up to its encoder
(``Method.encoder_chains``), the protocol the rest (``TrainingProtocol.cell_stages``), each
stage its kind (``StageKind.create``); every cell names its model stage."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest

from conftest import write_spec
from harness.errors import PluginError
from harness.hookspecs import hookimpl
from harness.methods import InitMethod, PretrainMethod
from harness.plan import EncoderChain
from harness.plugins import build_registry
from harness.runner import Runner
from harness.spec import load_spec
from harness.store import ArtifactStore

SPEC = """
name: planner_toy
dataset: {name: synthetic, image_size: 32, images_per_fold: 4, unlabeled_images: 0}
methods: [scratch, two_encoders]
protocols: [frozen, knn]
fractions: [1.0, 0.5]
folds: [fold1, fold2]
finetune: {epochs: 1, batch_size: 2}
"""


class TwoEncoders(InitMethod):
    """A method with its own chain: a random encoder for every split, reported as row
    ``@random``, and another (seed + 100) for the first split only, row ``@other``."""

    name: ClassVar[str] = "two_encoders"
    description: ClassVar[str] = "test method: two encoder chains"

    def init_encoder(self, encoder: Any, encoder_name: str, seed: int) -> dict[str, Any]:
        return {"mean": [0.5] * 3, "std": [0.5] * 3}

    def encoder_chains(self, plan, *, version, seed, splits, settings):
        return [EncoderChain(plan.create("encoder", seed=seed), splits, "@random", {"which": "random"}),
                EncoderChain(plan.create("encoder", seed=seed + 100), splits[:1], "@other", {"which": "other"})]


class Masked(PretrainMethod):
    name: ClassVar[str] = "masked_without_chain"
    needs_masks: ClassVar[bool] = True


class _Plugin:
    @staticmethod
    @hookimpl
    def harness_register_methods():
        return [TwoEncoders]


@pytest.fixture(scope="module")
def plan(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("planner")
    registry = build_registry([_Plugin])
    rspec = load_spec(write_spec(tmp, SPEC), [], registry=registry)
    return Runner(rspec, registry, ArtifactStore(tmp / "store"), tmp / "out", quiet=True).plan()[0]


def test_cells_name_their_model_stage_and_the_protocol_builds_it(plan):
    for cell in plan.cells:
        assert cell.model is cell.final.deps["model"]
        assert cell.model.kind == {"frozen": "finetune", "knn": "knn_bank"}[cell.protocol]
        assert cell.final.kind == "evaluate" and cell.final.params["protocol"] == cell.protocol
        assert cell.model.config["fold"] == cell.fold and cell.model.config["fraction"] == cell.fraction


def test_a_method_chain_gives_its_rows_splits_and_facts(plan):
    rows: dict[str, list] = {}
    for cell in plan.cells:
        rows.setdefault(cell.method, []).append(cell)
    assert list(rows) == ["scratch", "two_encoders@random", "two_encoders@other"]
    assert len(rows["two_encoders@random"]) == 2 * 2 * 2  # folds x fractions x protocols
    assert {(c.fold, c.fraction) for c in rows["two_encoders@other"]} == {("fold1", 1.0)}
    assert all(c.info == {"which": "other"} and c.plugin == "two_encoders" for c in rows["two_encoders@other"])
    encoders = {c.method: c.model.deps["encoder"] for c in plan.cells}
    assert encoders["two_encoders@random"].config["init"] == "random"
    assert encoders["two_encoders@other"].config["seed"] == 100
    # one stage per key: the random encoder serves every cell of its row
    assert len({id(c.model.deps["encoder"]) for c in rows["two_encoders@random"]}) == 1


def test_a_method_that_needs_masks_must_compose_its_chain():
    with pytest.raises(PluginError, match="needs masks"):
        Masked().encoder_chains(None, version="1", seed=0, splits=[], settings=None)
