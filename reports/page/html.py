"""HTML pieces of the page: escaping, tables, sections, the top bar, and figures embedded as
plotly JSON.

Axes never stack SI prefixes on a unit: log axes get ticks at 1-2-5 steps labelled in plain
or scientific notation, and titles sit below plotly's tool bar (:func:`tidy_layout`,
applied to every figure of the page).

Every string that comes from records or the study file is escaped (:func:`esc`), and figure
JSON is written with ``<``, ``>`` and ``/`` escaped, so a ``</script>`` in a run's error stays
text.
"""

from __future__ import annotations

import html
import json
import math
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio

from reports.figures.common import HOVER_META, expected_points
from reports.labels import fmt

_PLOTLY_CONFIG = {"responsive": True, "displaylogo": False, "scrollZoom": False}


def esc(value: Any) -> str:
    """Escape any value for HTML text and attributes (``None`` -> ``-``)."""
    return html.escape(fmt(value), quote=True)


# --------------------------------------------------------------------------- figures in HTML


def _figure_json(fig: go.Figure) -> str:
    """Figure JSON safe inside ``<script>`` (plotly escapes ``< > /``; we add ``&`` and the
    two line separators that JavaScript strings reject)."""
    return _safe_json(pio.to_json(fig, validate=False))


def _safe_json(text: str) -> str:
    for raw, safe in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                      ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(raw, safe)
    return text


def hover_script(hover: Sequence[str]) -> str:
    """The page's one array of hover texts (figures made with ``hover=SHARED`` index it)."""
    return f"<script>var MOE_HOVER={_safe_json(json.dumps(list(hover)))};</script>"


_SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


def tick_labels(values: Sequence[float]) -> list[str]:
    """Plain notation when every value is from 0.001 to below a million, else ``m×10ᵉ`` for
    all of them (one notation per axis): never an SI prefix."""
    if all(v == 0 or 1e-3 <= abs(v) < 1e6 for v in values):
        return [f"{v:.6g}" for v in values]
    return [_scientific(v) for v in values]


def _scientific(value: float) -> str:
    if value == 0:
        return "0"
    exponent = math.floor(math.log10(abs(value)))
    mantissa = f"{value / 10**exponent:.3g}"
    power = f"10{str(exponent).translate(_SUPERSCRIPT)}"
    return power if mantissa == "1" else f"{mantissa}×{power}"


def log_ticks(lo: float, hi: float) -> list[float]:
    """Tick values for a log axis over [lo, hi]: 1-2-5 steps, or 1..9 steps where that
    gives fewer than three, or three evenly spread values on a very narrow range."""
    lo, hi = lo / 1.08, hi * 1.08  # plotly pads the data range a little
    decades = range(math.floor(math.log10(lo)), math.floor(math.log10(hi)) + 1)
    for mantissas in ((1,), (1, 2, 5), tuple(range(1, 10))):
        ticks = [float(f"{m}e{d}") for d in decades for m in mantissas]
        ticks = [t for t in ticks if lo <= t <= hi]
        if len(ticks) >= 3 and (len(ticks) <= 12 or mantissas == (1,)):
            return ticks
    ratio = (hi / lo) ** 0.25
    return sorted({float(f"{lo * ratio**i:.2g}") for i in (1, 2, 3)})


def log_axis(lo: float, hi: float) -> tuple[list[float], list[float]]:
    """Ticks and range of a log axis over data from ``lo`` to ``hi``: :func:`log_ticks`, plus
    the nearest m×10ᵉ (m = 1..9) at or below ``lo`` and at or above ``hi``, and a range that
    ends at those, so labelled ticks span the whole range (never a point above the last)."""
    ticks = log_ticks(lo, hi)
    steps = [float(f"{m}e{d}") for d in range(math.floor(math.log10(lo)) - 1,
                                              math.floor(math.log10(hi)) + 2)
             for m in range(1, 10)]
    below = max(t for t in steps if t <= lo * (1 + 1e-9))
    above = min(t for t in steps if t >= hi * (1 - 1e-9))
    ticks = sorted({below, above, *(t for t in ticks if below <= t <= above)})
    pad = 0.02 * max(math.log10(above / below), 0.1)
    return ticks, [math.log10(below) - pad, math.log10(above) + pad]


MODEBAR_PX = 32  # plotly's tool bar, top right: the title starts below it


