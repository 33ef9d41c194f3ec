"""The fitted quality-against-cost curves, one figure per cost axis (the page's "Fitted
curves and compute multipliers" section); the fits are ``reports.analyses.scaling``'s."""

from __future__ import annotations

from typing import Any

import numpy as np
import plotly.graph_objects as go

from reports.analyses.scaling import CONFIDENCE, Analysis
from reports.figures.common import Hover, ptext, router_color, row_hover
from reports.labels import router_name

_BAND = 60  # points along a drawn curve


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
        color, name, pts = router_color(c.group, routers), router_name(c.group), c.points
        traces.append({
            "type": "scatter", "x": pts.cost.tolist(), "y": pts.quality.tolist(),
            "mode": "markers", "name": ptext(name), "legendgroup": c.group,
            "marker": {"color": color, "size": 8},
            "error_y": {"type": "data", "array": pts.sem.tolist(), "visible": bool(pts.sem.any())},
            **(row_hover(pts.rows, hover) if hover is not None else
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
