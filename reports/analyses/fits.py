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
from reports.analyses.scaling import Analysis, Curve, analyse, quality_of
from reports.labels import config_label, fmt, router_name

MAX_MATCHES = 5  # measured matches listed per cost axis and pair of routers


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
        if not c.fitted:
            rows.append(base + ["refused", "-", "-", "-", c.note or ""])
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
    """Why each refused curve was refused, in one line."""
    return "; ".join(f"{router_name(c.group)}: {c.note}" for c in curves if not c.fitted)
