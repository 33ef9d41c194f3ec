"""The scaling analyses wired into the product: the report's sections (joint laws, held-out
checks, planned against measured) and ``report --json``, ``export``'s planned columns,
``moe-harness compare``, ``run --dry-run --calibrate-from`` and ``plan``'s held-out warning,
on stores generated from known laws (tests/fixtures/laws.py)."""

from __future__ import annotations

import json
import math

import polars as pl
import pytest
from fixtures.laws import SIZES, flattened, joint, law_records, study_file
from helpers import cli
from rich.console import Console

from harness.results.store import Store
from harness.spec.study import load
from reports.analyses.findings import LARGE_STORE_BOOT, bootstrap_count, findings, findings_json
from reports.analyses.planned import PLANNED_COLUMNS
from reports.analyses.scaling import N_BOOT
from reports.export import export_tables
from reports.page.render import render_report
from reports.plan import plan_json, plan_rows, print_plan
from reports.records import records_frame

LAW = joint(-0.12, -0.06, 0.01, math.log(0.25), 1e5)
SEED_SD = 0.01
MEASURED = {"flops_counter": "fvcore", "train_time_s": 10.0, "steps_done": 200,
            "device": "cpu (test)"}  # 50 ms per step: the law stores train 200 steps
CURVE_SIZES = ("vit-w32d2h2m64/4", "vit-w48d2h2m96/4", "vit-w64d2h4m128/4",
               "vit-w96d2h4m192/4", "vit-w128d2h4m256/4", "vit-w192d2h4m384/4")


def curve(n, e, cost, router):
    """Dense's error at training compute C; Soft MoE's is dense's at 4 C."""
    return 0.15 + 0.25 * ((4.0 if router == "soft" else 1.0) * cost / 1e-7) ** -0.5


def knees(records) -> dict[str, float]:
    costs: dict[str, set] = {}
    for r in records:
        costs.setdefault(r["router"], set()).add(r["train_exaflops"])
    return {router: sorted(c)[-2] for router, c in costs.items()}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("wiring")


@pytest.fixture(scope="module")
def study(folder):
    return study_file(folder, "laws")


def store_with(root, name: str, records) -> Store:
    store = Store(root, name)
    for record in records:
        store.write({**record, "study": name})
    return store


# --------------------------------------------------------------------------- the report


def test_the_page_has_the_joint_law_the_heldout_checks_and_planned_against_measured(study):
    records = law_records(study, LAW, noise=SEED_SD, **MEASURED)
    page = render_report(records_frame(records), study_name="laws")
    assert '<section id="laws"><h2>Joint law over size and experts</h2>' in page
    assert '<div class="plot-3d" id="fig-joint-law">' in page
    assert "Effective parameter multipliers" in page
    assert "Do the fits extrapolate?" in page and 'class="heldout"' in page
    assert "Do the laws extrapolate?" in page and 'class="law-heldout"' in page
    assert '<section id="planned"><h2>Planned against measured</h2>' in page
    assert "GFLOP per image" in page and "training time (s)" in page
    order = [page.index(f'<section id="{s}">') for s in ("fits", "laws", "planned")]
    assert order == sorted(order)
    assert page.index('class="heldout"') > page.index('class="fits"')  # after the Fits table


def test_report_json_has_the_laws_checks_refits_and_planned_rows(study):
    records = law_records(study, LAW, noise=SEED_SD, **MEASURED)
    data = json.loads(json.dumps(findings_json(findings(records_frame(records)))))
    assert [law["router"] for law in data["laws"]] == ["soft"]
    assert data["laws"][0]["transform"] and data["laws"][0]["multipliers"]
    kinds = {(h["kind"], h["router"]) for h in data["heldout"]}
    assert ("surface", "soft") in kinds and ("curve", "dense") in kinds
    assert data["robust"] and "sentence" in data["robust"][0]
    assert len(data["planned"]) == len(records)
    assert data["planned"][0]["flops_ratio"] is not None


def test_a_short_grid_gets_the_note_not_a_law(folder):
    short = study_file(folder, "short", models=SIZES[:1])
    page = render_report(records_frame(law_records(short, LAW, noise=SEED_SD)),
                         study_name="short")
    assert "soft: no joint law: needs at least 2 sizes × 3 expert counts" in page
    assert 'id="fig-joint-law"' not in page


def test_a_fit_that_does_not_extrapolate_is_flagged_on_the_page(folder):
    curves = study_file(folder, "curves", models=CURVE_SIZES, experts=(8,))
    flat = flattened(curve, knees(law_records(curves, curve)), keep=0.2)
    bent = render_report(records_frame(law_records(curves, flat, noise=0.005)),
                         study_name="curves")
    assert 'class="note flagged"' in bent and "FLAGGED: the fit to the cheaper" in bent
    clean = render_report(records_frame(law_records(curves, curve, noise=0.005)),
                          study_name="curves")
    assert 'class="note flagged"' not in clean


def test_large_stores_use_fewer_bootstrap_replicates():
    assert bootstrap_count(100) == N_BOOT and bootstrap_count(10_000) == LARGE_STORE_BOOT


# --------------------------------------------------------------------------- export


