"""The paper's figures (reports/figures/paper.py) on hand-built frames, in the page, and in
Chromium."""

from __future__ import annotations

import itertools
import math

import plotly.graph_objects as go
import polars as pl
import pytest

from reports.aggregate import (
    BLOCKS,
    PLACEMENT,
    SLOTS_PER_TOKEN,
    TOKENS,
    aggregate,
    derive,
    with_rows,
)
from reports.build import build_report, paper_sections
from reports.figures.common import expected_points
from reports.figures.paper import (
    fig_ablations,
    fig_eval_fronts,
    fig_experts_slots_heatmap,
    fig_placement,
    fig_slots_per_expert,
    fig_training_fronts,
    paper_figures,
)
from reports.figures.routers import fig_dropped_tokens
from reports.figures.training import fig_training_curves, history_frame
from reports.page.render import write_report
from reports.records import model_depth, moe_blocks, records_frame

_ids = itertools.count()
TINY = "vit-w64d4h4m256/4"
DEEP = "vit-w64d12h4m256/4"


def rec(router="soft", *, acc=0.5, seed=0, model=TINY, **kw):
    sparse = router in ("tokens_choice", "experts_choice")
    e = kw.get("num_experts", None if router == "dense" else 16)
    p = kw.get("slots_per_expert", 1 if router not in ("dense", *("tokens_choice",
                                                                  "experts_choice")) else None)
    flops = 0.0067 * (1 + (e or 0) * (p or 1) / 160)
    out = {
        "study": "paper", "run_id": f"r{next(_ids):05d}", "status": "ok", "model": model,
        "router": router, "num_experts": e, "slots_per_expert": p,
        "k": 1 if router == "tokens_choice" else None,
        "capacity_factor": 1.0 if sparse else None,
        "moe_layers": "none" if router == "dense" else "last_half", "seed": seed, "lr": 3e-3,
        "steps": 300, "batch_size": 128, "data": "synthetic", "image_size": 16,
        "test_accuracy": acc, "fewshot_accuracy": acc - 0.05, "gflops_per_image": flops,
        "train_exaflops": 3 * flops * 1e9 * 300 * 128 / 1e18,
        "train_exaflops_paper": 1.5 * flops * 1e9 * 300 * 128 / 1e18,
        "train_images_per_s": 2000.0 / (1 + (e or 0) / 64), "train_step_ms": 60.0 + (p or 0) * 9,
        "infer_latency_ms": 1.0 + (e or 0) / 100, "infer_images_per_s": 5000.0,
        "router_dropped_fraction": (0.02 * math.log2(e) if sparse else 0.0) if e else None,
        "history": [{"step": s, "train_loss": 3.9 * math.exp(-s / 200) + 0.5,
                     "test_accuracy": acc * s / 300 if s % 100 == 0 else None}
                    for s in range(0, 301, 50)],
    }
    out.update(kw)
    return out


def paper_like_records() -> list[dict]:
    """Records shaped like the six paper studies' laptop profiles (made-up numbers)."""
    out = []
    for seed in (0, 1):  # experts x slots per token (16 tokens per image)
        bump = 0.01 * seed
        for e, p in ((4, 4), (16, 1), (4, 16), (16, 4), (64, 1)):
            out.append(rec("soft", num_experts=e, slots_per_expert=p, seed=seed,
                           acc=0.28 + 0.01 * math.log2(e) + 0.005 * p + bump))
        for e, k in itertools.product((4, 16, 64), (1, 4)):
            out.append(rec("tokens_choice", num_experts=e, k=k, seed=seed,
                           acc=0.5 + 0.02 * k + bump))
            out.append(rec("experts_choice", num_experts=e, capacity_factor=float(k),
                           seed=seed, acc=0.35 + 0.02 * k + bump))
        out.append(rec("dense", seed=seed, acc=0.25 + bump))
        for p in (2, 8):  # slots per expert, 8 experts (with (8, 1) from the grid above? no)
            out.append(rec("soft", num_experts=8, slots_per_expert=p, seed=seed,
                           acc=0.3 + 0.004 * p + bump))
        out.append(rec("soft", num_experts=8, slots_per_expert=1, seed=seed, acc=0.3 + bump))
        for router, acc in (("soft_uniform", 0.29), ("uniform_soft", 0.285), ("uniform", 0.28),
                            ("identity", 0.27)):
            out.append(rec(router, seed=seed, acc=acc + bump))
    for blocks, e, acc in (("11", 64, 0.30), ("10", 64, 0.31), ("10,11", 32, 0.33),
                           ("5,11", 32, 0.32), ("8,9,10,11", 16, 0.35), ("2,5,8,11", 16, 0.33),
                           ("4,5,6,7,8,9,10,11", 8, 0.34), ("1,2,3,4,8,9,10,11", 8, 0.32)):
        out.append(rec("soft", model=DEEP, moe_layers=blocks, num_experts=e, acc=acc))
    out.append(rec("dense", model=DEEP, acc=0.26))
    return out


