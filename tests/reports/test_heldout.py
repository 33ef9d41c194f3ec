"""Held-out checks (reports.analyses.heldout): a law that bends at the largest costs is flagged, a
clean one is not, for the per-router cost curves and the joint law alike."""

from __future__ import annotations

import json
import math

import pytest
from fixtures.laws import bent, flattened, joint, law_records, study_file

from reports.aggregate import aggregate
from reports.analyses.heldout import check_json, curve_checks, flagged_curve, law_check, law_checks
from reports.analyses.laws import LOG, joint_laws
from reports.analyses.scaling import analyse, quality_of
from reports.records import records_frame

N0 = 1e5
LAW = joint(-0.12, -0.06, 0.01, math.log(0.25), N0)
CURVE_SIZES = ("vit-w32d2h2m64/4", "vit-w48d2h2m96/4", "vit-w64d2h4m128/4",
               "vit-w96d2h4m192/4", "vit-w128d2h4m256/4", "vit-w192d2h4m384/4")
DRAWS = 10


def curve(n, e, cost, router):
    """Dense's error at training compute C; Soft MoE's is dense's at 4 C."""
    return 0.15 + 0.25 * ((4.0 if router == "soft" else 1.0) * cost / 1e-7) ** -0.5


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("heldout")


def curves_of(records):
    return analyse(aggregate(records_frame(records)), quality_of("test_accuracy"),
                   costs=("train_exaflops",))


def knees(records) -> dict[str, float]:
    """Each router's second-highest training compute: the bend starts there."""
    costs: dict[str, set] = {}
    for r in records:
        costs.setdefault(r["router"], set()).add(r["train_exaflops"])
    return {router: sorted(c)[-2] for router, c in costs.items()}


def test_curves_flag_a_law_that_flattens_at_the_largest_cost(folder):
    study = study_file(folder, "curves", models=CURVE_SIZES, experts=(8,))
    knee = knees(law_records(study, curve))
    flat = flattened(curve, knee, keep=0.2)  # the last step gains a fifth of the law's gain
    clean_flags, bent_flags = 0, 0
    for seed in range(DRAWS):
        clean = curve_checks(curves_of(law_records(study, curve, noise=0.005, seed=seed)))
        assert [(h.router, h.axis) for h in clean] == [("dense", "train_exaflops"),
                                                       ("soft", "train_exaflops")]
        clean_flags += sum(h.flagged for h in clean)
        checks = curve_checks(curves_of(law_records(study, flat, noise=0.005, seed=seed)))
        bent_flags += sum(h.flagged for h in checks)
    assert clean_flags <= 2, clean_flags  # 95% intervals: about 1 in 20 by chance
    assert bent_flags >= 2 * DRAWS - 4, bent_flags


def test_a_curve_check_reads_as_a_sentence_and_as_json(folder):
    study = study_file(folder, "curves", models=CURVE_SIZES, experts=(8,))
    flat = flattened(curve, knees(law_records(study, curve)), keep=0.2)
    analysis = curves_of(law_records(study, flat, noise=0.005, seed=0))
    dense = next(h for h in curve_checks(analysis) if h.router == "dense")
    assert dense.flagged and dense.checked and len(dense.predicted) == 1
    text = dense.sentence()
    assert "predicted test accuracy" in text and " ± " in text and "measured" in text
    assert "OUTSIDE the 95% interval" in text and "FLAGGED" in text
    data = json.loads(json.dumps(check_json(dense)))
    assert data["flagged"] is True and data["errors"][0] < 0
    assert flagged_curve([dense], analysis.curve("dense", "train_exaflops")) is dense
    clean = curve_checks(curves_of(law_records(study, curve, noise=0.005, seed=0)))
    assert not clean[0].flagged and "inside the 95% interval" in clean[0].sentence()


def test_a_curve_with_too_few_points_to_hold_one_out_says_so(folder):
    study = study_file(folder, "three", models=CURVE_SIZES[:3], experts=(8,))
    analysis = curves_of(law_records(study, curve, noise=0.005))
    check = curve_checks(analysis)[0]
    assert not check.checked and not check.flagged
    assert "leaves 2 distinct costs, a fit needs at least 3" in check.sentence()


def test_joint_laws_flag_a_law_that_bends_at_the_largest_costs(folder):
    study = study_file(folder, "laws")
    knee = sorted({r["train_exaflops"] for r in law_records(study, LAW)})[-2]
    bending = bent(LAW, knee, power=1.0)  # the costliest point loses ~25% of its error
    clean_flags, bent_flags = 0, 0
    for seed in range(DRAWS):
        clean = joint_laws(law_records(study, LAW, noise=0.01, seed=seed), n0=N0,
                           transform=LOG)
        clean_flags += law_checks(clean)[0].flagged
        laws = joint_laws(law_records(study, bending, noise=0.01, seed=seed), n0=N0,
                          transform=LOG)
        bent_flags += law_checks(laws)[0].flagged
    assert clean_flags <= 1 and bent_flags == DRAWS, (clean_flags, bent_flags)
    check = law_check(laws[0])
    assert check.kind == "surface" and "e32" in check.held[0] and "FLAGGED" in check.sentence()


def test_the_checks_as_table_rows_and_plan_warnings(folder):
    from reports.analyses.heldout import warnings_by_router
    from reports.analyses.law_tables import HELDOUT_HEADERS, heldout_rows

    study = study_file(folder, "curves", models=CURVE_SIZES, experts=(8,))
    flat = flattened(curve, knees(law_records(study, curve)), keep=0.2)
    checks = curve_checks(curves_of(law_records(study, flat, noise=0.005, seed=0)))
    rows = heldout_rows(checks)
    assert len(rows) == 2 and all(len(r) == len(HELDOUT_HEADERS) for r in rows)
    assert rows[0][-1].startswith("NO: outside")
    warnings = warnings_by_router(checks)
    assert "dense" in warnings and "FLAGGED" in warnings["dense"]
    assert warnings_by_router(checks, cost="gflops_per_image") == {}


def test_the_huber_refit_of_each_curve_converges_and_agrees(folder):
    from reports.analyses.robust import disagreements, huber_refits, refit_json

    study = study_file(folder, "curves", models=CURVE_SIZES, experts=(8,))
    exact = huber_refits(curves_of(law_records(study, curve)))
    assert [f.router for f in exact] == ["dense", "soft"]
    for fit in exact:
        assert fit.converged and "5 of 5 starts reached the best objective" in fit.convergence
        assert fit.params["E"] == pytest.approx(0.15, abs=1e-6)
        assert fit.params["alpha"] == pytest.approx(0.5, rel=1e-6)
        assert not fit.floor_at_bound
    noisy = huber_refits(curves_of(law_records(study, curve, noise=0.005, seed=1)))
    assert disagreements(noisy) == []
    assert json.loads(json.dumps(refit_json(noisy[0])))["converged"] is True
    four = huber_refits(curves_of(law_records(
        study_file(folder, "four", models=CURVE_SIZES[:4], experts=(8,)), curve)))
    assert all(f.params["E"] == 0.0 for f in four)  # a plain power law, as the curve
