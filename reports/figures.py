"""Plotly figures of a study, one function per figure, each returning a ``go.Figure``.

Every function takes the aggregated frame (:func:`reports.aggregate.aggregate`), reads metric
directions and labels from :mod:`reports.metrics`, and returns ``None`` when the frame holds
nothing to draw (a cost axis never measured, no Soft MoE run for a slots curve). New figures
(the paper's) follow the same shape: ``fig_x(agg, ...) -> go.Figure | None``.

Text that comes from records (model names, run ids, errors) reaches plotly only through
:func:`hover_texts`, which escapes it: plotly renders hover text as a subset of HTML and
decodes entities, so an escaped ``<script>`` shows as text.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import plotly.graph_objects as go
import polars as pl
from plotly.subplots import make_subplots

from harness.spec.routers import ROUTERS
from reports.metrics import (
    COST_AXES,
    METRICS,
    QUALITY_AXES,
    ROUTER_DIAGNOSTICS,
    SPEC_KEYS,
    label,
)
from reports.pareto import pareto_mask

ROW = "_row"  # index of a row of the aggregated frame, to look up its hover text

_PALETTE = ("#7f7f7f", "#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2",
            "#17becf", "#bcbd22", "#d62728")
_SYMBOLS = ("circle", "square", "diamond", "triangle-up", "x", "star", "hexagon", "cross")
_HOVER_RUN_IDS = 6


#: Axis titles of spec columns used as x axes.
SPEC_LABELS = {"num_experts": "experts", "slots_per_expert": "slots per expert"}


def ptext(value: Any) -> str:
    """Record text for plotly: its pseudo-HTML (hover, legend, titles) decodes ``&lt;``,
    ``&gt;`` and ``&amp;`` but shows ``&quot;`` as is, so quotes stay unescaped (harmless
    without a ``<``)."""
    return html.escape(str(value), quote=False)


def router_name(router: str | None) -> str:
    """The router's label in ``harness.spec.routers`` (its name if it is not registered)."""
    return ROUTERS[router].label if router in ROUTERS else str(router)


def router_color(router: str | None, routers: Sequence[str | None] = ()) -> str:
    """One colour per registered router (by registration order), then the unknown ones."""
    order = list(ROUTERS)
    if router in order:
        return _PALETTE[order.index(router) % len(_PALETTE)]
    others = [r for r in routers if r not in order]
    i = others.index(router) if router in others else 0
    return _PALETTE[(len(order) + i) % len(_PALETTE)]


def sorted_routers(values: Sequence[str | None]) -> list[str | None]:
    """Routers in the page's fixed order (registered ones first, as registered), each once."""
    order = list(ROUTERS)
    unique = list(dict.fromkeys(values))
    return sorted(unique, key=lambda r: (order.index(r) if r in order else len(order), str(r)))


def with_rows(agg: pl.DataFrame) -> pl.DataFrame:
    """The aggregated frame with a row index, as every figure function expects."""
    return agg if ROW in agg.columns else agg.with_row_index(ROW)


# --------------------------------------------------------------------------- formatting


def fmt(value: Any) -> str:
    """A number (or text) for people: 4 significant digits, thousands grouped, '-' for null."""
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        if value != 0 and (abs(value) >= 1e6 or abs(value) < 1e-3):
            return f"{value:.3e}"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.4g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    if isinstance(value, list):
        return ", ".join(fmt(v) for v in value)
    return str(value)


def fmt_mean_std(mean: Any, std: Any) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "-"
    if std is None or (isinstance(std, float) and math.isnan(std)):
        return fmt(mean)
    return f"{fmt(mean)} ± {fmt(std)}"


def config_label(row: dict[str, Any]) -> str:
    """Short name of a configuration (unescaped): ``vit-s/16 Soft MoE E=32 p=1 last_half``."""
    parts = [str(row.get("model")), router_name(row.get("router"))]
    for key, short in (("num_experts", "E"), ("slots_per_expert", "p"), ("k", "k"),
                       ("capacity_factor", "C")):
        if row.get(key) is not None:
            parts.append(f"{short}={fmt(row[key])}")
    if row.get("moe_layers"):
        parts.append(str(row["moe_layers"]))
    return " ".join(parts)


def spec_columns(agg: pl.DataFrame) -> list[str]:
    """The configuration columns of an aggregated frame (everything before ``n_runs``)."""
    if "n_runs" not in agg.columns:
        return [c for c in SPEC_KEYS if c in agg.columns]
    return [c for c in agg.columns[: agg.columns.index("n_runs")] if c != ROW]


def hover_texts(agg: pl.DataFrame) -> list[str]:
    """One escaped hover text per row: full config, seeds, run ids, every cost and quality."""
    keys = spec_columns(agg)
    metrics = [m for m in (*QUALITY_AXES, *COST_AXES) if f"{m}_mean" in agg.columns]
    out = []
    for row in agg.iter_rows(named=True):
        lines = [f"<b>{ptext(config_label(row))}</b>"]
        lines += [f"{ptext(k)}: {ptext(fmt(row[k]))}" for k in keys
                  if row[k] is not None]
        run_ids = row.get("run_ids") or []
        shown = ", ".join(ptext(str(r)) for r in run_ids[:_HOVER_RUN_IDS])
        more = f" (+{len(run_ids) - _HOVER_RUN_IDS} more)" if len(run_ids) > _HOVER_RUN_IDS else ""
        lines.append(f"runs ({row.get('n_runs')}): {shown}{more}")
        if row.get("seeds") is not None:
            lines.append(f"seeds: {ptext(fmt(row['seeds']))}")
        lines += [
            f"{ptext(label(m))}: {fmt_mean_std(row[f'{m}_mean'], row.get(f'{m}_std'))}"
            for m in metrics if row[f"{m}_mean"] is not None
        ]
        out.append("<br>".join(lines))
    return out


