"""The report in headless Chromium: it draws every plot, offline, without a console error.

Needs Debian chromium (installed by ``chromium_executable`` of tests/fixtures/browser.py when
root) and playwright from PyPI, which drives it through ``executable_path`` (no browser download).
Leaves ``test-output/reports/report.html`` and ``report.png`` (a full-page screenshot) at the
repository root, for people and CI artifacts.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from reports.page.render import write_report
from reports.records import records_frame
from reports.synthetic import synthetic_records

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(900)]

COUNT_DRAWN = """() => [...document.querySelectorAll('div.plot')].map(el => ({
    id: el.id,
    expected: Number(el.dataset.expectedPoints),
    drawn: el.querySelectorAll('.scatterlayer .trace .points path.point').length,
    traces: (el._fullData || []).filter(t => t.visible === true).length,
}))"""

# markers plotly should draw, from plotly's own data: visible marker traces' finite points
COUNT_DATA = """(el) => el._fullData
    .filter(t => t.visible === true && t.type === 'scatter' && t.mode.includes('markers'))
    .reduce((n, t) => n + Array.from(t.x).filter((x, i) =>
        Number.isFinite(x) && Number.isFinite(t.y[i])).length, 0)"""


@pytest.fixture(scope="module")
def report_path(test_output_dir):
    records = synthetic_records(150, seed=2, small=True, failure_rate=0.1)
    records[0]["model"] += '<img src=x onerror="window.__xss=1">'
    records[1].update(status="failed", error="</script><script>window.__xss=2</script>")
    df = records_frame(records)
    return write_report(df, test_output_dir / "report.html",
                        study_name="browser<script>window.__xss=3</script>",
                        study_text="name: browser\n</pre><script>window.__xss=4</script>",
                        pending=2)


def test_report_draws_every_plot_offline(chromium_launch, report_path, test_output_dir):
    from playwright.sync_api import sync_playwright

    errors: list[str] = []
    requests: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(**chromium_launch)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.on("console", lambda m: errors.append(f"console {m.type}: {m.text}")
                    if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(f"page error: {e}"))

            def offline(route):  # the page must need nothing but itself
                if not route.request.url.startswith("file://"):
                    requests.append(route.request.url)
                    return route.abort()
                return route.continue_()

            page.route("**/*", offline)
            page.goto(report_path.as_uri())
            page.wait_for_function(
                "() => { const p = [...document.querySelectorAll('div.plot')];"
                " return p.length > 0 && p.every(e => e.dataset.rendered === '1'); }",
                timeout=60_000,
            )
            plots = page.evaluate(COUNT_DRAWN)
            assert {p["id"] for p in plots} >= {
                "fig-pareto-gflops_per_image", "fig-pareto-params_total",
                "fig-scaling-num_experts", "fig-scaling-slots_per_expert",
                "fig-router-router_dropped_fraction", "fig-router-router_token_coverage",
                "fig-router-router_slot_entropy",
            }
            for plot in plots:
                assert plot["traces"] > 0, plot
                assert plot["expected"] > 0, plot
                assert plot["drawn"] == plot["expected"], plot
                el = page.query_selector(f"#{plot['id']}")
                assert page.evaluate(COUNT_DATA, el) == plot["expected"], plot

            # the quality menu: every choice draws its own points
            el = page.query_selector("#fig-pareto-gflops_per_image")
            buttons = page.evaluate("(el) => el.layout.updatemenus[0].buttons.length", el)
            assert buttons == 3
            for i in range(buttons):
                page.evaluate(
                    "async ([el, i]) => { const b = el.layout.updatemenus[0].buttons[i];"
                    " await Plotly.update(el, b.args[0], b.args[1]); }", [el, i])
                drawn = page.evaluate(
                    "(el) => el.querySelectorAll('.scatterlayer .trace .points path.point')"
                    ".length", el)
                assert drawn == page.evaluate(COUNT_DATA, el) > 0, i

            # hover texts come from the page's shared array: full config and run ids
            page.evaluate("async (el) => { const b = el.layout.updatemenus[0].buttons[0];"
                          " await Plotly.update(el, b.args[0], b.args[1]); }", el)
            text = page.evaluate("(el) => el._fullData[0].text[0]", el)
            assert "runs (" in text and "router:" in text
            # the run whose model name holds markup: its hover shows the markup as text
            hover = page.evaluate("""(el) => {
                for (const [c, t] of el._fullData.entries()) {
                    const p = (t.visible === true && t.text) ? t.text.findIndex(
                        s => s.includes('&lt;img')) : -1;
                    if (p >= 0) {
                        Plotly.Fx.hover(el, [{curveNumber: c, pointNumber: p}]);
                        return el.querySelector('.hoverlayer').textContent;
                    }
                }
                return null; }""", el)
            assert hover is not None and "runs (" in hover
            assert '<img src=x onerror="window.__xss=1">' in hover

            assert page.evaluate("() => window.__xss") is None  # record text stayed text
            assert "Partial results: 2 runs still pending" in page.inner_text("#partial-banner")
            assert "window.__xss=2" in page.inner_text("#problems")
            page.screenshot(path=str(test_output_dir / "report.png"), full_page=True)
        finally:
            browser.close()
    assert not errors, errors
    assert not requests, requests


# --- layout: the answer first, every section linked, nothing wider than the page or covered --

LAYOUT = """() => {
    const page = document.documentElement.clientWidth;
    const ids = [...document.querySelectorAll('section[id], footer[id]')].map(s => s.id);
    const links = [...document.querySelectorAll('nav a')].map(a => a.getAttribute('href'));
    const wide = [...document.querySelectorAll('body *')].filter(el => {
        if (el.closest('#js-plotly-tester')) return false;  // plotly's off-screen measurer
        const r = el.getBoundingClientRect();
        return r.width > 0 && (r.right > page + 0.5 || r.left < -0.5);
    }).map(el => el.tagName + '#' + el.id + '.' + el.className);
    const tables = [...document.querySelectorAll('table')].filter(
        t => t.scrollWidth > t.parentElement.clientWidth + 1).map(t => t.className);
    return {page, scroll: document.documentElement.scrollWidth, ids, links, wide, tables,
            first: document.querySelector('section').id,
            answerTop: document.querySelector('#answer').getBoundingClientRect().top};
}"""

# per plot: boxes of the mode bar and of every title / annotation text, and the log axes'
# tick labels in order
PLOT_TEXT = """(el) => {
    const box = e => { const r = e.getBoundingClientRect();
                       return {l: r.left, r: r.right, t: r.top, b: r.bottom, w: r.width}; };
    const bar = el.querySelector('.modebar');
    const texts = [...el.querySelectorAll('.g-gtitle text, .annotation-text, .legendtext')]
        .filter(t => t.textContent.trim()).map(t => ({text: t.textContent, ...box(t)}));
    const logTicks = Object.entries(el._fullLayout).filter(
        ([k, a]) => /^[xy]axis/.test(k) && a.type === 'log').map(([k, a]) =>
        [...el.querySelectorAll(`.${a._id}tick text`)].map(t => t.textContent));
    const ticks = [...el.querySelectorAll('.xtick text, .ytick text')].map(t => t.textContent);
    return {bar: bar ? box(bar) : null, texts, logTicks, ticks};
}"""
SUPERSCRIPTS = str.maketrans("⁻⁰¹²³⁴⁵⁶⁷⁸⁹", "-0123456789")


def _tick_value(text: str) -> float:
    """'0.002', '5000', '10⁻³' or '4×10⁻⁴' as a number."""
    mantissa, _, power = text.rpartition("10") if "10" in text and not text[0].isdigit() or \
        "×" in text else ("", "", "")
    if "×" in text:
        mantissa, power = text.split("×10")
        return float(mantissa) * 10 ** int(power.translate(SUPERSCRIPTS))
    if text.startswith("10") and any(c in text for c in "⁻⁰¹²³⁴⁵⁶⁷⁸⁹"):
        return 10 ** int(text[2:].translate(SUPERSCRIPTS))
    return float(text)


def _overlap(a: dict, b: dict) -> bool:
    return a["l"] < b["r"] and b["l"] < a["r"] and a["t"] < b["b"] and b["t"] < a["b"]


@pytest.fixture(scope="module")
def full_report(test_output_dir):
    from reports.build import paper_parts

    df = records_frame(synthetic_records(300, seed=2))
    answers, sections = paper_parts(df)
    return write_report(df, test_output_dir / "report-full.html", study_name="layout",
                        answers=answers, extra_sections=sections)


@pytest.mark.parametrize("width", [1400, 1100])
def test_report_layout_answer_first_nothing_wide_or_covered(chromium_launch, full_report,
                                                            test_output_dir, width):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(**chromium_launch)
        try:
            page = browser.new_page(viewport={"width": width, "height": 1000})
            page.goto(full_report.as_uri())
            page.wait_for_function(
                "() => [...document.querySelectorAll('div.plot')].every("
                "e => e.dataset.rendered === '1')", timeout=120_000)
            layout = page.evaluate(LAYOUT)
            # the answer opens the page, within the first screen, and names the verdicts
            assert layout["first"] == "answer" and layout["answerTop"] < 400
            answer = page.inner_text("#answer")
            assert "claims on these records" in answer and "At equal cost" in answer
            assert page.locator("#answer tr[data-router]").count() == 4
            # every section is linked from the top bar, every link lands on a section
            assert {"answer", "summary", "pareto", "claims", "paper", "environment"} <= set(
                layout["ids"])
            assert sorted(layout["links"]) == sorted(f"#{i}" for i in layout["ids"])
            # nothing wider than the page; every table fits its container (costs visible)
            assert layout["scroll"] <= layout["page"], layout
            assert layout["wide"] == [], layout["wide"]
            assert layout["tables"] == [], layout["tables"]

            for el in page.query_selector_all("div.plot"):
                info = page.evaluate(PLOT_TEXT, el)
                plot = el.get_attribute("id")
                for text in info["texts"]:  # the mode bar covers no title or label
                    assert not (info["bar"] and _overlap(info["bar"], text)), (plot, text)
                for tick in info["ticks"]:  # no SI prefix stacked on a unit
                    assert not any(tick.endswith(p) and tick[:-1][-1:].isdigit()
                                   for p in "µmkMGTnp"), (plot, tick)
                for ticks in info["logTicks"]:  # log axes: complete, increasing labels
                    values = [_tick_value(t) for t in ticks]
                    assert len(values) >= 2 and values == sorted(values), (plot, ticks)
            page.screenshot(path=str(test_output_dir / f"report-top-{width}.png"))
        finally:
            browser.close()


# --- the quickstart's and Fashion-MNIST's pages: no lost point, steady legends, true words ---

# per plot: plotly's own axis ranges against its own data, the figure's width against its
# div's, every drawn marker inside the div, and each legend item's marker colour
PLOT_BOUNDS = """(gd) => {
    const fl = gd._fullLayout, out = {lost: [], points: 0, width: fl.width,
                                      div: gd.clientWidth, outside: 0, legend: []};
    const axis = (t, l) => fl[(t[l + 'axis'] || l).replace(l, l + 'axis')];
    const inside = (a, v) => { if (a.type === 'category') return true;
        const w = a.type === 'log' ? Math.log10(v) : v;
        return w >= Math.min(...a.range) - 1e-9 && w <= Math.max(...a.range) + 1e-9; };
    for (const t of gd._fullData) {
        if (t.visible !== true || t.type !== 'scatter') continue;
        const xa = axis(t, 'x'), ya = axis(t, 'y');
        Array.from(t.x || []).forEach((x, i) => { const y = t.y[i];
            if (!Number.isFinite(x) || !Number.isFinite(y)) return;
            out.points++;
            if (!inside(xa, x) || !inside(ya, y)) out.lost.push([t.name, x, y]); });
    }
    const box = gd.getBoundingClientRect();
    for (const p of gd.querySelectorAll('.scatterlayer path.point')) {
        const r = p.getBoundingClientRect(), x = (r.left + r.right) / 2, y = (r.top + r.bottom) / 2;
        if (x < box.left || x > box.right || y < box.top || y > box.bottom) out.outside++;
    }
    for (const item of gd.querySelectorAll('.legend .traces')) {
        const pt = item.querySelector('.legendpoints path.scatterpts');
        if (!pt) continue;
        out.legend.push({text: item.querySelector('.legendtext').textContent,
                         fill: getComputedStyle(pt).fill, symbol: pt.getAttribute('d')});
    }
    return out;
}"""


def _rgb(hex_color: str) -> str:
    r, g, b = (int(hex_color[i:i + 2], 16) for i in (1, 3, 5))
    return f"rgb({r}, {g}, {b})"


@pytest.fixture(scope="module", params=["quickstart", "fashion_mnist"])
def study_report(request, tmp_path_factory):
    """The study's page as ``report`` writes it, from generated records in a store."""
    from fixtures.reports import study_records

    from harness.results.store import Store
    from harness.spec.study import load
    from reports.build import build_report
    from reports.synthetic import write_store
    root = Path(__file__).resolve().parents[2]
    study = load(root / "studies" / f"{request.param}.yaml")
    store = Store(tmp_path_factory.mktemp(request.param), study.name)
    write_store(study_records(study.name), store.runs_dir)
    return request.param, build_report(study, store)


