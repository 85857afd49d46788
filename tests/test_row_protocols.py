"""Per-row protocols: a ``methods:`` row may carry ``protocols: [...]``, a subset of the spec's
protocols (how semi-supervised rows join a spec with [frozen, full]). The key is the harness's,
not the plugin's: it is split off before the plugin's config validates, is part of no stage key,
and only decides which cells the plan builds; the report leaves the other columns empty."""

from __future__ import annotations

import pytest

from support import TINY_SPEC, write_spec
from harness.cli.commands import _cell_count
from harness.errors import SpecError
from harness.plugins import build_registry
from harness.report.build import build_report
from harness.report.tables import main_table, method_order, to_markdown
from harness.report.writer import write_report
from harness.runner import Runner
from harness.spec import load_spec
from harness.store import ArtifactStore
from test_report import RUN_INFO, make_record

BASE = """\
name: rows
dataset: synthetic
methods:
  scratch:
  cutmix: {protocols: [full]}
protocols: [frozen, full]
finetune:
  epochs: 2
  batch_size: 8
"""
CUTMIX_LINE = 5  # line of `cutmix:` in BASE


def problems(path) -> list[str]:
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert info.value.exit_code == 2
    assert all("\n" not in p for p in info.value.problems)
    return info.value.problems


def only_problem(path) -> str:
    found = problems(path)
    assert len(found) == 1, found
    return found[0]


# --- validation ------------------------------------------------------------------------------

def test_subset_is_accepted_and_not_part_of_the_method_config(tmp_path):
    rspec = load_spec(write_spec(tmp_path, BASE))
    assert rspec.spec.protocols_of("scratch") == ["frozen", "full"]
    assert rspec.spec.protocols_of("cutmix") == ["full"]
    assert rspec.spec.plugin_of("cutmix") == "cutmix"
    # the plugin's config never sees the row-level key (so config hashes stay as they were)
    plain = load_spec(write_spec(tmp_path, BASE.replace("[frozen, full]", "[full]")
                                 .replace("cutmix: {protocols: [full]}", "cutmix:"), "plain.yaml"))
    assert rspec.method_configs["cutmix"] == plain.method_configs["cutmix"]
    assert "protocols" not in rspec.method_configs["cutmix"].model_dump()
    # provenance names the restriction of that row only
    resolved = rspec.resolved()["methods"]
    assert resolved["cutmix"]["protocols"] == ["full"] and resolved["cutmix"]["method"] == "cutmix"
    assert "protocols" not in resolved["scratch"]


def test_row_protocols_follow_the_spec_order_and_combine_with_an_alias(tmp_path):
    text = BASE.replace("cutmix: {protocols: [full]}",
                        "random: {method: scratch, protocols: [full, frozen]}")
    rspec = load_spec(write_spec(tmp_path, text))
    assert rspec.spec.protocols_of("random") == ["frozen", "full"]
    assert rspec.spec.plugin_of("random") == "scratch"


def test_protocol_outside_the_spec_is_rejected(tmp_path):
    path = write_spec(tmp_path, BASE.replace("[frozen, full]", "[full]")
                      .replace("cutmix: {protocols: [full]}", "scratch_b: {method: scratch, "
                               "protocols: [frozen]}"))
    line = only_problem(path)
    assert line.startswith(f"{path}:{CUTMIX_LINE}: methods.scratch_b.protocols: 'frozen' not among "
                           f"the spec's protocols (full) (got ['frozen'])")
    assert "add it to the top-level `protocols:`" in line  # the fix


@pytest.mark.parametrize("value,expected", [
    ("[froze]", "methods.cutmix.protocols.0: unknown protocol 'froze' (did you mean 'frozen'?); "
                "installed protocols: 'frozen', 'full', 'knn', 'linear', 'lora', 'probe', 'unfreeze' (got 'froze')"),
    ("[]", "methods.cutmix.protocols: List should have at least 1 item"),
    ("[full, full]", "methods.cutmix.protocols: duplicate entries: full"),
    ("full", "methods.cutmix.protocols: Input should be a valid list"),
])
def test_malformed_row_protocols(tmp_path, value, expected):
    path = write_spec(tmp_path, BASE.replace("{protocols: [full]}", f"{{protocols: {value}}}"))
    line = only_problem(path)
    assert line.startswith(f"{path}:{CUTMIX_LINE}: ") and expected in line, line


def test_method_alias_must_be_a_string(tmp_path):
    line = only_problem(write_spec(tmp_path, BASE.replace("cutmix: {protocols: [full]}",
                                                          "cutmix: {method: 5}")))
    assert "methods.cutmix.method: Input should be a valid string (got 5)" in line


def test_frozen_semisupervised_row_names_the_fix(tmp_path):
    path = write_spec(tmp_path, BASE.replace("cutmix: {protocols: [full]}", "cutmix:"))
    line = only_problem(path)
    assert line.startswith(f"{path}:{CUTMIX_LINE}: methods.cutmix: protocol 'frozen' is not "
                           "possible for a semi-supervised method (it trains the whole U-Net; no "
                           "separate encoder stage to freeze); give the row 'protocols: [full]'")
    # an explicit row list that includes frozen: the line and path of the row's own key
    path = write_spec(tmp_path, BASE.replace("{protocols: [full]}", "{protocols: [frozen, full]}"),
                      "explicit.yaml")
    assert only_problem(path).startswith(f"{path}:{CUTMIX_LINE}: methods.cutmix.protocols: protocol "
                                         "'frozen' is not possible")


