"""What every figure shares: record text for plotly, router colours, hover texts, error bars,
axes and layout, and the marker of flagged timings.

Text that comes from records (model names, run ids, errors) reaches plotly only through
:func:`ptext` and :func:`hover_texts`, which escape it: plotly renders hover text as a subset
of HTML and decodes entities, so an escaped ``<script>`` shows as text.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import plotly.graph_objects as go
import polars as pl

from harness.spec.routers import ROUTERS
from reports.aggregate import ROW, prepared, spec_columns
from reports.labels import config_label, fmt, fmt_mean_std
from reports.metrics import COST_AXES, QUALITY_AXES, label

_PALETTE = ("#7f7f7f", "#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2",
            "#17becf", "#bcbd22", "#d62728")
_HOVER_RUN_IDS = 6


def ptext(value: Any) -> str:
    """Record text for plotly: its pseudo-HTML (hover, legend, titles) decodes ``&lt;``,
    ``&gt;`` and ``&amp;`` but shows ``&quot;`` as is, so quotes stay unescaped (harmless
    without a ``<``)."""
    return html.escape(str(value), quote=False)


def router_color(router: str | None, routers: Sequence[str | None] = ()) -> str:
    """One colour per registered router (by registration order), then the unknown ones."""
    order = list(ROUTERS)
    if router in order:
        return _PALETTE[order.index(router) % len(_PALETTE)]
    others = [r for r in routers if r not in order]
    i = others.index(router) if router in others else 0
    return _PALETTE[(len(order) + i) % len(_PALETTE)]


# --------------------------------------------------------------------------- hover texts


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


#: Hover text: ``None`` (compute it), a list (one text per aggregated row) or ``SHARED``.
Hover = Sequence[str] | Literal["shared"] | None
#: Traces then carry only row numbers (``customdata``) and ``meta=HOVER_META``; the page
#: fills their text from one array of hover texts, written once instead of once per figure.
SHARED: Literal["shared"] = "shared"
HOVER_META = "hover-rows"


def hover_kwargs(sub: pl.DataFrame, hover: Hover) -> dict[str, Any]:
    """Trace keyword arguments that show a row's hover text."""
    rows = sub[ROW].to_list()  # a plain list: the page's script reads it before plotly does
    return row_hover(rows, hover)


def row_hover(rows: list[int], hover: Hover) -> dict[str, Any]:
    """Trace keyword arguments that show the hover texts of aggregated rows ``rows``."""
    template = "%{text}<extra></extra>"
    if isinstance(hover, str):
        return {"customdata": rows, "meta": HOVER_META, "hovertemplate": template}
    assert hover is not None
    return {"customdata": rows, "text": [hover[r] for r in rows], "hovertemplate": template}


def prepare(agg: pl.DataFrame, hover: Hover) -> tuple[pl.DataFrame, Hover]:
    """The aggregate as a figure reads it (``reports.aggregate.prepared``) and its hover
    texts (computed here when the caller passes none)."""
    agg = prepared(agg)
    return agg, (hover if hover is not None else hover_texts(agg))


def has_columns(agg: pl.DataFrame, *cols: str) -> bool:
    return all(c in agg.columns for c in cols)


# --------------------------------------------------------------------------- values and axes


def floats(series: pl.Series) -> np.ndarray:
    """Float64 array, nulls as NaN (plotly leaves NaN points undrawn)."""
    return series.cast(pl.Float64).fill_null(float("nan")).to_numpy()


def std_of(agg: pl.DataFrame, metric: str) -> np.ndarray | None:
    """Standard deviations as an array (0 where a single seed), None when there are none."""
    col = f"{metric}_std"
    if col not in agg.columns or agg[col].null_count() == agg.height:
        return None
    return agg[col].cast(pl.Float64).fill_nan(None).fill_null(0.0).to_numpy()


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


# --------------------------------------------------------------------------- flagged timings


#: Costs measured by timing: a configuration's point is marked when one of its runs' timings
#: was flagged (taken while other processes loaded the machine, or too widely spread; see
#: ``harness.runtime.timing.time_stable``), since its position then says more about the machine.
TIMED_COSTS = ("train_step_ms", "train_images_per_s", "infer_latency_ms", "infer_images_per_s",
               "infer_latency_ms_b1")
FLAGGED_SYMBOL = "circle-x"
FLAGGED_LABEL = "timing flagged (busy machine or wide spread)"


def legend_entry(name: str, color: str, group: str, *, line: bool = False) -> go.Scatter:
    """A trace that only draws a legend item (no point): the router's colour on a plain
    circle, whatever symbols (flagged timings) and outlines (front members) its points carry,
    so a legend marker never takes the look of the first point drawn."""
    return go.Scatter(x=[None], y=[None], mode="lines+markers" if line else "markers",
                      name=name, legendgroup=group, hoverinfo="skip",
                      marker={"color": color, "size": 8, "symbol": "circle"},
                      line={"color": color, "width": 2})


def flagged_timing(rows: pl.DataFrame, cost: str) -> np.ndarray:
    """Per row, whether any of its runs' timings was flagged (``timing_flagged``, carried by
    the aggregation as the distinct values joined: 'false, true')."""
    if cost not in TIMED_COSTS or "timing_flagged" not in rows.columns:
        return np.zeros(rows.height, dtype=bool)
    text = rows["timing_flagged"].cast(pl.String).fill_null("").str.to_lowercase()
    return text.str.contains("true").to_numpy()


def flagged_note(frame: pl.DataFrame) -> str | None:
    """One line on why time-based points are crossed circles (None when no ok run's timing
    was flagged), from the records' ``timing_flagged`` and ``timing_others_cpu``."""
    if "timing_flagged" not in frame.columns or "status" not in frame.columns:
        return None
    ok = frame.filter(pl.col("status") == "ok")
    flagged = ok.filter(pl.col("timing_flagged").cast(pl.String).str.to_lowercase() == "true")
    if flagged.height == 0:
        return None
    busy = flagged.filter(pl.col("timing_others_cpu").cast(pl.Float64) > 0.25).height \
        if "timing_others_cpu" in flagged.columns else 0
    why = (f"{busy} of them while other processes used over 25% of the CPUs, the rest too "
           "widely spread" if busy else "their repeated calls too widely spread")
    return (f"Timing flagged for {flagged.height} of {ok.height} ok runs ({why}): their "
            "configurations are crossed circles on the time panels, whose positions then say "
            "more about the machine than the model; FLOPs and parameters are unaffected.")


def marker_symbols(rows: pl.DataFrame, cost: str) -> np.ndarray:
    """Marker symbols: flagged timings marked on the time-based axes."""
    return np.where(flagged_timing(rows, cost), FLAGGED_SYMBOL, "circle")