@pytest.fixture(scope="module")
def frame():
    return records_frame(paper_like_records())


@pytest.fixture(scope="module")
def agg(frame):
    return derive(with_rows(aggregate(frame)))


def markers(fig: go.Figure) -> int:
    return expected_points(fig)


# --------------------------------------------------------------------------- derived columns


def test_depths_and_placements_agree_with_the_model_code():
    from harness.spec.model import SIZES, resolve_placement

    for name, size in SIZES.items():
        assert model_depth(f"vit-{name}/16") == size.depth
    assert model_depth(DEEP) == 12 and model_depth("resnet") is None
    for placement in ("last_half", "last:3", "every:2", "2,5,8,11", "11"):
        assert moe_blocks(placement, 12) == resolve_placement(placement, 12)
    assert moe_blocks("none", 12) is None and moe_blocks("last_half", None) is None


def test_derive_slots_per_token_and_placement_kind(agg):
    def one(**where):
        cond = pl.lit(True)
        for k, v in where.items():
            cond = cond & (pl.col(k) == v)
        return agg.filter(cond).row(0, named=True)

    soft = one(router="soft", num_experts=4, slots_per_expert=16)
    assert soft[TOKENS] == 16 and soft[SLOTS_PER_TOKEN] == 4.0
    assert one(router="tokens_choice", num_experts=16, k=4)[SLOTS_PER_TOKEN] == 4.0
    assert one(router="experts_choice", num_experts=64, capacity_factor=1.0)[SLOTS_PER_TOKEN] == 1
    assert one(model=DEEP, moe_layers="2,5,8,11")[PLACEMENT] == "spread"
    assert one(model=DEEP, moe_layers="4,5,6,7,8,9,10,11")[PLACEMENT] == "last"
    assert one(model=DEEP, moe_layers="10")[PLACEMENT] == "single"
    assert one(router="soft", num_experts=16, slots_per_expert=1, model=TINY)[BLOCKS] == "2,3"
    assert agg.filter(pl.col("router") == "dense")[SLOTS_PER_TOKEN].null_count() == 2


# --------------------------------------------------------------------------- each figure


def test_heatmaps_of_quality_and_throughput(agg):
    fig = fig_experts_slots_heatmap(agg)
    heat = [t for t in fig.data if t.type == "heatmap"]
    assert [t.name for t in heat] == ["Soft MoE", "Tokens Choice", "Experts Choice"]
    assert list(heat[0].x) == ["4", "8", "16", "64"]  # the slots sweep's 8 experts too
    soft = heat[0]
    cells = {(y, x): z for y, row in zip(soft.y, soft.z, strict=True)
             for x, z in zip(soft.x, row, strict=True) if z is not None}
    # the soft cells at 4 slots per token; means over both seeds
    assert {x for (y, x) in cells if y == "4"} == {"4", "8", "16", "64"}
    assert cells[("4", "64")] == pytest.approx(0.28 + 0.06 + 0.005 + 0.005)
    assert all(t.zmin == soft.zmin and t.zmax == soft.zmax for t in heat)  # one colour scale
    assert all("<b>" in c for row in soft.customdata for c in row if c)  # hover texts
    assert fig.layout.xaxis.title.text == "experts"
    speed = fig_experts_slots_heatmap(agg, "train_images_per_s")
    assert "train images/s" in speed.layout.title.text
    tc = speed.data[1]
    assert max(v for row in tc.z for v in row if v is not None) == pytest.approx(2000 / 1.0625)


def test_heatmap_needs_two_experts_and_two_slot_counts():
    one_axis = aggregate(records_frame([rec("soft", num_experts=e) for e in (4, 16)]))
    assert fig_experts_slots_heatmap(one_axis) is None
    assert fig_experts_slots_heatmap(aggregate(records_frame([rec("dense")]))) is None


