"""The page's answer, first thing on the page: what the records say, in a few lines.

The "Answer" section is built from *answer blocks*, short HTML snippets that each link to the
section holding their evidence:

* :func:`claims_answer` (with the paper's analyses): how many of the paper's claims held or
  failed;
* :func:`best_at_equal_cost` (every page): the best configuration of each router within one
  compute budget that every router's runs reach (``reports.analyses.verdict``).
"""

from __future__ import annotations

import html
from collections import Counter
from collections.abc import Sequence
from typing import Any

import polars as pl

from reports.aggregate import primary_quality
from reports.analyses.claims import check_claims
from reports.analyses.verdict import COST_TOL, best_within_budget, gaps_to_best
from reports.labels import (
    FLOP_UNITS_NOTE,
    config_label,
    fmt,
    fmt_exaflops,
    fmt_mean_std,
    fmt_value_error,
    is_synthetic,
    router_name,
    runs_words,
)
from reports.metrics import label


def best_at_equal_cost(agg: pl.DataFrame) -> str | None:
    """The best configuration of each router within the common budget, as a sentence and a
    table (None without quality or cost)."""
    found = best_within_budget(agg)
    if found is None:
        return None
    quality, cost = found.quality, found.cost
    qcol, ccol = f"{quality}_mean", f"{cost}_mean"
    rows = []
    for i, row in enumerate(found.best):
        rows.append(
            f'<tr data-router="{html.escape(str(row["router"]))}"'
            f'{" class=winner" if i == 0 else ""}>'
            f"<td>{html.escape(router_name(row['router']))}</td>"
            f"<td>{html.escape(config_label(row))}</td>"
            f'<td class="num">{html.escape(fmt_mean_std(row[qcol], row.get(f"{quality}_std")))}'
            f'</td><td class="num">{html.escape(fmt(row[ccol]))}</td>'
            f'<td class="num">{html.escape(fmt(row.get("n_runs")))}</td></tr>')
    absent = found.absent
    missing = (f" No configuration of {html.escape(', '.join(router_name(r) for r in absent))} "
               "fits this budget." if absent else "")
    top = found.best[0]
    return (
        f'<p id="answer-best"><b>At equal cost</b> (at most {html.escape(_budget(found))} '
        f"within {COST_TOL:.0%}, the largest budget every router's "
        "runs reach), "
        f"<b>{html.escape(router_name(top['router']))}</b> is best by mean "
        f"{html.escape(label(quality))}: {html.escape(config_label(top))}.{missing} "
        f"{html.escape(_resolved(agg, found))} "
        '<a href="#summary">All configurations</a>, <a href="#pareto">fronts</a>.</p>'
        '<table class="answer"><thead><tr><th>router</th><th>best configuration within the '
        f"budget</th><th>{html.escape(label(quality))}</th><th>{html.escape(label(cost))}</th>"
        f"<th>seeds</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def _budget(found: Any) -> str:
    """'1.02 TFLOPs of training compute (training exaFLOPs ...)', or the number and its axis."""
    if found.cost.startswith("train_exaflops"):
        return (f"{fmt_exaflops(found.budget)} of "
                f"{label(found.cost).replace('exaFLOPs', 'compute')}; {FLOP_UNITS_NOTE}")
    return f"{fmt(found.budget)} {label(found.cost)}"


def _resolved(agg: pl.DataFrame, found: Any) -> str:
    """Which gaps to the best router the 95% intervals resolve, and which are noise."""
    gaps = gaps_to_best(agg, found)
    if not gaps:
        return ""
    best = router_name(found.best[0]["router"])
    ahead = [f"{router_name(r)} by {fmt_value_error(m.value, m.hi - m.value)}"
             for r, m in gaps if m.known and m.lo > 0]
    noise = [router_name(r) for r, m in gaps if not (m.known and m.lo > 0)]
    parts = []
    if ahead:
        parts.append(f"The 95% intervals resolve {best}'s lead over {', '.join(ahead)}.")
    if noise:
        who = ", ".join(noise)
        them = "it" if len(noise) == 1 else "them"
        parts.append(f"{who} {'is' if len(noise) == 1 else 'are'} within noise of {best} "
                     "(the interval of the difference includes 0): "
                     f"{'which is best' if not ahead else 'its lead over ' + them} is not "
                     "established.")
    return " ".join(parts)


def claims_answer(agg: pl.DataFrame, verdicts: Sequence[Any] | None = None, *,
                  frame: pl.DataFrame | None = None) -> str | None:
    """One line: how many of the paper's claims held, failed or lack data, each named
    (``verdicts``: ``reports.analyses.claims.check_claims(agg)`` when the caller has them);
    with the records' ``frame``, what they ran on, and on the synthetic task that it favours
    token routing by construction, beside the verdicts."""
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
            f'(<a href="#claims">how each is judged</a>).{_caveat(frame)}</p>'
            f'<ul class="claims-answer">{items}</ul>')


def _caveat(frame: pl.DataFrame | None) -> str:
    if frame is None or frame.height == 0:
        return ""
    text = f" These runs: {runs_words(frame)}."
    if is_synthetic(frame):
        text += (" The synthetic task favours token routing by construction "
                 "(docs/synthetic-data.md): these verdicts check the pipeline, not the paper.")
    return html.escape(text, quote=False)


def answer_body(blocks: list[Any]) -> str:
    """The answer section's body from its answer blocks (already-safe HTML)."""
    return "".join(b for b in blocks if b) or (
        '<p class="note">No answer yet: no ok run with a quality metric.</p>')
