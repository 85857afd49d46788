"""Who builds a cell's chain: the method the stages up to its encoder
(``Method.encoder_chains``), the protocol the rest (``TrainingProtocol.cell_stages``), each
stage its kind (``StageKind.create``); every cell names its model stage. Identical stages are
planned once: a pretraining chain serves every fold, protocol, fraction and (with the row's
``seed``) every seed; PRICon's cycles chain their pretraining."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest

from support import write_spec
from harness.errors import PluginError
from harness.hookspecs import hookimpl
from harness.methods import InitMethod, PretrainMethod
from harness.plan import EncoderChain
from harness.plugins import build_registry
from harness.runner import Runner
from harness.spec import load_spec
from harness.store import ArtifactStore
from test_pretraining import TOY

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


def plan_of(tmp, text, overrides=(), registry=None):
    """The plan of spec ``text`` with ``overrides`` (a store under ``tmp``)."""
    registry = registry or build_registry()
    rspec = load_spec(write_spec(tmp, text), list(overrides), registry=registry)
    return Runner(rspec, registry, ArtifactStore(tmp / "store"), tmp / "out", quiet=True).plan()[0]


@pytest.fixture(scope="module")
def plan(tmp_path_factory):
    return plan_of(tmp_path_factory.mktemp("planner"), SPEC, registry=build_registry([_Plugin]))


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


# --- stages planned once: the pretraining toy spec of test_pretraining.py -----------------------

def test_pretraining_chain_is_computed_once_for_all_cells(tmp_path):
    plan = plan_of(tmp_path, TOY)
    kinds = [s.kind for s in plan.stages()]
    assert len(plan.cells) == 3 * 2 * 2 * 2
    assert kinds.count("pretrain") == 3  # one per method, shared by folds/protocols/fractions
    assert kinds.count("labeler") == kinds.count("labeler_eval") == kinds.count("pseudolabel") == 1
    assert kinds.count("finetune") == 3 * 8
    pricon_cells = [c for c in plan.cells if c.method == "pricon"]
    chain = [s.kind for s in pricon_cells[0].stages()]
    assert chain == ["encoder", "labeler", "labeler_eval", "pseudolabel", "pretrain", "finetune", "evaluate"]


def test_pretrain_state_continues_across_cycles(tmp_path):
    text = TOY.replace("  simclr: {epochs: 2, batch_size: 8, augment: {crop_size: 32}}\n", "") \
              .replace("  simsiam: {epochs: 2, batch_size: 8, augment: {crop_size: 32, jitter: [0.4, 0.4, 0.4, 0.1]}}\n", "") \
              .replace("labeler: {epochs: 1, batch_size: 8}}", "labeler: {epochs: 1, batch_size: 8}, cycles: 2}")
    plan = plan_of(tmp_path, text, ["folds=[fold1]", "fractions=[1.0]", "protocols=[frozen]"])
    assert [c.method for c in plan.cells] == ["pricon@cycle1", "pricon@cycle2"]
    kinds = [s.kind for s in plan.stages()]
    assert kinds.count("pretrain") == 2 and kinds.count("labeler") == 2 and kinds.count("pseudolabel") == 2
    cycle2 = next(s for s in plan.stages() if s.kind == "pretrain" and s.config["cycle"] == 2)
    assert set(cycle2.deps) == {"masks", "previous"}


def test_pretrain_seed_shares_one_chain_across_finetuning_seeds(tmp_path):
    """`seed: 0` on a pretraining row: one labeler/pseudo-label/pretrain chain for every spec
    seed (the thesis's five TNBC runs), keyed like a seed-0 cell, so stages are shared."""
    per_cell = plan_of(tmp_path, TOY, ["seeds=[0, 1]", "folds=[fold1]", "fractions=[1.0]"])
    kinds = [s.kind for s in per_cell.stages()]
    assert kinds.count("pretrain") == 3 * 2 and kinds.count("labeler") == 2
    shared_text = TOY.replace("simclr: {epochs: 2,", "simclr: {seed: 0, epochs: 2,") \
                     .replace("pricon: {epochs: 2,", "pricon: {seed: 0, epochs: 2,")
    plan = plan_of(tmp_path, shared_text, ["seeds=[0, 1]", "folds=[fold1]", "fractions=[1.0]"])
    stages = plan.stages()
    pre = {s.config["method"]: [] for s in stages if s.kind == "pretrain"}
    for s in stages:
        if s.kind == "pretrain":
            pre[s.config["method"]].append(s)
    assert {m: len(v) for m, v in pre.items()} == {"simclr": 1, "simsiam": 2, "pricon": 1}
    assert [s.kind for s in stages].count("labeler") == 1
    assert len(plan.cells) == 3 * 2 * 2
    # seed 0's chain has the same keys with or without the explicit `seed: 0`
    seed0 = {s.key for s in per_cell.stages() if s.kind in ("pretrain", "labeler", "pseudolabel")
             and s.config.get("seed", 0) in (0, None)}
    assert {s.key for s in stages if s.kind == "pretrain"} <= seed0 | {s.key for s in pre["simsiam"]}
