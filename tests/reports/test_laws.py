"""The joint law over size and expert count (reports.analyses.laws): stores generated from
known laws with seed noise recover the law's parameters and its effective parameter multiplier
within their intervals; exact data recover them exactly; a grid too small gets the note."""

from __future__ import annotations

import json
import math

import plotly.graph_objects as go
import pytest
from fixtures.laws import EXPERTS, SIZES, joint, law_records, study_file
from scipy.optimize import brentq

from reports.analyses.lawfit import saturated
from reports.analyses.laws import (
    LOG,
    SATURATING,
    TOO_SMALL,
    joint_laws,
    law_json,
    law_surface,
    multiplier_rows,
)
from reports.analyses.specs import backbone_params
from reports.figures.laws import fig_joint_law

A, B, C, D, N0 = -0.12, -0.06, 0.01, math.log(0.25), 1e5
TRUTH = {"a": A, "b": B, "c": C, "d": D}
LAW = joint(A, B, C, D, N0)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    return study_file(tmp_path_factory.mktemp("laws"))


def soft_law(records, **kw):
    laws = joint_laws(records, n0=N0, **kw)
    assert [law.router for law in laws] == ["soft"]
    return laws[0]


def true_multiplier(n: float, e: float, law=LAW) -> float:
    """N' / N by root finding on the true law: L(N', 1) = L(N, E)."""
    target = law(n, e, 0.0, "soft")
    return math.exp(brentq(lambda x: law(math.exp(x), 1.0, 0.0, "dense") - target,
                           math.log(n) - 20, math.log(n) + 20, xtol=1e-14)) / n


def test_exact_data_recover_the_law_and_its_multiplier(study):
    law = soft_law(law_records(study, LAW))
    assert law.transform == LOG and "plain log E" in law.note
    assert law.converged and "starts reached the best objective" in law.convergence
    assert law.points.grid == (3, 5)  # dense joins as E = 1
    assert law.params == pytest.approx([A, B, C, D], abs=1e-6)
    sizes = sorted({backbone_params(r) for r in law_records(study, LAW)})
    for n in sizes:
        for e in EXPERTS:
            assert law.multiplier(n, e)[0] == pytest.approx(true_multiplier(n, e), rel=1e-6)
    rows = multiplier_rows(law)
    assert len(rows) == len(sizes) * len(EXPERTS) and all(r["multiplier"] > 1 for r in rows)


def test_noisy_stores_recover_parameters_and_multiplier_within_intervals(study):
    n_mid = sorted({backbone_params(r) for r in law_records(study, LAW)})[1]
    truth_m = true_multiplier(n_mid, 16)
    hits = dict.fromkeys([*TRUTH, "multiplier"], 0)
    for seed in range(20):
        law = soft_law(law_records(study, LAW, noise=0.01, seed=seed), transform=LOG)
        iv = law.intervals()
        for key, value in TRUTH.items():
            hits[key] += iv[key][0] <= value <= iv[key][1]
        _, lo, hi = law.multiplier(n_mid, 16)
        hits["multiplier"] += lo <= truth_m <= hi
    # 95% intervals: at least 16 of 20 draws cover the truth
    assert all(n >= 16 for n in hits.values()), hits


def test_a_saturating_law_is_recognised_and_recovered_exactly(tmp_path):
    e_start, e_max = 1.8, 24.0

    def law(n, e, cost, router):
        x, z = math.log(n / N0), math.log(float(saturated(e, e_start, e_max)))
        return math.exp(D + A * x + B * z + C * x * z)

    study = study_file(tmp_path, experts=(2, 4, 8, 16, 32, 64, 128), seeds=1)
    fitted = soft_law(law_records(study, law), n_boot=20)
    assert fitted.transform == SATURATING and "saturating" in fitted.note
    assert fitted.names == ("a", "b", "c", "d", "E_start", "E_max")
    assert fitted.params == pytest.approx([A, B, C, D, e_start, e_max], rel=1e-6, abs=1e-6)
    n = sorted({backbone_params(r) for r in law_records(study, law)})[1]
    assert fitted.multiplier(n, 32)[0] == pytest.approx(true_multiplier(n, 32, law), rel=1e-6)


def test_a_grid_too_small_gets_the_note_not_a_fit(tmp_path):
    one_size = study_file(tmp_path, "one", models=SIZES[:1])
    law = soft_law(law_records(one_size, LAW))
    assert not law.fitted and law.note.startswith(TOO_SMALL)
    assert "has 1 size × 5 expert counts" in law.note
    two_counts = study_file(tmp_path, "two", experts=(8,))
    law = soft_law(law_records(two_counts, LAW))
    assert not law.fitted and "has 3 sizes × 2 expert counts" in law.note
    assert multiplier_rows(law) == [] and law_json(law)["transform"] is None
    assert fig_joint_law([law]) is None


def test_the_best_configuration_of_each_point_is_fitted(study):
    """A worse learning rate at every point is left out (and counted), not averaged in."""
    records = law_records(study, LAW)
    worse = [{**r, "lr": 0.1, "run_id": r["run_id"] + "x",
              "spec_json": r["spec_json"].replace('"lr":0.001', '"lr":0.1'),
              "test_accuracy": r["test_accuracy"] - 0.2} for r in records]
    law = soft_law(records + worse)
    assert law.points.dropped == law.points.n.size
    assert law.params == pytest.approx([A, B, C, D], abs=1e-6)


def test_surface_json_and_figure_are_plain_data(study):
    law = soft_law(law_records(study, LAW, noise=0.01, seed=1), n_boot=50)
    surface = law_surface(law, steps=7)
    assert len(surface["quality"]) == 7 and len(surface["quality"][0]) == 7
    assert surface["num_experts"][0] == 1 and surface["num_experts"][-1] == max(EXPERTS)
    assert len(surface["measured"]["quality"]) == law.points.n.size
    payload = json.loads(json.dumps(law_json(law)))
    assert payload["transform"] == law.transform and set(payload["params"]) == set(TRUTH)
    assert payload["multipliers"][0]["interval"][0] <= payload["multipliers"][0]["multiplier"]
    fig = fig_joint_law([law], steps=7, points=True)
    json.dumps(fig)
    assert [t["type"] for t in fig["data"]] == ["surface", "scatter3d"]
    assert len(fig_joint_law([law], steps=7)["data"]) == 1  # one trace per router
    go.Figure(fig)  # valid plotly


def test_the_tables_rows(study, tmp_path):
    from reports.analyses.law_tables import (
        LAW_HEADERS,
        MULTIPLIER_HEADERS,
        law_multiplier_rows,
        law_rows,
    )

    law = soft_law(law_records(study, LAW, noise=0.01, seed=2), n_boot=50, transform=LOG)
    small = soft_law(law_records(study_file(tmp_path, "one", models=SIZES[:1]), LAW))
    rows = law_rows([law, small])
    assert all(len(r) == len(LAW_HEADERS) for r in rows)
    assert rows[0][2] == LOG and rows[0][8].startswith("converged")
    assert rows[1][2] == "refused" and rows[1][-1].startswith(TOO_SMALL)
    multipliers = law_multiplier_rows([law, small])
    assert len(multipliers) == 12 and all(len(r) == len(MULTIPLIER_HEADERS) for r in multipliers)
    assert "x [" in multipliers[0][4]
