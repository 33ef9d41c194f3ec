"""Fitted curves, compute multipliers and the plan: stores generated from known curves with
seed noise, and the paper's published points."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from helpers import cli

from harness.cost.estimate import study_costs
from harness.errors import HarnessError
from harness.spec.study import load
from reports.aggregate import aggregate, with_rows
from reports.analyses.scaling import POWER, SATURATING, analyse, quality_of
from reports.plan import plan_rows
from reports.published import QUALITIES, published_analysis, published_frame
from reports.records import records_frame
from reports.synthetic import write_store

ROOT = Path(__file__).parents[2]
# The error of dense at training compute C (exaFLOPs); Soft MoE's is dense's at 4 C, so Soft
# MoE reaches every dense quality at exactly 4x less compute.
FLOOR, AMP, ALPHA, C_REF, SAVING = 0.15, 0.25, 0.5, 1e-7, 4.0
MODELS = ["vit-w32d2h2m64/4", "vit-w48d2h2m96/4", "vit-w64d2h4m128/4", "vit-w96d2h4m192/4",
          "vit-w128d2h4m256/4", "vit-w192d2h4m384/4"]
STUDY = """\
name: curves
data: {{name: synthetic, image_size: 16}}
train: {{steps: 200, batch_size: 64}}
fixed: {{moe_layers: "last:1"}}
grid:
  model: [{models}]
  router: [dense, soft]
  num_experts: [8]
  seed: [0, 1, 2]