def tidy_layout(fig: go.Figure) -> go.Figure:
    """The title below plotly's tool bar (which would cover it in narrow plots); no SI
    prefixes on any axis; log axes without explicit ticks get :func:`log_axis` over the
    data of the traces drawn on them (ticks that span the range, and that range), labelled
    by :func:`tick_labels`."""
    lines = 1 + str(fig.layout.title.text or "").count("<br>")
    fig.update_layout(title={"yref": "container", "y": 1, "yanchor": "top",
                             "pad": {"t": MODEBAR_PX}},
                      margin_t=max(fig.layout.margin.t or 0, MODEBAR_PX + 22 * lines + 20))
    axes = {}
    fig.for_each_xaxis(lambda axis: axes.setdefault(axis.plotly_name, axis))
    fig.for_each_yaxis(lambda axis: axes.setdefault(axis.plotly_name, axis))
    logs: dict[str, list[float]] = {}
    for name, axis in axes.items():
        axis.exponentformat = "power"
        if axis.type == "log" and axis.tickvals is None:
            logs[name] = []
    for trace in fig.data if logs else ():
        for letter in ("x", "y"):
            ref = getattr(trace, f"{letter}axis", None) or letter
            name = ref.replace(letter, f"{letter}axis", 1)
            data = getattr(trace, letter, None)
            if name in logs and data is not None:
                v = np.asarray(data, dtype=float)
                logs[name] += v[np.isfinite(v) & (v > 0)].tolist()
    for name, data in logs.items():
        if data:
            ticks, span = log_axis(min(data), max(data))
            axes[name].update(tickvals=ticks, ticktext=tick_labels(ticks), range=span)
    return fig


def figure_html(fig_id: str, fig: go.Figure) -> str:
    """A plot's ``<div>`` and the script that draws it.

    Traces made with ``hover=SHARED`` get their text from ``MOE_HOVER`` (see
    :func:`hover_script`, which must come first in the page).

    It draws once the page is parsed (the grid of plots has its final columns then: a plot
    drawn as soon as its div exists would take the width of a grid holding it alone, and its
    right-hand points would be cut off), and redraws when its div changes width.

    The div carries ``data-expected-points`` (markers plotly should draw) and, once drawn,
    ``data-rendered="1"``: the browser test waits for it and counts the markers.
    """
    tidy_layout(fig)
    safe_id = html.escape(fig_id, quote=True)
    return (
        f'<div class="plot" id="{safe_id}" data-expected-points="{expected_points(fig)}"></div>'
        f"<script>(function(){{var f={_figure_json(fig)};"
        f'var el=document.getElementById("{safe_id}");'
        f"f.data.forEach(function(t){{if(t.meta==={json.dumps(HOVER_META)}&&t.customdata)"
        f"{{t.text=t.customdata.map(function(i){{return MOE_HOVER[i];}});}}}});"
        f"function draw(){{Plotly.newPlot(el,f.data,f.layout,"
        f"{pio.json.to_json_plotly(_PLOTLY_CONFIG)}).then(function(){{"
        f"new ResizeObserver(function(){{if(el._fullLayout&&Math.abs(el._fullLayout.width"
        f"-el.clientWidth)>1)Plotly.Plots.resize(el);}}).observe(el);"
        f'el.setAttribute("data-rendered","1");}});}}'
        f'if(document.readyState==="loading")document.addEventListener("DOMContentLoaded",draw);'
        f"else draw();}})();</script>"
    )


# --------------------------------------------------------------------------- tables


# --------------------------------------------------------------------------- tables and sections


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], *, cls: str = "",
           numeric: Sequence[bool] | None = None) -> str:
    """An HTML table from already-escaped cells."""
    numeric = numeric or [False] * len(headers)
    head = "".join(f"<th>{h}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(
            f'<td class="num">{c}</td>' if n else f"<td>{c}</td>"
            for c, n in zip(row, numeric, strict=False)
        ) + "</tr>"
        for row in rows
    )
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def section(sec_id: str, title: str, body: str) -> str:
    """A page section: ``title`` is the page's own text (already safe), ``body`` safe HTML."""
    return f'<section id="{sec_id}"><h2>{title}</h2>{body}</section>'


_SECTION_HEAD = re.compile(r'<section id="([^"]+)"[^>]*>\s*<h2>(.*?)</h2>', re.S)


def nav_bar(sections: Sequence[str]) -> str:
    """A link to every section, read from the sections themselves (``<section id=...><h2>``),
    so a section added anywhere (a caller's too) is linked without a second list."""
    links = [f'<a href="#{sid}">{title}</a>' for part in sections
             for sid, title in _SECTION_HEAD.findall(part)]
    return "<nav>" + "".join(links) + '<a href="#environment">Study and environment</a></nav>'
