"""The fitted curves of the study as the page shows them: the analysis on the primary quality
(:func:`analysis_for`), and its tables as rows of text, one function per table (``*_rows``)
that the page and the Markdown of ``reports.published`` both render.

Reads a :class:`reports.analyses.scaling.Analysis`; the numbers are computed there.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import polars as pl

from reports.aggregate import primary_quality
from reports.analyses.scaling import MIN_POINTS, Analysis, Curve, Match, analyse, quality_of
from reports.labels import config_label, fmt, router_name

MAX_MATCHES = 5  # measured matches listed per cost axis and pair of routers
MIN_SAVING = 0.05  # a listed match saves more than this share (the tolerance of equal cost)


def _x(value: float) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.3g}x"


def _iv(lo: float, hi: float, unit: str = "") -> str:
    def one(v: float) -> str:
        return "inf" if math.isinf(v) else f"{v:.3g}{unit}"
    return f"[{one(lo)}, {one(hi)}]"


# --------------------------------------------------------------------------- rows


def curve_rows(analysis: Analysis) -> list[list[str]]:
    rows = []
    for c in analysis.curves:
        base = [router_name(c.group), analysis.cost_labels.get(c.cost, c.cost),
                str(c.points.cost.size)]
        if not c.fitted:  # counted in one line instead (refusals)
            continue
        iv = c.intervals()
        e, a, alpha = c.params
        rows.append(base + [
            c.kind,
            f"{e:.3g} {_iv(*iv['E'])}",
            f"{a:.3g} {_iv(*iv['A'])} at {fmt(c.c0)}",
            f"{alpha:.3g} {_iv(*iv['alpha'])}",
            (c.note + "; " if c.note else "") + f"fitted on {fmt(c.cost_range[0])} to "
            f"{fmt(c.cost_range[1])}",
        ])
    return rows


CURVE_HEADERS = ["router", "cost", "front points", "fit", "E (error floor)",
                 "A (reducible error at C0)", "alpha", "note"]


def multiplier_rows(analysis: Analysis) -> list[list[str]]:
    rows = []
    for m in analysis.multipliers:
        cells = [f"{q:.4g}: {_x(r)} less {_iv(*iv, 'x')}"
                 for q, r, iv in zip(m.levels, m.ratios, m.intervals, strict=True)]
        rows.append([router_name(m.better), router_name(m.other),
                     analysis.cost_labels.get(m.cost, m.cost), *cells, m.trend, m.note or ""])
    return rows


MULTIPLIER_HEADERS = ["router", "reaches the quality of", "cost axis",
                      "at the lowest common quality", "middle", "highest common quality",
                      "the saving, as quality rises", "note"]


def match_rows(analysis: Analysis, limit: int = MAX_MATCHES) -> list[list[str]]:
    rows = []
    for cost, found in analysis.matches.items():
        shown: dict[tuple[str, str], int] = {}
        for m in found:
            if not saves(m):
                continue
            pair = (m.router, m.target_router)
            shown[pair] = shown.get(pair, 0) + 1
            if shown[pair] > limit:
                continue
            margin = m.quality - m.target_quality
            noise = f" (seed spread {m.spread:.2g})" if m.spread else ""
            rows.append([m.config, m.target, analysis.cost_labels.get(cost, cost),
                         f"{m.quality:.4g} vs {m.target_quality:.4g} "
                         f"({margin:+.3g}{noise})",
                         f"{fmt(m.cost_value)} vs {fmt(m.target_cost)}", _x(m.ratio)])
    return rows


def saves(match: Match) -> bool:
    """A match worth listing: it saves more cost than the tolerance of "equal cost"
    (``MIN_SAVING``): a 1.01× "saving" is inside the noise of any cost axis."""
    return match.ratio >= 1 + MIN_SAVING


def small_matches(analysis: Analysis) -> int:
    """Matches left out of :func:`match_rows` because they save too little."""
    return sum(not saves(m) for found in analysis.matches.values() for m in found)


MATCH_HEADERS = ["configuration", "matches", "cost axis", "quality", "cost", "less cost"]


# --------------------------------------------------------------------------- the analysis


METHOD_NOTE = (
    "Quality becomes an error that falls with cost (1 - accuracy; a loss as is), fitted per "
    "router over its Pareto front with err = E + A (C / C0)^-alpha (C0: the geometric mean "
    "of the fitted costs); with fewer than 5 distinct costs E is fixed at 0 (plain power "
    "law), below 3 no curve is drawn. Intervals are {conf} bootstrap ranges (each "
    "configuration's mean redrawn from its seeds, its residual around the fit sign-flipped). "
    "A multiplier is the cost at which the other router's curve reaches a quality divided by "
    "the cost at which this router's does, read inside the costs both were fitted on. Fits "
    "and multipliers are predictions from these runs, not measurements.")


def analysis_for(agg: pl.DataFrame) -> Analysis | None:
    """The study's analysis on its primary quality (None without one or without routers)."""
    quality = primary_quality(agg)
    if quality is None or "router" not in agg.columns or agg.height == 0:
        return None
    return analyse(agg, quality_of(quality), names=row_names(agg))


def row_names(agg: pl.DataFrame) -> list[str]:
    """Short configuration names (a dense model's placement "none" left out)."""
    return [config_label({**r, "moe_layers": None} if r.get("router") == "dense" else r)
            for r in agg.iter_rows(named=True)]


def refusals(curves: Sequence[Curve]) -> str:
    """Why the refused curves were refused, in one line: each reason once, with the routers
    it holds for and how many curves ('12 curves: Dense, Soft MoE: 2 distinct ...')."""
    reasons: dict[str, list[str]] = {}
    for c in curves:
        if not c.fitted:
            note = c.note or "refused"
            reason = (f"fewer than {MIN_POINTS} distinct costs on the front, which a fit "
                      "needs" if " on the front; " in note else note)
            reasons.setdefault(reason, []).append(router_name(c.group))
    return "; ".join(f"{len(names)} curve{'s' if len(names) > 1 else ''} "
                     f"({', '.join(dict.fromkeys(names))}): {reason}"
                     for reason, names in reasons.items())