"""


def true_error(router: str, exaflops: float) -> float:
    scale = SAVING if router == "soft" else 1.0
    return FLOOR + AMP * (scale * exaflops / C_REF) ** -ALPHA


def curve_study(tmp_path: Path, models=MODELS) -> Path:
    path = tmp_path / "curves.yaml"
    path.write_text(STUDY.format(models=", ".join(models)))
    return path


def curve_records(study_file: Path, noise: float = 0.01, seed: int = 0,
                  offsets: dict[str, float] | None = None) -> list[dict]:
    """One ok record per grid point of the study: its dry-run costs, and a test accuracy
    from the known curve plus Gaussian seed noise (``offsets`` shifts a router)."""
    study = load(study_file, [], None)
    specs = study.expand()
    rng = np.random.default_rng(seed)
    out = []
    for spec, cost in zip(specs, study_costs(study, specs), strict=True):
        error = true_error(spec.router, cost.train_exaflops) + rng.normal(0, noise)
        error -= (offsets or {}).get(spec.router, 0.0)
        out.append({**spec.flat(), "status": "ok", "gflops_per_image": cost.gflops_per_image,
                    "train_exaflops": cost.train_exaflops, "test_accuracy": 1 - error})
    return out


def analysis_of(records, **kw):
    return analyse(with_rows(aggregate(records_frame(records))),
                   quality_of("test_accuracy"), costs=("train_exaflops",), **kw)


# --------------------------------------------------------------------------- recovery


def test_fits_recover_the_known_curves_within_their_intervals(tmp_path):
    study = curve_study(tmp_path)
    hits = {"E": 0, "alpha": 0, "A": 0, "saving": 0}
    runs = 20
    for seed in range(runs):
        analysis = analysis_of(curve_records(study, seed=seed))
        dense = analysis.curve("dense", "train_exaflops")
        assert dense.kind == SATURATING and dense.points.cost.size == 6
        iv = dense.intervals()
        truth = {"E": FLOOR, "alpha": ALPHA, "A": AMP * (dense.c0 / C_REF) ** -ALPHA}
        for key, value in truth.items():
            hits[key] += iv[key][0] <= value <= iv[key][1]
        saving = analysis.between("soft", "dense", "train_exaflops")
        assert saving.better == "soft" and not saving.extrapolated
        ratio, lo, hi = saving.middle
        hits["saving"] += lo <= SAVING <= hi
        assert 2.5 < ratio < 6.5
    # 95% intervals: at least 16 of 20 cover the truth (a miscalibrated interval fails this)
    assert all(n >= 16 for n in hits.values()), hits


def test_point_estimates_are_close_without_noise(tmp_path):
    analysis = analysis_of(curve_records(curve_study(tmp_path), noise=0.0))
    dense = analysis.curve("dense", "train_exaflops")
    e, a, alpha = dense.params
    assert e == pytest.approx(FLOOR, abs=2e-3) and alpha == pytest.approx(ALPHA, rel=0.02)
    assert a == pytest.approx(AMP * (dense.c0 / C_REF) ** -ALPHA, rel=0.02)
    saving = analysis.between("soft", "dense", "train_exaflops")
    assert all(r == pytest.approx(SAVING, rel=0.03) for r in saving.ratios)
    assert saving.trend.startswith("steady")


def test_fewer_points_get_a_plain_power_law_then_a_refusal(tmp_path):
    four = analysis_of(curve_records(curve_study(tmp_path, MODELS[:4])))
    assert four.curve("dense", "train_exaflops").kind == POWER
    assert four.curve("dense", "train_exaflops").params[0] == 0.0  # no floor fitted
    two = analysis_of(curve_records(curve_study(tmp_path, MODELS[:2])))
    curve = two.curve("dense", "train_exaflops")
    assert curve.kind is None and "2 distinct" in curve.note and "at least 3" in curve.note
    assert two.multipliers == []


def test_curves_use_the_front_only(tmp_path):
    """A badly tuned configuration (dominated) does not pull the curve down."""
    records = curve_records(curve_study(tmp_path), noise=0.0)
    bad = [{**r, "lr": 1.0, "run_id": r["run_id"] + "x", "test_accuracy": 0.05}
           for r in records if r["router"] == "dense"]
    dense = analysis_of(records + bad).curve("dense", "train_exaflops")
    assert dense.points.cost.size == 6 and min(dense.points.quality) > 0.3
    assert dense.params[2] == pytest.approx(ALPHA, rel=0.02)


def test_predicted_cost_for_a_quality_and_its_interval(tmp_path):
    analysis = analysis_of(curve_records(curve_study(tmp_path), seed=3))
    soft = analysis.curve("soft", "train_exaflops")
    target_error = 0.25
    truth = C_REF * ((target_error - FLOOR) / AMP) ** (-1 / ALPHA) / SAVING
    point, lo, hi = soft.cost_for(1 - target_error)
    assert lo <= truth <= hi and lo < point < hi
    assert soft.cost_for(1 - FLOOR / 2)[0] == float("inf")  # below the floor: never


# --------------------------------------------------------------------------- the paper


def test_published_points_reproduce_soft_moe_b16_matching_vit_h14():
    analysis = published_analysis(QUALITIES[0])  # JFT-4B precision@1
    flops = {(m.config, m.target): m for m in analysis.matches["eval_gflops_per_img"]}
    match = flops[("Soft MoE B/16 128E", "ViT H/14")]
    assert (match.quality, match.target_quality) == (60.0, 59.7)
    assert (match.cost_value, match.target_cost) == (32.0, 334.2)
    assert match.ratio == pytest.approx(10.44, abs=0.01)
    # the largest measured saving on eval FLOPs is this very comparison
    assert analysis.matches["eval_gflops_per_img"][0] is match
    time = {(m.config, m.target): m for m in analysis.matches["eval_ms_per_img"]}
    assert time[("Soft MoE B/16 128E", "ViT H/14")].ratio == pytest.approx(5.73, abs=0.01)
    # the fits: Soft MoE saves eval FLOPs over the whole common range, with an interval
    saving = analysis.between("soft", "dense", "eval_gflops_per_img")
    assert saving.better == "soft" and not saving.extrapolated
    assert all(lo > 2 for lo, _ in saving.intervals)


def test_published_frame_is_the_papers_table():
    frame = published_frame()
    assert frame.height == 10
    h14 = frame.filter((pl.col("model") == "vit-h/14") & (pl.col("router") == "dense")).row(
        0, named=True)
    assert h14["eval_gflops_per_img_mean"] == 334.2 and h14["eval_ms_per_img_mean"] == 8.6
    assert h14["jft_precision_at_1_mean"] == 59.7 and h14["imagenet_10shot_mean"] == 83.3


def test_the_docs_page_of_the_published_points_is_current():
    from reports.published import markdown

    page = (ROOT / "docs" / "scaling-published.md").read_text()
    assert page == markdown(), "regenerate: python -m reports.published docs/scaling-published.md"
    assert "| Soft MoE B/16 128E | ViT H/14 | eval GFLOP/img (2 FLOPs/MAC) | 60 vs 59.7" in page
    assert "at 32 vs 334.2 eval GFLOP/img (2 FLOPs/MAC) (10.4x less); 1.5 vs 8.6" in page
    assert "(5.73x less)" in page


# --------------------------------------------------------------------------- report and plan


@pytest.mark.slow
def test_report_section_json_and_plan_on_a_store(tmp_path):
    study = curve_study(tmp_path)
    results = tmp_path / "results"
    write_store(curve_records(study, seed=1), results / "curves" / "runs")
    out = tmp_path / "report.json"
    cli("report", study, "--results", results, "--json", out)
    page = (results / "curves" / "report.html").read_text()
    assert 'id="fits"' in page and 'id="fig-fit-train_exaflops"' in page
    assert "Fitted curves and compute multipliers" in page
    data = json.loads(out.read_text())
    saving = next(m for m in data["scaling"]["multipliers"] if m["cost"] == "train_exaflops")
    assert saving["better"] == "soft" and saving["other"] == "dense"
    lo, hi = saving["intervals"][1]
    assert lo <= SAVING <= hi
    compute = next(c for c in data["claims"] if c["key"] == "compute")
    assert compute["status"] == "held"  # 4x, interval above 2x

    # plan: the cheapest configuration whose TRUE error is <= 0.3, per router
    target = 0.70
    plan_json = tmp_path / "plan.json"
    proc = cli("plan", study, "--results", results, "--target-quality", target,
               "--json", plan_json)
    assert "PREDICTED" in proc.stdout and "no memory model" not in proc.stdout
    assert "memory plan's estimated peak" in proc.stdout
    rows = {r["router"]: r for r in json.loads(plan_json.read_text())}
    specs = load(study, [], None).expand()
    for router in ("dense", "soft"):
        costs = sorted({c.train_exaflops: c.spec for c, s in zip(
            study_costs(load(study, [], None), specs), specs, strict=True)
            if s.router == router}.items())
        cheapest = next(spec for exa, spec in costs if 1 - true_error(router, exa) >= target)
        row = rows[router]
        assert row["spec"] == cheapest and row["prediction"] is True
        lo, hi = row["predicted_interval"]
        assert lo <= row["predicted"] <= hi and row["predicted"] >= target
        assert row["gpu_hours"] is None  # CPU runs
        assert row["memory"].endswith(" GB/process") and float(row["memory"].split()[0]) > 0
    assert rows["soft"]["train_exaflops"] < rows["dense"]["train_exaflops"]


@pytest.mark.slow
def test_plan_without_runs_is_one_line_and_exit_2(tmp_path):
    proc = cli("plan", curve_study(tmp_path), "--results", tmp_path / "results",
               "--target-quality", 0.7, check=False)
    assert proc.returncode == 2 and "run the study first" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


def test_plan_refuses_a_target_outside_the_metric(tmp_path):
    study = curve_study(tmp_path)
    frame = records_frame(curve_records(study))
    with pytest.raises(HarnessError, match="--target-quality 70 is outside .* between 0 and 1"):
        plan_rows(load(study, [], None), frame, 70.0, source="results/curves/runs")
    with pytest.raises(HarnessError, match="'router_slot_entropy' is not a quality metric"):
        plan_rows(load(study, [], None), frame, 0.7, "router_slot_entropy")


def test_plan_refuses_nan_and_shows_gpu_hours_of_gpu_runs_only(tmp_path, capsys):
    from harness.cli import run_cli

    study = curve_study(tmp_path)
    frame = records_frame(curve_records(study))
    for target in (math.nan, math.inf):
        with pytest.raises(HarnessError, match="--target-quality .*: give a finite number"):
            plan_rows(load(study, [], None), frame, target, source="results/curves/runs")
    assert run_cli(["plan", str(study), "--target-quality", "nan"]) == 2
    assert "Invalid value for '--target-quality'" in capsys.readouterr().err
    cpu = plan_rows(load(study, [], None), frame, 0.7, source="runs")
    gpu = plan_rows(load(study, ["train.device=cuda"], None), frame, 0.7, source="runs")
    assert [r.router for r in cpu] == [r.router for r in gpu] == ["dense", "soft"]
    assert all(r.gpu_hours is None and r.needed_gpu_hours is None for r in cpu)
    assert all(r.gpu_hours > 0 and r.needed_gpu_hours > 0 for r in gpu)


def test_small_study_gets_the_note_not_a_curve(tmp_path):
    from reports.page.render import render_report

    records = curve_records(curve_study(tmp_path, MODELS[:2]))
    page = render_report(records_frame(records), study_name="tiny")
    assert 'id="fits"' in page and 'id="fits-note"' in page
    assert "fewer than 3 distinct costs" in page and "fig-fit-" not in page
    assert page.count("distinct costs on the front") == 1  # one note, not one per curve
    assert "<td>refused</td>" not in page


def test_only_matches_that_save_beyond_equal_cost_are_listed():
    from reports.analyses.fits import MIN_SAVING, match_rows, saves, small_matches
    from reports.analyses.scaling import Analysis, Match

    def match(target_cost):
        return Match("soft", "a", 0.8, 1.0, "dense", "b", 0.79, target_cost, 0.01)

    found = [match(1.01), match(1.02), match(2.0)]
    analysis = Analysis(quality=None, curves=[], multipliers=[],
                        matches={"gflops_per_image": found})
    assert [saves(m) for m in found] == [False, False, True] and MIN_SAVING == 0.05
    assert len(match_rows(analysis)) == 1 and small_matches(analysis) == 2


def test_a_multiplier_without_common_quality_says_it_is_extrapolated(tmp_path):
    from reports.analyses.claims import INCONCLUSIVE, soft_saves_compute
    from reports.analyses.fits import multiplier_rows

    records = curve_records(curve_study(tmp_path), offsets={"dense": -0.3})  # dense far worse
    analysis = analysis_of(records)
    saving = analysis.between("soft", "dense", "train_exaflops")
    assert saving.extrapolated and "extrapolated" in saving.note
    assert "extrapolated" in multiplier_rows(analysis)[0][-1]
    verdict = soft_saves_compute(aggregate(records_frame(records)))
    assert verdict.status == INCONCLUSIVE and "extrapolation" in verdict.evidence


def test_the_section_escapes_record_text(tmp_path):
    from reports.page.html import figure_html
    from reports.page.sections import scaling_section_body

    records = [{**r, "model": r["model"] + "<script>alert(1)</script>"}
               for r in curve_records(curve_study(tmp_path))]
    agg = with_rows(aggregate(records_frame(records)))
    body = scaling_section_body(agg, None, figure_html)
    assert "<script>alert" not in body and "&lt;script&gt;alert(1)" in body
    assert 'id="fig-fit-train_exaflops"' in body


def test_the_readmes_plan_example_study_gives_every_router_a_plan():
    """studies/quickstart_curves.yaml (the README's `plan` example) has three training costs
    per router: with any finished runs whose quality rises with compute, each router gets
    its cheapest configuration reaching the target (in the quickstart, one width, dense and
    the sparse routers have too few costs for a curve)."""
    study_file = ROOT / "studies" / "quickstart_curves.yaml"
    study = load(study_file, [], None)
    frame = records_frame(curve_records(study_file, noise=0.002))
    rows = plan_rows(study, frame, 0.5, source="results/quickstart-curves/runs")
    assert sorted(r.router for r in rows) == sorted(
        ["dense", "soft", "tokens_choice", "experts_choice"])
    assert all(r.spec is not None and r.predicted >= 0.5 for r in rows), rows
    quick = ROOT / "studies" / "quickstart.yaml"
    quick_rows = plan_rows(load(quick, [], None), records_frame(
        curve_records(quick, noise=0.002)), 0.5, source="q")
    assert {r.router for r in quick_rows if r.spec is None} >= {"dense", "tokens_choice"}
