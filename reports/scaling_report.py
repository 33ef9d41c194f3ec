"""The fitted-curves section of the report: figures, tables, and the same tables as Markdown.

Reads a :class:`reports.scaling.Analysis`; the numbers are computed there. Every table row
comes from one function (``*_rows``) that both the HTML and the Markdown render.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
import polars as pl

from reports.figures import (
    HOVER_META,
    Hover,
    config_label,
    fmt,
    primary_quality,
    ptext,
    router_color,
    router_name,
)
from reports.scaling import CONFIDENCE, Analysis, Curve, analyse, quality_of

MAX_MATCHES = 5  # measured matches listed per cost axis and pair of routers
_BAND = 60  # points along a drawn curve


def _x(value: float) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.3g}x"


def _iv(lo: float, hi: float, unit: str = "") -> str:
    def one(v: float) -> str:
        return "inf" if math.isinf(v) else f"{v:.3g}{unit}"
    return f"[{one(lo)}, {one(hi)}]"


def _name(router: str) -> str:
    return router_name(router)


# --------------------------------------------------------------------------- rows


def curve_rows(analysis: Analysis) -> list[list[str]]:
    rows = []
    for c in analysis.curves:
        base = [_name(c.group), analysis.cost_labels.get(c.cost, c.cost), str(c.points.cost.size)]
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
        rows.append([_name(m.better), _name(m.other), analysis.cost_labels.get(m.cost, m.cost),
                     *cells, m.trend, m.note or ""])
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


# --------------------------------------------------------------------------- figure


def _hover_kwargs(rows: list[int], hover: Hover) -> dict[str, Any]:
    template = "%{text}<extra></extra>"
    if isinstance(hover, str):
        return {"customdata": rows, "meta": HOVER_META, "hovertemplate": template}
    if hover is None:
        return {}
    return {"customdata": rows, "text": [hover[r] for r in rows], "hovertemplate": template}


def fig_fits(analysis: Analysis, cost: str, hover: Hover = None) -> go.Figure | None:
    """Each router's front points, its fitted curve (solid over the fitted costs, dotted
    beyond) and the curve's bootstrap band. Traces are plain dicts, validated once."""
    curves = [c for c in analysis.curves if c.cost == cost]
    if not curves:
        return None
    lo = min(c.cost_range[0] for c in curves)
    hi = max(c.cost_range[1] for c in curves)
    routers = [c.group for c in curves]
    traces: list[dict[str, Any]] = []
    for c in curves:
        color, name, pts = router_color(c.group, routers), _name(c.group), c.points
        traces.append({
            "type": "scatter", "x": pts.cost.tolist(), "y": pts.quality.tolist(),
            "mode": "markers", "name": ptext(name), "legendgroup": c.group,
            "marker": {"color": color, "size": 8},
            "error_y": {"type": "data", "array": pts.sem.tolist(), "visible": bool(pts.sem.any())},
            **(_hover_kwargs(pts.rows, hover) if hover is not None else
               {"text": [ptext(t) for t in pts.labels], "hovertemplate": "%{text}<extra></extra>"}),
        })
        if not c.fitted:
            continue
        xs = np.geomspace(lo, hi, _BAND)
        point, band_lo, band_hi = c.quality_at(xs)
        inside = (xs >= c.cost_range[0] * 0.999) & (xs <= c.cost_range[1] * 1.001)
        common = {"legendgroup": c.group, "showlegend": False, "hoverinfo": "skip",
                  "type": "scatter", "mode": "lines"}
        traces.append({**common, "x": np.concatenate([xs, xs[::-1]]).tolist(),
                       "y": np.concatenate([band_hi, band_lo[::-1]]).tolist(), "fill": "toself",
                       "fillcolor": color, "opacity": 0.15, "line": {"width": 0},
                       "name": ptext(f"{name} band")})
        for part, dash in ((inside, "solid"), (~inside, "dot")):
            y = [float(v) if keep else None for v, keep in zip(point, part, strict=True)]
            traces.append({**common, "x": xs.tolist(), "y": y, "name": ptext(f"{name} fit"),
                           "line": {"color": color, "dash": dash}})
    label = analysis.cost_labels.get(cost, cost)
    return go.Figure({"data": traces, "layout": {
        "title": {"text": ptext(f"{analysis.quality.label} against {label}: fits and "
                                f"{CONFIDENCE:.0%} bands")},
        "template": "plotly_white", "height": 460, "hovermode": "closest",
        "xaxis": {"type": "log", "title": {"text": ptext(label)}},
        "yaxis": {"title": {"text": ptext(analysis.quality.label)}},
        "margin": {"l": 60, "r": 20, "t": 60, "b": 50}}})


