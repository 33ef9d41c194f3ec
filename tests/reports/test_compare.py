"""Two studies compared (reports.analyses.studies): a study against itself flags nothing; accuracy
shifted by 5 seed standard deviations is flagged; disjoint grids say nothing matches."""

from __future__ import annotations

import json
import math

import plotly.graph_objects as go
import pytest
from fixtures.laws import SIZES, joint, law_records, study_file

from reports.analyses.studies import NOTHING, compare, compare_text, config_key
from reports.figures.laws import fig_compare_fronts

LAW = joint(-0.12, -0.06, 0.01, math.log(0.25), 1e5)
SEED_SD = 0.01


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    return study_file(tmp_path_factory.mktemp("compare"))


def test_a_study_against_itself_flags_nothing(study):
    records = law_records(study, LAW, noise=SEED_SD, seed=0)
    data = compare(records, records, names=("before", "after"))
    assert data["matched"] == 15 and data["only_a"] == data["only_b"] == 0
    assert data["flagged"] == [] and data["note"] is None
    assert {"test_accuracy", "train_exaflops", "gflops_per_image"} <= set(data["metrics"])
    row = data["rows"][0]
    assert row["seeds_a"] == row["seeds_b"] == 3
    change = row["changes"]["test_accuracy"]
    assert change["change"] == 0 and change["interval"][0] < 0 < change["interval"][1]
    assert json.loads(json.dumps(data)) == data
    assert compare_text(data).splitlines() == [data["summary"]]
    assert "15 configurations in both" in data["summary"]


def test_accuracy_shifted_by_five_seed_deviations_is_flagged(study):
    a = law_records(study, LAW, noise=SEED_SD, seed=0)
    b = [{**r, "test_accuracy": r["test_accuracy"] + 5 * SEED_SD}
         for r in law_records(study, LAW, noise=SEED_SD, seed=1)]
    data = compare(a, b)
    flagged = {(f["config"], f["metric"]) for f in data["flagged"]}
    assert {m for _, m in flagged} == {"test_accuracy"}  # the costs did not change
    assert len(flagged) == data["matched"] == 15
    first = data["flagged"][0]
    assert first["change"] == pytest.approx(5 * SEED_SD, abs=3 * SEED_SD)
    assert first["interval"][0] > 0
    text = compare_text(data)
    assert "15 changes beyond the seed noise" in text and "test accuracy" in text
    assert len(text.splitlines()) == 16


def test_disjoint_grids_say_nothing_matches_in_one_line(tmp_path):
    a = law_records(study_file(tmp_path, "small", models=SIZES[:1]), LAW)
    b = law_records(study_file(tmp_path, "large", models=SIZES[1:]), LAW)
    data = compare(a, b, names=("small", "large"))
    assert data["matched"] == 0 and data["rows"] == [] and data["flagged"] == []
    assert data["note"].startswith(NOTHING) and "\n" not in data["note"]
    assert compare_text(data) == data["note"]
    assert data["fronts"]["a"] and data["fronts"]["b"]  # each study still has its front
    json.dumps(data)


def test_matching_ignores_the_seed_and_what_it_is_told_to(study):
    records = law_records(study, LAW, noise=SEED_SD)
    assert len({config_key(r) for r in records}) == 15
    other = [{**r, "spec_json": r["spec_json"].replace('"repeats":5', '"repeats":1')}
             for r in records]
    assert compare(records, other)["matched"] == 0
    assert compare(records, other, ignore=("measure",))["matched"] == 15
    flat = [{k: v for k, v in r.items() if k != "spec_json"} for r in records]
    data = compare(records, flat)  # a side without spec_json: the flat columns match
    assert data["matched"] == 15 and data["matched_on"].startswith("the flat spec columns")


def test_the_pareto_fronts_make_one_figure(study):
    a = law_records(study, LAW, noise=SEED_SD)
    b = [{**r, "test_accuracy": r["test_accuracy"] + 0.02} for r in a]
    data = compare(a, b, names=("A", "B+0.02"))
    fronts = data["fronts"]
    assert fronts["cost"] == "train_exaflops" and fronts["quality"] == "test_accuracy"
    assert [p["cost"] for p in fronts["a"]] == sorted(p["cost"] for p in fronts["a"])
    qualities = [p["quality"] for p in fronts["b"]]
    assert qualities == sorted(qualities)  # a front rises with cost
    fig = fig_compare_fronts(data)
    assert [t["name"] for t in fig["data"]] == ["A", "B+0.02"]
    go.Figure(fig)


def test_the_changes_as_table_rows(study):
    from reports.analyses.law_tables import COMPARE_HEADERS, compare_rows

    a = law_records(study, LAW, noise=SEED_SD, seed=0)
    b = [{**r, "test_accuracy": r["test_accuracy"] + 5 * SEED_SD} for r in a]
    data = compare(a, b)
    rows = compare_rows(data)
    assert len(rows) == 15 and all(len(r) == len(COMPARE_HEADERS) for r in rows)
    assert rows[0][1] == "test accuracy" and rows[0][4].endswith("(flagged)")
    assert len(compare_rows(data, flagged_only=False)) > len(rows)
