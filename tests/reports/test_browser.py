"""The report in headless Chromium: it draws every plot, offline, without a console error.

Needs Debian chromium (installed by ``chromium_executable`` in conftest.py when root) and
playwright from PyPI, which drives it through ``executable_path`` (no browser download).
Leaves ``test-output/reports/report.html`` and ``report.png`` (a full-page screenshot) at the
repository root, for people and CI artifacts.
"""

from __future__ import annotations

import pytest

from reports.aggregate import records_frame
from reports.html import write_report
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
