"""Quality over training: the evaluations and losses recorded during training (the records'
``history``), one line per configuration, mean over seeds (among the paper's figures)."""

from __future__ import annotations

import json
from typing import Any

import plotly.graph_objects as go
import polars as pl
from plotly.subplots import make_subplots

from reports.aggregate import ok_runs, spec_keys
from reports.figures.common import base_layout, floats, ptext, router_color
from reports.labels import config_label, router_name, sorted_routers
from reports.metrics import label


def history_frame(frame: pl.DataFrame) -> pl.DataFrame:
    """The ok runs' ``history`` as long rows: the spec keys, seed, step, and the recorded
    values (``test_accuracy`` where an evaluation ran, ``train_loss``). History written as
    JSON text (a store mixing record versions) is parsed."""
    if "history" not in frame.columns:
        return pl.DataFrame()
    ok = ok_runs(frame)
    keys = spec_keys(ok)
    selected = ok.select([*keys, *(["seed"] if "seed" in ok.columns else []), "history"])
    dtype = selected.schema["history"]
    if isinstance(dtype, pl.List) and isinstance(dtype.inner, pl.Struct):
        return _typed_history(selected, {f.name for f in dtype.inner.fields})
    rows: list[dict[str, Any]] = []
    for record in selected.iter_rows(named=True):
        history = record.pop("history")
        if isinstance(history, str):
            try:
                history = json.loads(history)
            except ValueError:
                continue
        for point in history or ():
            if not isinstance(point, dict) or point.get("step") is None:
                continue
            rows.append({**record, "step": point["step"],
                         "test_accuracy": point.get("test_accuracy"),
                         "train_loss": point.get("train_loss")})
    if not rows:
        return pl.DataFrame()
    return pl.DataFrame(rows, infer_schema_length=None).with_columns(
        pl.col("test_accuracy").cast(pl.Float64), pl.col("train_loss").cast(pl.Float64))


_VALUES = ("step", "test_accuracy", "train_loss")


def _typed_history(selected: pl.DataFrame, fields: set[str]) -> pl.DataFrame:
    """history_frame for a typed history column (list of structs): exploded by polars."""
    if "step" not in fields:
        return pl.DataFrame()
    long = (selected.explode("history").drop_nulls("history")
            .with_columns(*(pl.col("history").struct.field(f).cast(pl.Float64).alias(f)
                            if f in fields else pl.lit(None, pl.Float64).alias(f)
                            for f in _VALUES[1:]),
                          pl.col("history").struct.field("step").alias("step"))
            .drop("history").filter(pl.col("step").is_not_null()))
    if long.height == 0:
        return pl.DataFrame()
    return long.select([c for c in long.columns if c not in _VALUES] + list(_VALUES))


def fig_training_curves(frame: pl.DataFrame, *, max_lines: int = 24) -> go.Figure | None:
    """Test accuracy (from the evaluations during training) and training loss against the
    step, one line per configuration (mean over its seeds), coloured by router. With more
    than ``max_lines`` configurations, each router keeps its best by final accuracy."""
    long = history_frame(frame)
    if long.height == 0:
        return None
    keys = [k for k in spec_keys(long) if k not in ("step", "test_accuracy", "train_loss")]
    if not keys:
        return None
    mean = (long.group_by([*keys, "step"])
            .agg(pl.col("test_accuracy").mean(), pl.col("train_loss").mean())
            .sort([*keys, "step"], nulls_last=True))
    final = (mean.filter(pl.col("test_accuracy").is_not_null())
             .group_by(keys).agg(pl.col("test_accuracy").last().alias("_final")))
    configs = mean.select(keys).unique(maintain_order=True).join(
        final, on=keys, how="left", nulls_equal=True)
    routers = sorted_routers(configs["router"].to_list()) if "router" in keys else [None]
    if configs.height > max_lines:
        per = max(1, max_lines // max(1, len(routers)))
        configs = (configs.sort("_final", descending=True, nulls_last=True)
                   .group_by("router" if "router" in keys else keys[0], maintain_order=True)
                   .head(per))
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.08,
                        subplot_titles=["test accuracy during training (history subset)",
                                        "training loss"])
    shown: set[Any] = set()
    for config in configs.iter_rows(named=True):
        cond = pl.lit(True)
        for k in keys:
            cond = cond & pl.col(k).eq_missing(config[k])
        sub = mean.filter(cond)
        router = config.get("router")
        color = router_color(router, routers)
        name = ptext(config_label(config))
        for col, metric in ((1, "test_accuracy"), (2, "train_loss")):
            part = sub.filter(pl.col(metric).is_not_null())
            if part.height == 0:
                continue
            fig.add_trace(go.Scatter(
                x=floats(part["step"]), y=floats(part[metric]), mode="lines+markers",
                name=ptext(router_name(router)), legendgroup=str(router),
                showlegend=router not in shown, marker={"color": color, "size": 5},
                line={"color": color, "width": 1.5}, opacity=0.85,
                hovertemplate=f"{name}<br>step %{{x}}: %{{y:.4g}}<extra></extra>",
            ), row=1, col=col)
            shown.add(router)
    base_layout(fig, "Quality over training (mean over seeds per configuration)", height=460,
                 margin={"l": 60, "r": 20, "t": 90, "b": 50},
                 legend={"orientation": "h", "y": -0.2, "x": 0, "yanchor": "top"})
    fig.update_xaxes(title_text="step")
    fig.update_yaxes(title_text=ptext(label("test_accuracy")), col=1)
    fig.update_yaxes(title_text="training loss", type="log", col=2)
    return fig