@pytest.mark.parametrize("width", [1400, 1100])
def test_every_point_in_its_panel_legends_keep_colours_words_match_data(
        chromium_launch, study_report, width):
    from playwright.sync_api import sync_playwright

    from harness.spec.routers import ROUTERS
    from reports.figures.common import router_color

    name, path = study_report
    colours = {ROUTERS[r].label: _rgb(router_color(r)) for r in ROUTERS}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(**chromium_launch)
        try:
            page = browser.new_page(viewport={"width": width, "height": 1000})
            page.goto(path.as_uri())
            page.wait_for_function(
                "() => [...document.querySelectorAll('div.plot')].every("
                "e => e.dataset.rendered === '1')", timeout=120_000)
            ids = page.evaluate("() => [...document.querySelectorAll('.js-plotly-plot')]"
                                ".map(e => e.id)")
            assert "fig-router-router_dropped_fraction" in ids
            for plot_id in ids:
                info = page.evaluate(PLOT_BOUNDS, page.query_selector(f"#{plot_id}"))
                assert info["lost"] == [], (name, plot_id, info["lost"])
                assert info["width"] <= info["div"] + 1, (name, plot_id, info)
                assert info["outside"] == 0, (name, plot_id, info)
                for item in info["legend"]:  # a router's legend marker: its colour, a circle
                    if item["text"] in colours:
                        assert item["fill"] == colours[item["text"]], (plot_id, item)
                        # a plain circle (two arcs), never a flagged point's crossed one
                        assert "L" not in item["symbol"] and "A" in item["symbol"], item
            text = page.inner_text("body").lower()
        finally:
            browser.close()
    assert len([line for line in text.splitlines() if "timing flagged for" in line]) == 1
    if name == "fashion_mnist":
        assert "synthetic" not in text and "fashion-mnist" in text
    else:
        assert "favours token routing by construction" in text
