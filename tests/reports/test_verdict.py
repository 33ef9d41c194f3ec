"""The page's answer first: the best configuration per router at equal cost, the claims line,
the top bar's links and the axes' tick labels."""

from __future__ import annotations

import math
import re

import pytest

from reports.aggregate import aggregate, with_rows
from reports.page.answer import best_at_equal_cost
from reports.page.html import log_ticks, nav_bar, tick_labels
from reports.page.render import render_report
from reports.records import records_frame


def _record(router, cost, quality, seed=0, experts=None, model="vit-s/16"):
    return {"study": "v", "run_id": f"{router}-{cost}-{seed}", "status": "ok",
            "model": model, "router": router, "num_experts": experts, "seed": seed,
            "test_accuracy": quality, "train_exaflops": cost}


@pytest.fixture
def frame():
    return records_frame([
        _record("dense", 1.0, 0.50, model="vit-ti/16"), _record("dense", 2.0, 0.60),
        _record("soft", 1.5, 0.70, experts=8), _record("soft", 1.5, 0.72, seed=1, experts=8),
        _record("soft", 5.0, 0.90, experts=64),  # best overall, but beyond every budget
        _record("tokens_choice", 1.0, 0.55, experts=8), _record("tokens_choice", 3.0, 0.65,
                                                               experts=64),
    ])


def test_best_per_router_within_the_common_budget(frame):
    block = best_at_equal_cost(with_rows(aggregate(frame)))
    # budget: the smallest of the routers' largest costs = dense's 2.0
    assert "at most 2 EFLOPs of training compute" in block
    rows = re.findall(r'<tr data-router="([^"]+)"[^>]*><td>[^<]*</td><td>([^<]*)</td>'
                      r'<td class="num">([^<]*)</td><td class="num">([^<]*)</td>', block)
    assert [(r, q, c) for r, _, q, c in rows] == [
        ("soft", "0.710 ± 0.014", "1.5"), ("dense", "0.6", "2"),
        ("tokens_choice", "0.55", "1")]
    assert "E=64" not in block and "<b>Soft MoE</b> is best" in block


def test_the_answer_opens_the_page_and_the_top_bar_links_every_section(frame):
    extra = '<section id="later"><h2>Added by a caller</h2><p>x</p></section>'
    page = render_report(frame, study_name="v", answers=['<p id="mine">claims: 1 held</p>'],
                         extra_sections=[extra])
    body = page[page.index("<body"):]
    assert body.index('<section id="answer">') < body.index('<section id="summary">')
    assert body.index('id="mine"') < body.index('id="answer-best"')
    nav = re.search(r"<nav>(.*?)</nav>", body).group(1)
    assert re.findall(r'href="#([^"]+)"', nav) == [
        "answer", "summary", "pareto", "scaling", "fits", "laws", "routers", "problems", "later",
        "environment"]
    assert nav_bar([extra]).count("<a ") == 2


@pytest.mark.parametrize(("lo", "hi", "labels"), [
    (0.8e-6, 1.45e-6, ["8×10⁻⁷", "9×10⁻⁷", "10⁻⁶"]),  # was "0.8µ ... 1.45µ"
    (5e6, 1e9, ["10⁷", "10⁸", "10⁹"]),
    (4, 28, ["5", "10", "20"]),
    (20, 80, ["20", "30", "40", "50", "60", "70", "80"]),
    (0.0004, 0.0018, ["4×10⁻⁴", "5×10⁻⁴", "6×10⁻⁴", "7×10⁻⁴", "8×10⁻⁴", "9×10⁻⁴", "10⁻³"]),
])
def test_log_axis_ticks_are_complete_plain_or_scientific(lo, hi, labels):
    assert tick_labels(log_ticks(lo, hi)) == labels


@pytest.mark.parametrize(("lo", "hi"), [(20.0, 155.0), (145.0, 155.0), (0.8e-6, 1.45e-6),
                                        (4.0, 28.0), (3e-9, 2e3)])
def test_log_axes_have_labelled_ticks_at_both_ends_of_their_range(lo, hi):
    from reports.page.html import log_axis

    ticks, (start, end) = log_axis(lo, hi)
    assert ticks[0] <= lo and ticks[-1] >= hi  # a tick beyond every point: 200 above 155
    assert start <= math.log10(ticks[0]) and end >= math.log10(ticks[-1])
    pad = 0.05 * (end - start)  # a margin for the markers, no empty stretch past a tick
    assert end - math.log10(ticks[-1]) < pad and math.log10(ticks[0]) - start < pad
    assert len(ticks) >= 2 and ticks == sorted(ticks)
