"""Quality against each cost axis, with every router's Pareto front (the page's "Quality
against cost" section)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go
import polars as pl

from reports.aggregate import quality_axes, with_rows
from reports.figures.common import (
    FLAGGED_LABEL,
    FLAGGED_SYMBOL,
    TIMED_COSTS,
    Hover,
    base_layout,
    flagged_timing,
    floats,
    hover_kwargs,
    hover_texts,
    legend_entry,
    marker_symbols,
    ptext,
    router_color,
    std_of,
)
from reports.labels import router_name, sorted_routers
from reports.metrics import COST_AXES, label
from reports.pareto import pareto_mask


def fig_pareto(
    agg: pl.DataFrame,
    cost: str,
    qualities: Sequence[str] | None = None,
    *,
    hover: Hover = None,
) -> go.Figure | None:
    """Quality against one cost axis: a point per configuration, fronts as lines.

    Points are the means over seeds, error bars one standard deviation (quality, and cost
    when it varies between seeds); the cost axis is logarithmic. Each router's Pareto front
    is a solid line (its points outlined in black), the front over all routers a dashed
    line. With several quality metrics, a menu switches between them: each metric has its
    own traces (fronts computed here, in Python), only the first metric's visible at first.
    """
    agg = with_rows(agg)
    cost_col = f"{cost}_mean"
    if cost_col not in agg.columns:
        return None
    data = agg.filter(pl.col(cost_col).cast(pl.Float64).fill_nan(None) > 0)
    axes = quality_axes(data, qualities)
    if data.height == 0 or not axes:
        return None
    hover = hover if hover is not None else hover_texts(agg)
    if "router" not in data.columns:
        data = data.with_columns(pl.lit(None, dtype=pl.String).alias("router"))
    routers = sorted_routers(data["router"].to_list())
    # error bars on cost only where cost varies between seeds (timings do, params do not)
    cost_std = std_of(data, cost)
    cost_varies = cost_std is not None and bool((cost_std > 0).any())

    fig = go.Figure()
    visible_sets: list[list[int]] = []
    for i, q in enumerate(axes):
        qcol = f"{q}_mean"
        framed = data.with_columns(
            pareto_mask(data, cost_col, qcol, by="router").alias("_rf"),
            pareto_mask(data, cost_col, qcol).alias("_f"),
        )
        first_trace = len(fig.data)
        for router in routers:
            name = ptext(router_name(router))
            color = router_color(router, routers)
            sub = framed.filter(pl.col("router").eq_missing(router))
            front = sub.filter("_rf").sort(cost_col)
            qstd = std_of(sub, q)
            cstd = std_of(sub, cost)
            fig.add_trace(go.Scatter(
                x=floats(sub[cost_col]), y=floats(sub[qcol]), mode="markers", name=name,
                legendgroup=str(router), visible=i == 0, showlegend=False,
                marker={"color": color, "size": 8, "opacity": 0.8,
                        "symbol": marker_symbols(sub, cost),
                        "line": {"color": "black",
                                 "width": np.where(sub["_rf"].to_numpy(), 2.0, 0.0)}},
                error_y={"type": "data", "array": qstd if qstd is not None else [],
                         "visible": qstd is not None, "thickness": 1},
                error_x={"type": "data", "array": cstd if cstd is not None else [],
                         "visible": cost_varies, "thickness": 1},
                **hover_kwargs(sub, hover),
            ))
            fig.add_trace(go.Scatter(
                x=floats(front[cost_col]), y=floats(front[qcol]), mode="lines",
                name=f"{name} front", legendgroup=str(router), showlegend=False,
                hoverinfo="skip", visible=i == 0, line={"color": color, "width": 2},
            ))
        front = framed.filter("_f").sort(cost_col)
        fig.add_trace(go.Scatter(
            x=floats(front[cost_col]), y=floats(front[qcol]), mode="lines",
            name="front, all routers", hoverinfo="skip", visible=i == 0,
            line={"color": "black", "width": 1.5, "dash": "dash"},
        ))
        visible_sets.append(list(range(first_trace, len(fig.data))))

    for router in routers:  # one legend item per router, in its colour whatever its points
        fig.add_trace(legend_entry(ptext(router_name(router)), router_color(router, routers),
                                   str(router)))
        for visible in visible_sets:
            visible.append(len(fig.data) - 1)
    if cost in TIMED_COSTS and flagged_timing(data, cost).any():
        fig.add_trace(go.Scatter(  # a legend entry only: the flagged points are above
            x=[None], y=[None], mode="markers", name=ptext(FLAGGED_LABEL),
            marker={"color": "grey", "size": 8, "symbol": FLAGGED_SYMBOL}, hoverinfo="skip"))
        for visible in visible_sets:
            visible.append(len(fig.data) - 1)

    def title(q: str) -> str:
        return ptext(f"{label(q)} against {label(cost)}")

    base_layout(
        fig, f"{label(axes[0])} against {label(cost)}",
        xaxis={"type": "log", "title": {"text": ptext(label(cost))}},
        yaxis={"title": {"text": ptext(label(axes[0]))}},
    )
    if len(axes) > 1:
        n = len(fig.data)
        buttons = [{
            "label": ptext(label(q)),
            "method": "update",
            "args": [{"visible": [t in visible_sets[i] for t in range(n)]},
                     {"title.text": title(q), "yaxis.title.text": ptext(label(q)),
                      "yaxis.autorange": True}],
        } for i, q in enumerate(axes)]
        fig.update_layout(updatemenus=[{
            "buttons": buttons, "direction": "down", "x": 1.0, "xanchor": "right",
            "y": 1.02, "yanchor": "bottom", "showactive": True,
        }])
    return fig


def pareto_figures(agg: pl.DataFrame, hover: Hover = None) -> dict[str, go.Figure]:
    """``fig_pareto`` for every cost axis that has data, keyed by cost metric."""
    agg = with_rows(agg)
    hover = hover if hover is not None else hover_texts(agg)
    out = {}
    for cost in COST_AXES:
        fig = fig_pareto(agg, cost, hover=hover)
        if fig is not None:
            out[cost] = fig
    return out
