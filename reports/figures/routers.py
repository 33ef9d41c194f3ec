"""Router diagnostics: the router metrics against the expert count (the page's "Router
diagnostics" section), and the sparse routers' dropped tokens per sweep (the paper's
appendix B, among the paper's figures)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import plotly.graph_objects as go
import polars as pl

from reports.aggregate import SLOTS_PER_TOKEN, spec_columns, with_rows
from reports.figures.common import (
    Hover,
    base_layout,
    floats,
    has_columns,
    hover_kwargs,
    hover_texts,
    power_ticks,
    prepare,
    ptext,
    router_color,
    std_of,
)
from reports.labels import SPARSE_ROUTERS, router_name, short, sorted_routers
from reports.metrics import ROUTER_DIAGNOSTICS, label

_SYMBOLS = ("circle", "square", "diamond", "triangle-up", "x", "star", "hexagon", "cross")


def fig_router_diagnostic(
    agg: pl.DataFrame,
    metric: str,
    routers: Sequence[str] | None = None,
    *,
    hover: Hover = None,
) -> go.Figure | None:
    """A router metric (dropped tokens, coverage, slot entropy) against the expert count.

    One marker per configuration (mean over seeds, error bar), coloured by router, one
    symbol per model. ``routers`` defaults to the routers :data:`ROUTER_DIAGNOSTICS` names.
    """
    agg = with_rows(agg)
    col = f"{metric}_mean"
    if col not in agg.columns or "num_experts" not in agg.columns:
        return None
    routers = routers if routers is not None else ROUTER_DIAGNOSTICS.get(metric, ())
    data = agg.filter(pl.col(col).is_not_null() & (pl.col("num_experts") > 0))
    if routers and "router" in data.columns:
        data = data.filter(pl.col("router").is_in(list(routers)))
    if data.height == 0:
        return None
    hover = hover if hover is not None else hover_texts(agg)
    if "model" not in data.columns:
        data = data.with_columns(pl.lit(None, dtype=pl.String).alias("model"))
    if "router" not in data.columns:
        data = data.with_columns(pl.lit(None, dtype=pl.String).alias("router"))
    models = sorted(data["model"].unique().to_list(), key=str)
    present = sorted_routers(data["router"].to_list())
    fig = go.Figure()
    for router in present:
        for j, model in enumerate(models):
            sub = data.filter(pl.col("router").eq_missing(router)
                              & pl.col("model").eq_missing(model)).sort("num_experts")
            if sub.height == 0:
                continue
            std = std_of(sub, metric)
            fig.add_trace(go.Scatter(
                x=floats(sub["num_experts"]), y=floats(sub[col]), mode="markers",
                name=ptext(f"{router_name(router)}, {model}"),
                marker={"color": router_color(router, present), "size": 8,
                        "symbol": _SYMBOLS[j % len(_SYMBOLS)], "opacity": 0.8},
                error_y={"type": "data", "array": std if std is not None else [],
                         "visible": std is not None, "thickness": 1},
                **hover_kwargs(sub, hover),
            ))
    which = ", ".join(router_name(r) for r in present)
    base_layout(
        fig, f"{label(metric)} ({which})",
        xaxis={"type": "log", "title": {"text": "experts"},
               **power_ticks(data["num_experts"].to_list())},
        yaxis={"title": {"text": ptext(label(metric))}},
        legend={"orientation": "h", "y": -0.25, "x": 0, "yanchor": "top"},
        height=460,
    )
    return fig


def fig_dropped_tokens(agg: pl.DataFrame, *, hover: Hover = None) -> go.Figure | None:
    """Dropped-token fraction against the expert count for Tokens Choice and Experts Choice
    (tokens no expert took): one line per sweep, i.e. configurations equal but for the
    expert count (so K, c, model and placement fixed along a line). Drawn when some sweep
    has two or more expert counts."""
    agg, hover = prepare(agg, hover)
    col = "router_dropped_fraction_mean"
    if not has_columns(agg, col, "num_experts", "router"):
        return None
    data = agg.filter(pl.col("router").is_in(list(SPARSE_ROUTERS)) & pl.col(col).is_not_null()
                      & pl.col("num_experts").is_not_null())
    keys = [c for c in spec_columns(data) if c not in ("num_experts", "spec")]
    sweeps = [g.sort("num_experts") for _, g in data.group_by(keys, maintain_order=True)
              if g["num_experts"].n_unique() >= 2] if data.height else []
    if not sweeps:
        return None
    several = data["model"].n_unique() > 1 if "model" in data.columns else False
    routers = sorted_routers(data["router"].to_list())
    fig = go.Figure()
    dashes = ("solid", "dash", "dot", "dashdot", "longdash")
    seen: dict[str, int] = {}
    xs: list[Any] = []
    for sweep in sorted(sweeps, key=lambda g: (routers.index(g["router"][0]),
                                               str(g["model"][0]) if several else "",
                                               g[SLOTS_PER_TOKEN][0] or 0)):
        row = sweep.row(0, named=True)
        router = row["router"]
        knob = (f"K={short(row.get('k'))}" if router == "tokens_choice"
                else f"c={short(row.get('capacity_factor'))}")
        name = f"{router_name(router)} {knob}" + (f", {row['model']}" if several else "")
        n = seen[router] = seen.get(router, -1) + 1
        std = std_of(sweep, "router_dropped_fraction")
        xs += sweep["num_experts"].to_list()
        fig.add_trace(go.Scatter(
            x=floats(sweep["num_experts"]), y=floats(sweep[col]), mode="lines+markers",
            name=ptext(name), legendgroup=str(router),
            marker={"color": router_color(router, routers), "size": 8},
            line={"color": router_color(router, routers), "dash": dashes[n % len(dashes)]},
            error_y={"type": "data", "array": std if std is not None else [],
                     "visible": std is not None, "thickness": 1},
            **hover_kwargs(sweep, hover),
        ))
    base_layout(fig, "Dropped tokens against experts (sparse routers; one line per sweep)",
                 xaxis={"type": "log", "title": {"text": "experts"}, **power_ticks(xs)},
                 yaxis={"title": {"text": ptext(label("router_dropped_fraction"))},
                        "rangemode": "tozero"},
                 legend={"orientation": "h", "y": -0.25, "x": 0, "yanchor": "top"},
                 height=460)
    return fig
