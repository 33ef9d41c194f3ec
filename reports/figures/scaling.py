"""Quality against the expert count and against slots per expert, per model (the page's
"Scaling" section)."""

from __future__ import annotations

import math
from typing import Any

import plotly.graph_objects as go
import polars as pl
from plotly.subplots import make_subplots

from reports.aggregate import best_per, primary_quality, with_rows
from reports.figures.common import (
    Hover,
    base_layout,
    floats,
    hover_kwargs,
    hover_texts,
    power_ticks,
    ptext,
    router_color,
    std_of,
)
from reports.labels import fmt, router_name, sorted_routers
from reports.metrics import label

#: Axis titles of spec columns used as x axes.
SPEC_LABELS = {"num_experts": "experts", "slots_per_expert": "slots per expert"}


def _facets(models: list[Any], title: str, x_title: str, y_title: str) -> go.Figure:
    cols = min(len(models), 3)
    rows = math.ceil(len(models) / cols)
    fig = make_subplots(
        rows=rows, cols=cols, shared_yaxes=True, horizontal_spacing=0.04,
        vertical_spacing=0.12, subplot_titles=[ptext(str(m)) for m in models],
    )
    base_layout(fig, title, height=360 * rows + 80)
    fig.update_xaxes(type="log", title_text=ptext(x_title))
    fig.update_yaxes(title_text=ptext(y_title), col=1)
    return fig


def fig_scaling(
    agg: pl.DataFrame,
    x: str = "num_experts",
    quality: str | None = None,
    *,
    hover: Hover = None,
) -> go.Figure | None:
    """Quality against ``x`` (experts, or slots per expert), one panel per model.

    One line per router; each point is the best configuration at that ``x`` over the other
    settings (placement, capacity, slots, learning rate), with its seeds' error bar. Dense
    models, which have no experts, are a dotted horizontal reference line.
    """
    agg = with_rows(agg)
    quality = quality or primary_quality(agg)
    if quality is None or x not in agg.columns or "model" not in agg.columns:
        return None
    hover = hover if hover is not None else hover_texts(agg)
    qcol = f"{quality}_mean"
    moe = agg.filter(pl.col(x).is_not_null() & (pl.col(x) > 0) & pl.col(qcol).is_not_null())
    if moe.height == 0:
        return None
    router_col = pl.col("router") if "router" in moe.columns else pl.lit(None)
    moe = moe.with_columns(router_col.alias("router"))
    best = best_per(moe, ["model", "router", x], quality).sort(["model", "router", x])
    models = sorted(best["model"].unique().to_list(), key=str)
    routers = sorted_routers(best["router"].to_list())
    dense = (agg.filter(pl.col("router") == "dense") if "router" in agg.columns
             else agg.clear())
    dense_best = best_per(dense, ["model"], quality) if dense.height else dense
    x_label = SPEC_LABELS.get(x, x.replace("_", " "))
    fig = _facets(models, f"{label(quality)} against {x_label} (best configuration at each "
                  "point)", x_label, label(quality))
    cols = min(len(models), 3)
    fig.update_xaxes(**power_ticks(best[x].to_list()))
    shown: set[Any] = set()
    x_range = (best[x].min(), best[x].max())
    for i, model in enumerate(models):
        row, col = i // cols + 1, i % cols + 1
        for router in routers:
            sub = best.filter((pl.col("model") == model) & pl.col("router").eq_missing(router))
            if sub.height == 0:
                continue
            std = std_of(sub, quality)
            fig.add_trace(go.Scatter(
                x=floats(sub[x]), y=floats(sub[qcol]), mode="lines+markers",
                name=ptext(router_name(router)), legendgroup=str(router),
                showlegend=router not in shown,
                marker={"color": router_color(router, routers), "size": 7},
                line={"color": router_color(router, routers)},
                error_y={"type": "data", "array": std if std is not None else [],
                         "visible": std is not None, "thickness": 1},
                **hover_kwargs(sub, hover),
            ), row=row, col=col)
            shown.add(router)
        ref = dense_best.filter(pl.col("model") == model) if dense_best.height else dense_best
        if ref.height:
            value = ref[qcol][0]
            fig.add_trace(go.Scatter(
                x=list(x_range), y=[value, value], mode="lines", name="Dense",
                legendgroup="dense", showlegend="dense" not in shown,
                line={"color": router_color("dense"), "dash": "dot"},
                hovertemplate=ptext(f"dense {model}: {fmt(value)}") + "<extra></extra>",
            ), row=row, col=col)
            shown.add("dense")
    return fig