def test_training_fronts_use_the_papers_convention_on_a_log_axis(agg):
    fig = fig_training_fronts(agg)
    assert fig.layout.xaxis.type == "log"
    assert "paper: 3 x forward MACs x images" in fig.layout.xaxis.title.text
    assert markers(fig) == agg.height  # every configuration drawn once (front or faint)
    without = agg.drop([c for c in agg.columns if c.startswith("train_exaflops_paper")])
    assert "3 x forward FLOPs x images" in fig_training_fronts(without).layout.xaxis.title.text


def test_eval_fronts_counted_and_measured(agg):
    fig = fig_eval_fronts(agg)
    titles = [fig.layout[f"xaxis{i}"].title.text for i in ("", "2", "3")]
    assert titles == ["GFLOPs per image (forward, 2 FLOPs/MAC)", "inference latency (ms)",
                      "inference images/s"]
    assert markers(fig) == 3 * agg.height
    fronts = [t for t in fig.data if t.name == "front, all routers"]
    assert len(fronts) == 3


def test_slots_per_expert_with_step_time_on_a_second_axis(agg):
    fig = fig_slots_per_expert(agg)
    quality = [t for t in fig.data if t.name.startswith("test accuracy")]
    steps = [t for t in fig.data if t.name.startswith("step time")]
    assert quality and steps and all(t.yaxis == "y2" for t in steps)
    line = next(t for t in quality if "8 experts" in t.name)
    assert list(line.x) == [1, 2, 8]
    assert fig.layout.yaxis2.title.text == "train step time (ms)"
    assert any(t.name.startswith("dense") for t in fig.data)
    single = aggregate(records_frame([rec("soft", num_experts=8)]))
    assert fig_slots_per_expert(single) is None


def test_placement_bars_in_the_papers_order(agg):
    fig = fig_placement(agg)
    bars = [t for t in fig.data if t.type == "bar"]
    xs = [x for t in bars for x in t.x]
    assert len(xs) == 8
    assert {t.name for t in bars} == {"last blocks", "spread blocks", "single block"}
    order = list(fig.layout.xaxis.categoryarray)
    assert order[:2] == ["{10} x64", "{11} x64"] and order[2] == "{10,11} x32"
    assert order[-2:] == ["{4,5,6,7,8,9,10,11} x8", "{1,2,3,4,8,9,10,11} x8"]
    assert all(t.textposition == "none" for t in bars)  # hover text stays in the hover


def test_ablation_bars(agg):
    fig = fig_ablations(agg)
    (bars,) = fig.data
    assert list(bars.x) == ["Soft MoE", "Soft / Uniform", "Uniform / Soft", "Uniform",
                            "Identity", "Dense"]
    assert list(bars.error_y.array) == pytest.approx([0.00707] * 6, abs=1e-4)
    no_ablation = aggregate(records_frame([rec("soft"), rec("dense")]))
    assert fig_ablations(no_ablation) is None


def test_training_curves_from_history(frame):
    long = history_frame(frame)
    assert long.height == frame.height * 7
    fig = fig_training_curves(frame, max_lines=100)
    acc = [t for t in fig.data if t.xaxis == "x"]
    loss = [t for t in fig.data if t.xaxis == "x2"]
    assert len(acc) == len(loss) == aggregate(frame).height
    assert all(list(t.x) == [0, 100, 200, 300] for t in acc)  # evaluated steps only
    few = fig_training_curves(frame, max_lines=12)
    assert len([t for t in few.data if t.xaxis == "x"]) <= 12


def test_training_curves_read_history_written_as_json_text(frame):
    import json

    text = frame.with_columns(pl.Series("history", [json.dumps(h) for h in
                                                     frame["history"].to_list()]))
    typed = history_frame(frame)  # polars explodes the list of structs
    assert history_frame(text).equals(typed)  # the same rows, parsed in Python
    assert fig_training_curves(frame.drop("history")) is None


def test_dropped_tokens_one_line_per_sweep_of_both_sparse_routers(agg):
    fig = fig_dropped_tokens(agg)
    assert [t.name for t in fig.data] == ["Tokens Choice K=1", "Tokens Choice K=4",
                                          "Experts Choice c=1", "Experts Choice c=4"]
    assert all(list(t.x) == [4, 16, 64] and t.mode == "lines+markers" for t in fig.data)
    assert list(fig.data[0].y) == pytest.approx([0.04, 0.08, 0.12])
    assert fig.layout.xaxis.type == "log"
    assert fig_dropped_tokens(aggregate(records_frame([rec("tokens_choice")]))) is None


# --------------------------------------------------------------------------- in the page


