"""The HTML page: written, escaped, partial marker, figures, build_report, benchmark."""

import re
from pathlib import Path

import polars as pl
import pytest

from harness.bench.report import bench_report_detailed
from reports.aggregate import aggregate, with_rows
from reports.build import build_report
from reports.figures.common import expected_points, hover_texts
from reports.figures.pareto import fig_pareto
from reports.figures.routers import fig_router_diagnostic
from reports.figures.scaling import fig_scaling
from reports.page.render import render_report, write_report
from reports.records import load_records, records_frame
from reports.synthetic import synthetic_records

EVIL = "<script>alert('pwned')</script>"
EVIL_END = "</script><img src=x onerror=alert(1)>"


@pytest.fixture(scope="module")
def records():
    recs = synthetic_records(120, seed=1, small=True, failure_rate=0.1)
    recs[0]["model"] = f"vit-s/16{EVIL}"
    recs[1].update(status="failed", error=f"RuntimeError: {EVIL_END}\nline two",
                   traceback="Traceback (most recent call last):\n  File <x>, line 1")
    recs[2]["note"] = EVIL  # an unknown text column, carried into the hover text
    return recs


@pytest.fixture(scope="module")
def df(records):
    return records_frame(records)


@pytest.fixture(scope="module")
def page(df):
    return render_report(df, study_name=f"study{EVIL}", study_text=f"name: x\n# {EVIL_END}",
                         pending=0)


def _outside_plotly_js(page: str) -> str:
    """The page without the embedded plotly.js bundle (which has its own '<script' strings)."""
    start = page.index("<script type=\"text/javascript\">")
    end = page.index("</script>", start)
    return page[:start] + page[end:]


def test_record_text_is_escaped_everywhere(page):
    assert EVIL not in page and EVIL_END not in page
    assert "<img" not in page
    rest = _outside_plotly_js(page)
    # every script tag is one of ours: the hover texts, then one per figure
    scripts = re.findall(r"<script[^>]*>", rest)
    figures = re.findall(r'<div class="plot(?:-3d)?" id="', rest)
    assert len(scripts) == 1 + len(figures)
    assert "&lt;script&gt;alert(&#x27;pwned&#x27;)&lt;/script&gt;" in page  # table / title
    # hover texts are HTML-escaped (plotly renders them as HTML), then JSON-escaped
    assert "\\u0026lt;script\\u0026gt;alert" in page


def test_failed_runs_table_and_study_file(page):
    assert 'id="problems"' in page
    assert "RuntimeError: &lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;" in page
    assert "failed" in page
    assert "Traceback (most recent call last):\n  File &lt;x&gt;, line 1" in page
    assert '<pre class="study">name: x\n# &lt;/script&gt;' in page


def test_partial_marker(df, page):
    partial = render_report(df, study_name="s", pending=3)
    assert 'data-partial="true"' in partial
    assert "Partial results: 3 runs still pending" in partial
    assert "(partial)</title>" in partial
    assert 'data-partial="false"' in page and "Partial results" not in page


def test_write_report_writes_one_file_atomically(df, tmp_path):
    out = tmp_path / "deep" / "report.html"
    extra = '<section id="tuning"><h2>Tuning</h2><p>safe snippet</p></section>'
    path = write_report(df, out, study_name="s", extra_sections=[extra])
    assert path == out and out.is_file()
    assert sorted(p.name for p in out.parent.iterdir()) == ["report.html"]  # no temp left
    text = out.read_text()
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    assert text.index(extra) < text.index('<footer id="environment">')
    assert text.index('id="problems"') < text.index(extra)
    for section in ("summary", "pareto", "scaling", "routers", "problems", "environment"):
        assert f'id="{section}"' in text


def test_page_is_self_contained(page):
    assert "Plotly.newPlot" in page
    assert not re.search(r"<script[^>]+src=", page)  # plotly.js embedded, nothing fetched
    assert not re.search(r"<link[^>]+href=", page)


def test_every_figure_has_points(page):
    expected = [int(n) for n in re.findall(r'data-expected-points="(\d+)"', page)]
    ids = re.findall(r'<div class="plot" id="([^"]+)"', page)
    assert "fig-pareto-gflops_per_image" in ids and "fig-scaling-num_experts" in ids
    assert "fig-router-router_dropped_fraction" in ids
    assert len(expected) == len(ids) and all(n > 0 for n in expected)


def test_empty_store_still_gives_a_page(tmp_path):
    out = write_report(pl.DataFrame(), tmp_path / "r.html", study_name="empty", pending=4)
    text = out.read_text()
    assert "Partial results: 4 runs still pending" in text
    assert "Nothing to draw yet" in text and "Plotly.newPlot" not in text


def test_only_failed_runs(tmp_path):
    df = records_frame([{"run_id": "a" * 12, "status": "failed", "error": "boom",
                         "router": "soft"}])
    text = write_report(df, tmp_path / "r.html", study_name="s").read_text()
    assert "boom" in text and "No quality metric recorded yet" in text