# --------------------------------------------------------------------------- helpers


def floats(series: pl.Series) -> np.ndarray:
    """Float64 array, nulls as NaN (plotly leaves NaN points undrawn)."""
    return series.cast(pl.Float64).fill_null(float("nan")).to_numpy()


def std_of(agg: pl.DataFrame, metric: str) -> np.ndarray | None:
    """Standard deviations as an array (0 where a single seed), None when there are none."""
    col = f"{metric}_std"
    if col not in agg.columns or agg[col].null_count() == agg.height:
        return None
    return agg[col].cast(pl.Float64).fill_nan(None).fill_null(0.0).to_numpy()


#: Hover text: ``None`` (compute it), a list (one text per aggregated row) or ``SHARED``.
Hover = Sequence[str] | Literal["shared"] | None
#: Traces then carry only row numbers (``customdata``) and ``meta=HOVER_META``; the page
#: fills their text from one array of hover texts, written once instead of once per figure.
SHARED: Literal["shared"] = "shared"
HOVER_META = "hover-rows"


def hover_kwargs(sub: pl.DataFrame, hover: Hover) -> dict[str, Any]:
    """Trace keyword arguments that show a row's hover text."""
    rows = sub[ROW].to_list()  # a plain list: the page's script reads it before plotly does
    template = "%{text}<extra></extra>"
    if isinstance(hover, str):
        return {"customdata": rows, "meta": HOVER_META, "hovertemplate": template}
    assert hover is not None
    return {"customdata": rows, "text": [hover[r] for r in rows], "hovertemplate": template}


def _present(agg: pl.DataFrame, metric: str) -> bool:
    col = f"{metric}_mean"
    return col in agg.columns and agg[col].cast(pl.Float64).fill_nan(None).null_count() < agg.height


def quality_axes(agg: pl.DataFrame, qualities: Sequence[str] | None = None) -> list[str]:
    """The quality metrics with at least one value, in :data:`QUALITY_AXES` order."""
    return [q for q in (qualities or QUALITY_AXES) if _present(agg, q)]


def primary_quality(agg: pl.DataFrame) -> str | None:
    axes = quality_axes(agg)
    return axes[0] if axes else None


def expected_points(fig: go.Figure) -> int:
    """Markers plotly will draw: visible marker traces' points with both coordinates set."""
    total = 0
    for trace in fig.data:
        if trace.type != "scatter" or trace.visible in (False, "legendonly"):
            continue
        if "markers" not in (trace.mode or "markers"):
            continue
        xs, ys = trace.x, trace.y
        if xs is None or ys is None:
            continue
        total += sum(
            1 for x, y in zip(xs, ys, strict=False)
            if x is not None and y is not None and x == x and y == y
        )
    return total


def power_ticks(values: Sequence[Any]) -> dict[str, Any]:
    """Log-axis ticks at the values present (expert and slot counts: 8, 16, 32, ...)."""
    ticks = sorted({float(v) for v in values if v is not None and v == v and v > 0})
    if len(ticks) > 12:  # too many labels: keep every other one
        ticks = ticks[::2]
    return {"tickvals": ticks, "ticktext": [fmt(int(t) if t.is_integer() else t) for t in ticks]}


def base_layout(fig: go.Figure, title: str, **layout: Any) -> go.Figure:
    base: dict[str, Any] = {
        "title": {"text": ptext(title)},
        "template": "plotly_white",
        "hovermode": "closest",
        "legend": {"groupclick": "togglegroup"},
        "margin": {"l": 60, "r": 20, "t": 60, "b": 50},
        "height": 480,
    }
    fig.update_layout(**{**base, **layout})
    return fig


# --------------------------------------------------------------------------- figures


#: Costs measured by timing: a configuration's point is marked when one of its runs' timings
#: was flagged (taken while other processes loaded the machine, or too widely spread; see
#: ``harness.runtime.timing.time_stable``), since its position then says more about the machine.
TIMED_COSTS = ("train_step_ms", "train_images_per_s", "infer_latency_ms", "infer_images_per_s",
               "infer_latency_ms_b1")
FLAGGED_SYMBOL = "circle-x"
FLAGGED_LABEL = "timing flagged (busy machine or wide spread)"


def flagged_timing(rows: pl.DataFrame, cost: str) -> np.ndarray:
    """Per row, whether any of its runs' timings was flagged (``timing_flagged``, carried by
    the aggregation as the distinct values joined: 'false, true')."""
    if cost not in TIMED_COSTS or "timing_flagged" not in rows.columns:
        return np.zeros(rows.height, dtype=bool)
    text = rows["timing_flagged"].cast(pl.String).fill_null("").str.to_lowercase()
    return text.str.contains("true").to_numpy()


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
                legendgroup=str(router), visible=i == 0,
                marker={"color": color, "size": 8, "opacity": 0.8,
                        "symbol": np.where(flagged_timing(sub, cost), FLAGGED_SYMBOL, "circle"),
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


def best_per(
    data: pl.DataFrame, keys: list[str], quality: str,
) -> pl.DataFrame:
    """The best configuration (by mean ``quality``, direction-aware) of each ``keys`` group."""
    qcol = f"{quality}_mean"
    descending = not METRICS[quality].lower_is_better
    return (
        data.filter(pl.col(qcol).is_not_null())
        .sort(qcol, descending=descending, nulls_last=True)
        .group_by(keys, maintain_order=True)
        .first()
        .select(data.columns)
    )


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