def test_export_has_the_planned_against_measured_columns(study, tmp_path):
    records = law_records(study, LAW, noise=SEED_SD, **MEASURED)
    store = store_with(tmp_path, "laws", records + [{"run_id": "broken", "status": "failed"}])
    runs, _ = export_tables(store, "parquet")
    table = pl.read_parquet(runs)
    assert set(PLANNED_COLUMNS) <= set(table.columns)
    assert "spec_right" not in table.columns and "device_right" not in table.columns
    ok = table.filter(pl.col("status") == "ok")
    assert ok["flops_ratio"].null_count() == 0 and ok["time_ratio"].null_count() == 0
    assert table.filter(pl.col("run_id") == "broken")["flops_ratio"].to_list() == [None]


# --------------------------------------------------------------------------- compare


@pytest.fixture(scope="module")
def stores(folder, study):
    root = folder / "results"
    base = law_records(study, LAW, noise=SEED_SD, seed=0, **MEASURED)
    store_with(root, "base", base)
    store_with(root, "laws", base)  # the study file's own store
    store_with(root, "same", base)
    other = law_records(study, LAW, noise=SEED_SD, seed=1, **MEASURED)
    store_with(root, "shifted", [{**r, "test_accuracy": r["test_accuracy"] + 5 * SEED_SD}
                                 for r in other])
    small = study_file(folder, "small", models=("vit-w48d2h2m96/4",), routers=("dense",))
    store_with(root, "small", law_records(small, LAW))
    return root


def test_compare_a_study_with_itself_flags_nothing(stores, study, tmp_path):
    out = tmp_path / "cmp.json"
    proc = cli("compare", study, "same", "--results", stores, "--json", out)
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1 and "15 configurations in both" in lines[0]
    assert "0 changes beyond the seed noise" in lines[0]
    data = json.loads(out.read_text())
    assert data["matched"] == 15 and data["flagged"] == []
    assert data["names"] == {"a": "laws", "b": "same"}


def test_compare_flags_accuracy_shifted_by_five_seed_deviations(stores):
    proc = cli("compare", "base", "shifted", "--results", stores)
    assert "15 changes beyond the seed noise" in proc.stdout
    assert "test accuracy" in proc.stdout


def test_compare_of_disjoint_grids_says_nothing_matches_in_one_line(stores):
    proc = cli("compare", "base", "small", "--results", stores)
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nothing matches")


def test_compare_of_an_unknown_study_is_one_line(stores):
    proc = cli("compare", "base", "nowhere", "--results", stores, check=False)
    assert proc.returncode == 2 and "compare B 'nowhere'" in proc.stderr


# --------------------------------------------------------------------------- calibrated dry run


def test_a_dry_run_calibrated_from_a_finished_store_prints_its_wall_times(stores, study):
    proc = cli("run", study, "--dry-run", "--calibrate-from", "base", "--results", stores,
               "--set", "train.steps=400")
    assert "wall calibrated" in proc.stdout
    assert "CALIBRATED on 45 finished runs on cpu (test)" in proc.stdout
    # 50 ms per step in the store: 400 steps, 20 s each, 45 runs in all
    assert proc.stdout.count(" 20 s") >= 45 and "15 min" in proc.stdout


def test_calibrate_from_a_store_without_timed_runs_is_one_line(stores, study):
    proc = cli("run", study, "--dry-run", "--calibrate-from", "small", "--results", stores,
               check=False)
    assert proc.returncode == 2 and "--calibrate-from 'small': no finished run" in proc.stderr
    proc = cli("run", study, "--calibrate-from", "base", "--results", stores, check=False)
    assert proc.returncode == 2 and "only with --dry-run" in proc.stderr


# --------------------------------------------------------------------------- plan


def test_plan_warns_where_the_heldout_check_flags_the_curve(folder):
    path = study_file(folder, "curves", models=CURVE_SIZES, experts=(8,))
    spec = load(path, [], None)
    flat = flattened(curve, knees(law_records(path, curve)), keep=0.2)
    rows = plan_rows(spec, records_frame(law_records(path, flat, noise=0.005)), 0.7)
    dense = next(r for r in rows if r.router == "dense")
    assert "FLAGGED" in dense.heldout
    assert plan_json(rows)[0]["heldout"] == dense.heldout
    console = Console(record=True, width=300)
    print_plan(rows, spec, console)
    assert "held-out check FAILED: dense (curve" in console.export_text()
    clean = plan_rows(spec, records_frame(law_records(path, curve, noise=0.005)), 0.7)
    assert all(r.heldout == "" for r in clean)


@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_joint_law_figure_draws_in_a_browser(chromium_launch, study, tmp_path):
    from playwright.sync_api import sync_playwright

    path = tmp_path / "laws.html"
    path.write_text(render_report(records_frame(law_records(study, LAW, noise=SEED_SD)),
                                  study_name="laws"))
    errors: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(**chromium_launch)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
            page.goto(path.as_uri())
            page.wait_for_function("() => document.getElementById('fig-joint-law')"
                                   ".dataset.rendered === '1'", timeout=60_000)
            traces = page.evaluate("() => document.getElementById('fig-joint-law')"
                                   "._fullData.map(t => t.type)")
        finally:
            browser.close()
    assert errors == []
    assert traces == ["surface", "scatter3d"]


def test_the_page_plans_the_same_rows_as_planned_rows_over_every_record(study):
    from reports.analyses.planned import planned_rows

    records = law_records(study, LAW, noise=SEED_SD, **MEASURED)
    records[0] = {**records[0], "train_time_s": None, "flops_counter": "analytic"}
    records[1] = {**records[1], "status": "failed"}
    found = findings(records_frame(records))
    assert len(found.planned) == len(records) - 2
    assert found.planned == planned_rows(records_frame(records).to_dicts())