def test_figure_functions(df):
    agg = with_rows(aggregate(df))
    n_with_flops = agg.filter(pl.col("gflops_per_image_mean").is_not_null()
                              & pl.col("test_accuracy_mean").is_not_null()).height
    fig = fig_pareto(agg, "gflops_per_image")
    assert expected_points(fig) == n_with_flops
    assert fig.layout.xaxis.type == "log"
    assert len(fig.layout.updatemenus[0].buttons) == 3  # accuracy, few-shot, loss
    assert fig_pareto(agg, "not_a_metric") is None
    assert fig_scaling(agg, "num_experts") is not None
    assert fig_scaling(agg.filter(pl.col("router") == "dense"), "num_experts") is None
    assert fig_router_diagnostic(agg, "router_slot_entropy") is not None
    texts = hover_texts(agg)
    assert len(texts) == agg.height and all("<script" not in t for t in texts)


def test_build_report_counts_pending_runs(tmp_path, records):
    """build_report (what `moe-harness report` calls) reads the store and the study."""
    from reports.synthetic import write_store

    class Spec:
        def __init__(self, run_id):
            self.run_id = run_id

    class Study:
        name = "fake"
        source = None

        def expand(self):
            return [Spec(r["run_id"]) for r in records[:50]] + [Spec("0" * 12), Spec("1" * 12)]

    class Store:
        dir = tmp_path / "fake"
        runs_dir = dir / "runs"

        def load(self):
            return load_records(self.runs_dir)

        def study_text(self):
            return None

    write_store(records[:40], Store.runs_dir)
    path = build_report(Study(), Store())
    assert path == Store.dir / "report.html"
    text = path.read_text()
    assert "Partial results: 12 runs still pending" in text  # 10 of the grid + 2 never run


def test_bench_runs_on_a_small_store(tmp_path):
    result = bench_report_detailed(100, out_dir=tmp_path)
    assert result["total_s"] > 0 and result["size_mb"] > 1
    assert Path(tmp_path / "report.html").is_file()


@pytest.mark.parametrize("case", ["dense_only", "no_costs", "one_record", "only_loss",
                                  "unknown_router"])
def test_odd_stores_still_render(case, tmp_path):
    base = {"study": "s", "status": "ok", "model": "vit-s/16", "router": "dense", "seed": 0,
            "num_experts": None, "test_accuracy": 0.5, "test_loss": 1.0,
            "gflops_per_image": 1.0, "params_total": 10}
    if case == "dense_only":
        recs = [{**base, "run_id": f"{i:012x}", "seed": i % 2, "lr": 10.0 ** -(i // 2)}
                for i in range(6)]
    elif case == "no_costs":
        recs = [{"run_id": "a" * 12, "status": "ok", "router": "soft", "num_experts": 4,
                 "test_accuracy": 0.4}]
    elif case == "one_record":
        recs = [{**base, "run_id": "a" * 12}]
    elif case == "only_loss":
        recs = [{**base, "run_id": "a" * 12, "test_accuracy": None}]
    else:
        recs = [{**base, "run_id": "a" * 12, "router": "<b>new</b>", "num_experts": 4,
                 "router_expert_load_cv": 0.3}]
    text = write_report(records_frame(recs), tmp_path / "r.html", study_name=case).read_text()
    assert text.rstrip().endswith("</html>")
    if case == "no_costs":
        assert "Nothing to draw yet" in text
    if case == "unknown_router":
        assert "<b>new</b>" not in text


def test_build_report_shows_the_study_file_the_store_kept(tmp_path):
    """The page shows the study as it ran (kept in the store), never the file as it is now."""
    from harness.results.store import Store
    from harness.spec.study import load

    path = tmp_path / "kept.yaml"
    path.write_text("name: kept\ndata: {name: synthetic, image_size: 16}\n"
                    "fixed: {model: vit-w32d2h2m64/4}  # as it ran\n")
    study = load(path)
    store = Store(tmp_path / "results", "kept")
    assert store.study_text() is None
    assert "Study file" not in build_report(study, store).read_text()
    store.keep_study(path.read_text())
    path.write_text("name: kept  # edited since\n")
    page = build_report(study, store).read_text()
    assert "Study file" in page and "# as it ran" in page and "edited since" not in page


def test_build_report_writes_the_json_of_the_same_analysis(tmp_path, records):
    """``json_out``: the findings' JSON, from the analysis behind the page (read once)."""
    import json

    from harness.results.store import Store
    from reports.analyses.findings import findings, findings_json
    from reports.records import load_records
    from reports.synthetic import write_store

    class Study:
        name = "s"

        def expand(self):
            return []

    store = Store(tmp_path / "results", "s")
    write_store(records[:60], store.runs_dir)
    out = tmp_path / "report.json"
    build_report(Study(), store, json_out=out)
    expected = findings_json(findings(load_records(store.runs_dir)))
    assert out.read_text() == json.dumps(expected, indent=1) + "\n"
    assert json.loads(out.read_text())["scaling"]["curves"]