def test_frozen_only_spec_with_a_semisupervised_row(tmp_path):
    path = write_spec(tmp_path, BASE.replace("[frozen, full]", "[frozen]")
                      .replace("cutmix: {protocols: [full]}", "cutmix:"))
    assert "add 'full' to the spec's protocols and give the row 'protocols: [full]'" in only_problem(path)


# --- plan ----------------------------------------------------------------------------------------

TWO_ROWS = TINY_SPEC.replace("methods: [scratch]",
                             "methods:\n  scratch:\n  cutmix: {protocols: [full], iterations: 2}")


def plan_of(tmp_path, text, name):
    registry = build_registry()
    rspec = load_spec(write_spec(tmp_path, text, f"{name}.yaml"), registry=registry)
    runner = Runner(rspec, registry, ArtifactStore(tmp_path / "store"), tmp_path / name, quiet=True)
    return rspec, runner.plan()[0]


def test_plan_builds_cells_for_each_rows_protocols(tmp_path):
    spec = TWO_ROWS.replace("folds: [fold1]", "folds: [fold1, fold2]") + "seeds: [0, 1]\n"
    rspec, plan = plan_of(tmp_path, spec, "two")
    cells = {(c.method, c.protocol) for c in plan.cells}
    assert cells == {("scratch", "frozen"), ("scratch", "full"), ("cutmix", "full")}
    assert len(plan.cells) == (2 + 1) * 2 * 2  # (protocols of each row) x folds x seeds
    assert _cell_count(rspec, build_registry()) == len(plan.cells)  # what `harness validate` prints


def test_stage_keys_do_not_depend_on_the_row_key(tmp_path):
    """A row without the key, with the key listing every protocol, or restricted to [full]:
    the cells they share have the same stage keys (existing store entries stay valid)."""
    def keys(text, name):
        _, plan = plan_of(tmp_path, text, name)
        return {c.cell_id: [s.key for s in c.stages()] for c in plan.cells}

    bare = keys(TINY_SPEC, "bare")
    listed = keys(TINY_SPEC.replace("methods: [scratch]",
                                    "methods:\n  scratch: {protocols: [frozen, full]}"), "listed")
    restricted = keys(TINY_SPEC.replace("methods: [scratch]",
                                        "methods:\n  scratch: {protocols: [full]}"), "restricted")
    assert listed == bare
    assert list(restricted) == ["scratch__full__frac1__fold1__seed0"]
    assert restricted["scratch__full__frac1__fold1__seed0"] == bare["scratch__full__frac1__fold1__seed0"]


# --- report --------------------------------------------------------------------------------------

def dice_record(method, protocol, fold, value):
    r = make_record(method, protocol, fold=fold, value=value, reference="tnbc")
    r["metric"] = {"name": "dice", "variant": None, "value": value}
    r["metrics"] = {"dice": {"dice": value, "per_image": [value, value]}}
    return r


def test_report_leaves_the_frozen_cell_of_a_full_only_row_empty(tmp_path):
    # the runner's order: scratch, cutmix (full only), supervised
    records = [dice_record(m, p, f"fold{i}", v + 0.01 * i)
               for m, protocols, v in (("scratch", ("frozen", "full"), 0.80),
                                       ("cutmix", ("full",), 0.81),
                                       ("supervised", ("frozen", "full"), 0.83))
               for p in protocols for i in range(3)]
    report = build_report(records, [RUN_INFO]).dump()
    assert method_order(report["rows"]) == ["scratch", "cutmix", "supervised"]  # the spec's order
    table = main_table(report)
    assert table.header == ["method", "frozen", "frozen paper", "frozen Δ", "full", "full paper",
                            "full Δ"]
    cutmix = next(row for row in table.rows if row[0] == "cutmix")
    assert cutmix[1:4] == ["-", "-", "-"]  # no frozen result, no paper value, no difference
    assert cutmix[4].startswith("0.8200 ± ") and cutmix[5] == "0.8190"  # Table A.2, full
    assert any("no result for the method in this column" in n for n in table.notes)
    assert "| cutmix | - | - | - | 0.8200" in to_markdown(table)
    # every format (figures and HTML included) renders with the hole
    paths = write_report(tmp_path / "out", records, RUN_INFO)
    assert {"report.md", "report.html", "report.json", "report.csv", "bars.png"} <= {p.name for p in paths}


def test_full_grid_tables_keep_the_record_order():
    records = [dice_record(m, p, "fold1", 0.8) for p in ("frozen", "full") for m in ("b", "a", "c")]
    assert method_order(build_report(records, [RUN_INFO]).dump()["rows"]) == ["b", "a", "c"]
    note = "no result for the method in this column"
    assert not any(note in n for n in main_table(build_report(records, [RUN_INFO]).dump()).notes)