# --------------------------------------------------------------------------- section


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], cls: str) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
                   for row in rows)
    return (f'<div class="scroll"><table class="{cls}"><thead><tr>{head}</tr></thead>'
            f"<tbody>{body}</tbody></table></div>")


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


def scaling_section_body(agg: pl.DataFrame, hover: Hover = None,
                         figure_html=None) -> str:
    """The section's HTML (``figure_html(id, fig)`` embeds a figure; see reports.html)."""
    analysis = analysis_for(agg)
    if analysis is None or not analysis.curves:
        return ('<p class="note" id="fits-note">No curve: no run with a quality and a '
                "cost yet.</p>")
    note = METHOD_NOTE.format(conf=f"{CONFIDENCE:.0%}")
    parts = [f'<p class="note">{html.escape(note)}</p>']
    fitted = [c for c in analysis.curves if c.fitted]
    if not fitted:
        parts.append(f'<p class="note" id="fits-note">No curve fitted: every router has '
                     f"fewer than 3 distinct costs on its front "
                     f"({html.escape(_refusals(analysis.curves))}).</p>")
    if figure_html is not None:
        for cost in dict.fromkeys(c.cost for c in fitted):
            fig = fig_fits(analysis, cost, hover)
            if fig is not None:
                parts.append(figure_html(f"fig-fit-{cost}", fig))
    parts.append("<h3>Fits</h3>" + _table(CURVE_HEADERS, curve_rows(analysis), "fits"))
    parts.append("<h3>Compute multipliers (from the fits)</h3>")
    rows = multiplier_rows(analysis)
    parts.append(_table(MULTIPLIER_HEADERS, rows, "multipliers") if rows else
                 '<p class="note">No pair of routers with two fitted curves on one cost axis.'
                 "</p>")
    parts.append("<h3>Measured matches: a configuration at least as good as another router's,"
                 " for less cost</h3>")
    rows = match_rows(analysis)
    parts.append(_table(MATCH_HEADERS, rows, "matches") if rows else
                 '<p class="note">No configuration matches another router\'s quality for '
                 "less cost.</p>")
    return "".join(parts)


def _refusals(curves: Sequence[Curve]) -> str:
    return "; ".join(f"{_name(c.group)}: {c.note}" for c in curves if not c.fitted)


# --------------------------------------------------------------------------- markdown


def _md_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def cell(text: str) -> str:
        return text.replace("|", "\\|")
    lines = ["| " + " | ".join(headers) + " |", "|" + " --- |" * len(headers)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def analysis_markdown(analysis: Analysis) -> str:
    """The section's tables as Markdown (no figures; the method note is the caller's)."""
    parts = [f"## {analysis.quality.label}\n",
             "### Fits\n", _md_table(CURVE_HEADERS, curve_rows(analysis)),
             "### Compute multipliers (from the fits)\n",
             _md_table(MULTIPLIER_HEADERS, multiplier_rows(analysis)),
             "### Measured matches\n",
             _md_table(MATCH_HEADERS, match_rows(analysis))]
    return "\n".join(parts)