def test_every_figure_fits_these_records_and_the_section_embeds_them(frame):
    ids = [fig_id for fig_id, _ in paper_figures(frame)]
    assert ids == ["fig-paper-heatmap-quality", "fig-paper-heatmap-throughput",
                   "fig-paper-fronts-train", "fig-paper-fronts-eval", "fig-paper-slots",
                   "fig-paper-placement", "fig-paper-ablations", "fig-paper-curves",
                   "fig-paper-dropped"]
    claims, figures = paper_sections(frame)
    assert claims.startswith('<section id="claims">')
    assert figures.startswith('<section id="paper">')
    assert figures.count('<div class="plot"') == len(ids)
    assert "<script src" not in figures  # plotly.js comes once, from the page head


def test_a_study_gets_only_the_figures_that_fit():
    only_pareto = records_frame([rec("dense", model=m, acc=a) for m, a in
                                 ((TINY, 0.2), ("vit-w32d4h4m128/4", 0.1))]
                                + [rec("soft", acc=0.3), rec("tokens_choice", acc=0.4)])
    ids = [fig_id for fig_id, _ in paper_figures(only_pareto)]
    assert "fig-paper-fronts-train" in ids and "fig-paper-heatmap-quality" not in ids
    assert "fig-paper-placement" not in ids and "fig-paper-ablations" not in ids
    assert paper_sections(records_frame([rec("soft", status="failed")])) == []


def test_build_report_adds_claims_and_figures(tmp_path):
    from harness.results.store import Store
    from harness.spec.study import load
    from reports.synthetic import write_store

    study = load("studies/paper/ablations.yaml")
    store = Store(tmp_path, study.name)
    write_store(paper_like_records(), store.runs_dir)
    page = build_report(study, store).read_text()
    assert 'id="claims"' in page and 'id="paper"' in page
    assert 'data-claim="ablations" data-verdict="held"' in page
    assert page.count("plotly.js v") <= 2 and page.count('<script type="text/javascript">') == 1


# --------------------------------------------------------------------------- in Chromium

COUNT = """() => [...document.querySelectorAll('div.plot')].map(el => ({
    id: el.id, expected: Number(el.dataset.expectedPoints), rendered: el.dataset.rendered,
    points: el.querySelectorAll('.scatterlayer .trace .points path.point').length,
    bars: el.querySelectorAll('.barlayer .point').length,
    heatmaps: el.querySelectorAll('.heatmaplayer image').length,
    barData: (el._fullData || []).filter(t => t.type === 'bar' && t.visible === true)
        .reduce((n, t) => n + Array.from(t.y).filter(Number.isFinite).length, 0),
    heatData: (el._fullData || []).filter(t => t.type === 'heatmap').length,
}))"""


@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_paper_figures_draw_in_chromium(chromium_launch, test_output_dir, frame):
    from playwright.sync_api import sync_playwright

    path = write_report(frame, test_output_dir / "paper.html", study_name="paper",
                        extra_sections=paper_sections(frame))
    errors: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(**chromium_launch)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.route("**/*", lambda r: r.continue_() if r.request.url.startswith("file://")
                       else (errors.append(r.request.url), r.abort()))
            page.goto(path.as_uri())
            page.wait_for_function(
                "() => [...document.querySelectorAll('div.plot')]"
                ".every(e => e.dataset.rendered === '1')", timeout=60_000)
            plots = {p["id"]: p for p in page.evaluate(COUNT)}
            ids = [fig_id for fig_id, _ in paper_figures(frame)]
            assert set(ids) <= set(plots)
            for fig_id in ids:
                p = plots[fig_id]
                assert p["points"] == p["expected"], p  # every scatter marker drawn
                assert p["bars"] == p["barData"], p  # every bar drawn
                assert p["heatmaps"] == p["heatData"], p  # every heat map drawn
                assert p["points"] + p["bars"] + p["heatmaps"] > 0, p
            # hover texts come from the page's shared array (written once per page)
            for fig_id in ("fig-paper-fronts-train", "fig-paper-placement"):
                text = page.evaluate(
                    "(id) => document.getElementById(id)._fullData"
                    ".find(t => t.text && t.text.length).text[0]", fig_id)
                assert "runs (" in text and "router:" in text, fig_id
            verdicts = page.eval_on_selector_all(
                "#claims tr[data-claim]", "rs => rs.map(r => r.dataset.verdict)")
            assert len(verdicts) == 7
            page.screenshot(path=str(test_output_dir / "paper.png"), full_page=True)
        finally:
            browser.close()
    assert not errors, errors
