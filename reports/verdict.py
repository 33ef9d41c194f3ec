"""The report's answer, first thing on the page: what the records say, in a few lines.

The page opens with an "Answer" section built from *answer blocks*, short HTML snippets that
each link to the section holding their evidence:

* :func:`best_at_equal_cost` (every page): the best configuration of each router within one
  compute budget that every router's runs reach;
* :func:`claims_answer` (``reports.build``): how many of the paper's claims held or failed.

An analysis that has a one-line answer adds it through ``reports.build.ANALYSES``.
"""

from __future__ import annotations

import html
from collections import Counter
from collections.abc import Sequence
from typing import Any

import polars as pl

from reports.figures import config_label, fmt, fmt_mean_std, primary_quality, router_name
from reports.metrics import METRICS, label

#: Cost axes for "equal cost", the first one measured wins: training compute, then the
#: forward cost per image, then active parameters.
BUDGET_AXES = ("train_exaflops", "gflops_per_image", "params_active")
COST_TOL = 0.05  # costs within 5% of the budget count as within it


def _cost_axis(agg: pl.DataFrame) -> str | None:
    for cost in BUDGET_AXES:
        col = f"{cost}_mean"
        if col in agg.columns and agg[col].drop_nulls().len():
            return cost
    return None


def best_at_equal_cost(agg: pl.DataFrame) -> str | None:
    """The best configuration of each router whose cost is within a common budget: the
    smallest of the routers' largest costs, so that every router is judged on the same
    budget and none by a configuration the others never ran. None without quality or cost."""
    quality, cost = primary_quality(agg), _cost_axis(agg)
    if quality is None or cost is None or "router" not in agg.columns:
        return None
    qcol, ccol = f"{quality}_mean", f"{cost}_mean"
    data = agg.filter(pl.col(qcol).is_not_null() & pl.col(ccol).is_not_null())
    if data.height == 0:
        return None
    budget = data.group_by("router").agg(pl.col(ccol).max())[ccol].min()
    within = data.filter(pl.col(ccol) <= budget * (1 + COST_TOL))
    higher = not METRICS[quality].lower_is_better
    best = (within.sort(qcol, descending=higher)
            .group_by("router", maintain_order=True).first())
    rows = []
    for i, row in enumerate(best.iter_rows(named=True)):
        rows.append(
            f'<tr data-router="{html.escape(str(row["router"]))}"'
            f'{" class=winner" if i == 0 else ""}>'
            f"<td>{html.escape(router_name(row['router']))}</td>"
            f"<td>{html.escape(config_label(row))}</td>"
            f'<td class="num">{html.escape(fmt_mean_std(row[qcol], row.get(f"{quality}_std")))}'
            f'</td><td class="num">{html.escape(fmt(row[ccol]))}</td>'
            f'<td class="num">{html.escape(fmt(row.get("n_runs")))}</td></tr>')
    absent = sorted(set(data["router"].to_list()) - set(best["router"].to_list()), key=str)
    missing = (f" No configuration of {html.escape(', '.join(router_name(r) for r in absent))} "
               "fits this budget." if absent else "")
    top = best.row(0, named=True)
    return (
        f'<p id="answer-best"><b>At equal cost</b> (at most {html.escape(fmt(budget))} '
        f"{html.escape(label(cost))} within {COST_TOL:.0%}, the largest budget every router's "
        "runs reach), "
        f"<b>{html.escape(router_name(top['router']))}</b> is best by mean "
        f"{html.escape(label(quality))}: {html.escape(config_label(top))}.{missing} "
        '<a href="#summary">All configurations</a>, <a href="#pareto">fronts</a>.</p>'
        '<table class="answer"><thead><tr><th>router</th><th>best configuration within the '
        f"budget</th><th>{html.escape(label(quality))}</th><th>{html.escape(label(cost))}</th>"
        f"<th>seeds</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def claims_answer(agg: pl.DataFrame, verdicts: Sequence[Any] | None = None) -> str | None:
    """One line: how many of the paper's claims held, failed or lack data, each named
    (``verdicts``: ``reports.claims.check_claims(agg)`` when the caller has them)."""
    from reports.claims import check_claims

    if agg.height == 0 or primary_quality(agg) is None:
        return None
    verdicts = check_claims(agg) if verdicts is None else verdicts
    counts = Counter(v.status for v in verdicts)
    items = "".join(
        f'<li data-claim="{html.escape(v.key)}"><span class="badge" '
        f'data-verdict="{html.escape(v.status)}">{html.escape(v.status)}</span> '
        f"{html.escape(v.claim)}</li>" for v in verdicts)
    summary = ", ".join(f"{n} {html.escape(status)}" for status, n in counts.items())
    return (f'<p id="answer-claims"><b>The paper\'s claims on these records:</b> {summary} '
            f'(<a href="#claims">how each is judged</a>).</p><ul class="claims-answer">'
            f"{items}</ul>")


def answer_section(blocks: list[Any]) -> str:
    """The page's first section from its answer blocks (already-safe HTML)."""
    body = "".join(b for b in blocks if b) or (
        '<p class="note">No answer yet: no ok run with a quality metric.</p>')
    return f'<section id="answer"><h2>Answer</h2>{body}</section>'
