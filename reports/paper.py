"""The paper's figures, one function per figure, each returning a ``go.Figure`` (or ``None``).

Any study gets the figures its records can fill (:func:`paper_figures` asks each function;
a function returns ``None`` when the frame lacks what it draws), so the figures follow the
data, not the study's name:

* :func:`fig_experts_slots_heatmap`: quality or training throughput over experts (columns)
  x slots per token (rows), one panel per router (paper Fig. 6);
* :func:`fig_fronts`: each router's Pareto front against training compute (log axis, the
  convention in its label) or against eval cost, counted and measured (Fig. 3 and 5);
* :func:`fig_slots_per_expert`: Soft MoE's quality and step time (second y axis) against slots
  per expert (Fig. 12);
* :func:`fig_placement`: quality per MoE placement, last blocks against spread (Table 4);
* :func:`fig_ablations`: Soft MoE against its fixed-routing ablations and dense (Table 2);
* :func:`fig_training_curves`: quality and loss over training, from the evaluations recorded
  during training (the records' ``history``), mean over seeds;
* :func:`fig_dropped_tokens`: dropped-token fraction against the expert count for the sparse
  routers (appendix B).

All but the training curves take the aggregated frame (:func:`reports.aggregate.aggregate`);
the curves need the per-run ``history``, which the aggregate leaves out, so they take the
records. :func:`derive` adds the columns the figures and the claims check share (tokens per
image, slots per token, MoE blocks, placement kind), read from the records, which the harness
writes them into (``harness.spec.model.DERIVED_FIELDS``; torch-free, as a report must be).

"Slots per token" is the expert work per input token, comparable across routers: Soft MoE
n·p/m (n experts, p slots each, m tokens), Tokens Choice K·C, Experts Choice c.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
import polars as pl
from plotly.subplots import make_subplots

from harness.errors import ConfigError
from harness.spec import routers
from harness.spec.model import derived_fields, resolve_placement
from reports.figures import (
    FLAGGED_LABEL,
    FLAGGED_SYMBOL,
    ROW,
    SHARED,
    Hover,
    base_layout,
    best_per,
    config_label,
    flagged_timing,
    floats,
    fmt,
    hover_kwargs,
    hover_texts,
    power_ticks,
    primary_quality,
    ptext,
    router_color,
    router_name,
    sorted_routers,
    spec_columns,
    std_of,
    with_rows,
)
from reports.metrics import label
from reports.pareto import pareto_mask

SOFT_ROUTERS = routers.names("soft")  # Soft MoE and its fixed-routing ablations
SPARSE_ROUTERS = routers.names("sparse")
GRID_ROUTERS = ("soft", *SPARSE_ROUTERS)
ABLATION_ORDER = (*SOFT_ROUTERS, "dense")

#: Derived columns (see :func:`derive`).
TOKENS, SLOTS_PER_TOKEN, TOTAL_SLOTS = "_tokens", "_slots_per_token", "_total_slots"
DEPTH, BLOCKS, N_BLOCKS, PLACEMENT = "_depth", "_moe_blocks", "_n_moe_blocks", "_placement"


# --------------------------------------------------------------------------- derived columns


def model_depth(model: str | None) -> int | None:
    """Blocks of a ``vit-SIZE/PATCH`` backbone name, or None when unknown."""
    return derived_fields({"model": model})["depth"]


def moe_blocks(moe_layers: str | None, depth: int | None) -> tuple[int, ...] | None:
    """The MoE block indices of a placement (``harness.spec.model.resolve_placement``), or None
    when the placement or the depth is unknown."""
    if moe_layers in (None, "", "none") or depth is None:
        return None
    try:
        return resolve_placement(moe_layers, depth)
    except ConfigError:
        return None


def placement_kind(blocks: Sequence[int] | None, depth: int | None) -> str | None:
    """``last`` (consecutive blocks ending at the last one), ``spread`` (several blocks,
    otherwise), ``single`` (one block), or None when unknown."""
    if not blocks or depth is None:
        return None
    if len(blocks) == 1:
        return "single"
    consecutive = all(b - a == 1 for a, b in zip(blocks, blocks[1:], strict=False))
    return "last" if consecutive and blocks[-1] == depth - 1 else "spread"


def _record_fields(row: dict[str, Any]) -> dict[str, Any]:
    """The record's derived columns (``harness.spec.model.DERIVED_FIELDS``); for records written
    before the harness wrote them, computed from their spec columns the same way."""
    if row.get("router_family") is not None:
        return row
    return derived_fields(row)


def derive(agg: pl.DataFrame) -> pl.DataFrame:
    """``agg`` with the shared derived columns (nulls where the spec does not say): the
    records' tokens, slots per token, MoE blocks and depth, Soft MoE's total slots (experts x
    rows per expert) and the placement kind."""
    tokens, sigma, total, depth, blocks, nblocks, kind = [], [], [], [], [], [], []
    for row in agg.iter_rows(named=True):
        f = _record_fields(row)
        b = moe_blocks(f["moe_blocks"], f["depth"])
        rows = f["expert_rows"]
        tokens.append(f["tokens"])
        sigma.append(f["slots_per_token"])
        total.append(round(row["num_experts"] * rows)
                     if f["router_family"] == "soft" and rows is not None else None)
        depth.append(f["depth"])
        blocks.append(f["moe_blocks"])
        nblocks.append(f["n_moe_blocks"] or None)
        kind.append(placement_kind(b, f["depth"]))
    return agg.with_columns(
        pl.Series(TOKENS, tokens, dtype=pl.Int64),
        pl.Series(SLOTS_PER_TOKEN, sigma, dtype=pl.Float64),
        pl.Series(TOTAL_SLOTS, total, dtype=pl.Int64),
        pl.Series(DEPTH, depth, dtype=pl.Int64),
        pl.Series(BLOCKS, blocks, dtype=pl.String),
        pl.Series(N_BLOCKS, nblocks, dtype=pl.Int64),
        pl.Series(PLACEMENT, kind, dtype=pl.String),
    )


def _prepare(agg: pl.DataFrame, hover: Hover) -> tuple[pl.DataFrame, Hover]:
    agg = with_rows(agg)
    if TOKENS not in agg.columns:
        agg = derive(agg)
    return agg, (hover if hover is not None else hover_texts(agg))


def _has(agg: pl.DataFrame, *cols: str) -> bool:
    return all(c in agg.columns for c in cols)


def _g(value: Any) -> str:
    """A spec value as a short label: 16, 0.5, 2."""
    if value is None:
        return "-"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return f"{value:g}" if isinstance(value, float) else str(value)


# --------------------------------------------------------------------------- heat maps


def _is_grid(cells: pl.DataFrame) -> bool:
    """Cells (num_experts, slots per token) form a grid: some row has two expert counts and
    some column two slots-per-token values (a diagonal, as in the placement study, does not)."""
    rows = cells.group_by(SLOTS_PER_TOKEN).agg(pl.col("num_experts").n_unique().alias("n"))
    cols = cells.group_by("num_experts").agg(pl.col(SLOTS_PER_TOKEN).n_unique().alias("n"))
    return bool((rows["n"] >= 2).any() and (cols["n"] >= 2).any())


def fig_experts_slots_heatmap(
    agg: pl.DataFrame, metric: str | None = None, *, hover: Hover = None,
) -> go.Figure | None:
    """``metric`` (default: the primary quality) over experts (columns) x slots per token
    (rows): one panel per router (Soft MoE, Tokens Choice, Experts Choice) and one row of
    panels per model whose cells form a grid, all on one colour scale.

    Each cell is the best configuration (by quality) of that model and router with that
    expert count and slots per token; its value is that configuration's mean ``metric``.
    """
    agg, hover = _prepare(agg, hover)
    quality = primary_quality(agg)
    metric = metric or quality
    if quality is None or metric is None or f"{metric}_mean" not in agg.columns:
        return None
    if not _has(agg, "router", "num_experts", "model"):
        return None
    data = agg.filter(pl.col("router").is_in(list(GRID_ROUTERS))
                      & pl.col("num_experts").is_not_null()
                      & pl.col(SLOTS_PER_TOKEN).is_not_null()
                      & pl.col(f"{quality}_mean").is_not_null())
    if data.height == 0:
        return None
    best = best_per(data, ["model", "router", "num_experts", SLOTS_PER_TOKEN], quality)
    panels = [(m, r) for (m, r), cells in sorted(
        best.group_by(["model", "router"]), key=lambda g: (str(g[0][0]),
                                                           GRID_ROUTERS.index(g[0][1])))
        if _is_grid(cells)]
    models = list(dict.fromkeys(m for m, _ in panels))
    if not models:
        return None
    routers = [r for r in GRID_ROUTERS if any(r == pr for _, pr in panels)]
    values = best.filter(pl.col("model").is_in(models))[f"{metric}_mean"].cast(
        pl.Float64).drop_nulls()
    zmin, zmax = (float(values.min()), float(values.max())) if values.len() else (0.0, 1.0)
    titles = [ptext(f"{router_name(r)}, {m}" if len(models) > 1 else router_name(r))
              for m in models for r in routers]
    fig = make_subplots(rows=len(models), cols=len(routers), shared_yaxes=True,
                        horizontal_spacing=0.05, vertical_spacing=0.18 / len(models),
                        subplot_titles=titles)
    for i, model in enumerate(models, 1):
        sub_model = best.filter(pl.col("model") == model)
        experts = sorted(set(sub_model["num_experts"].to_list()))
        sigmas = sorted(set(sub_model[SLOTS_PER_TOKEN].to_list()))
        xs, ys = [_g(e) for e in experts], [_g(s) for s in sigmas]
        for j, router in enumerate(routers, 1):
            sub = sub_model.filter(pl.col("router") == router)
            z = [[None] * len(experts) for _ in sigmas]
            text = [[""] * len(experts) for _ in sigmas]
            for row in sub.iter_rows(named=True):
                r, c = sigmas.index(row[SLOTS_PER_TOKEN]), experts.index(row["num_experts"])
                z[r][c] = row[f"{metric}_mean"]
                text[r][c] = (hover[row[ROW]] if not isinstance(hover, str)
                              else ptext(config_label(row)))
            fig.add_trace(go.Heatmap(
                x=xs, y=ys, z=z, customdata=text, zmin=zmin, zmax=zmax,
                colorscale="Viridis", texttemplate="%{z:.3g}",
                hovertemplate="%{customdata}<extra></extra>",
                showscale=i == 1 and j == len(routers),
                colorbar={"title": {"text": ptext(label(metric))}},
                name=ptext(router_name(router)), hoverongaps=False,
            ), row=i, col=j)
        fig.update_xaxes(title_text="experts", type="category", categoryorder="array",
                         categoryarray=xs, row=i)
        fig.update_yaxes(type="category", categoryorder="array", categoryarray=ys, row=i)
        fig.update_yaxes(title_text="slots per token", row=i, col=1)
    base_layout(fig, f"{label(metric)} over experts x slots per token (best configuration "
                 "per cell)", height=380 * len(models) + 60)
    return fig


# --------------------------------------------------------------------------- Pareto fronts


def _symbols(rows: pl.DataFrame, cost: str) -> np.ndarray:
    """Marker symbols: flagged timings marked on the time-based axes (reports.figures)."""
    return np.where(flagged_timing(rows, cost), FLAGGED_SYMBOL, "circle")


def fig_fronts(
    agg: pl.DataFrame, costs: Sequence[str], quality: str | None = None, *,
    title: str | None = None, hover: Hover = None,
) -> go.Figure | None:
    """Quality against each of ``costs`` (one panel each, log x axes labelled with the
    metric and its convention): every configuration as a faint point, each router's Pareto
    front as a line through its non-dominated points (as the paper draws them), the front
    over all routers dashed. Costs never measured are left out; None if none is."""
    agg, hover = _prepare(agg, hover)
    quality = quality or primary_quality(agg)
    if quality is None or "router" not in agg.columns:
        return None
    qcol = f"{quality}_mean"
    present = []
    for cost in costs:
        col = f"{cost}_mean"
        if col in agg.columns:
            data = agg.filter((pl.col(col).cast(pl.Float64).fill_nan(None) > 0)
                              & pl.col(qcol).is_not_null())
            if data.height:
                present.append((cost, data))
    if not present:
        return None
    fig = make_subplots(rows=1, cols=len(present), shared_yaxes=True, horizontal_spacing=0.05)
    routers = sorted_routers(agg["router"].to_list())
    for i, (cost, data) in enumerate(present, 1):
        col = f"{cost}_mean"
        data = data.with_columns(pareto_mask(data, col, qcol, by="router").alias("_rf"),
                                 pareto_mask(data, col, qcol).alias("_f"))
        for router in routers:
            sub = data.filter(pl.col("router").eq_missing(router))
            if sub.height == 0:
                continue
            color = router_color(router, routers)
            rest, front = sub.filter(~pl.col("_rf")), sub.filter("_rf").sort(col)
            if rest.height:
                fig.add_trace(go.Scatter(
                    x=floats(rest[col]), y=floats(rest[qcol]), mode="markers",
                    name=ptext(router_name(router)), legendgroup=str(router), showlegend=False,
                    marker={"color": color, "size": 6, "opacity": 0.35,
                            "symbol": _symbols(rest, cost)}, **hover_kwargs(rest, hover),
                ), row=1, col=i)
            std = std_of(front, quality)
            fig.add_trace(go.Scatter(
                x=floats(front[col]), y=floats(front[qcol]), mode="lines+markers",
                name=ptext(router_name(router)), legendgroup=str(router), showlegend=i == 1,
                marker={"color": color, "size": 9, "line": {"color": "black", "width": 1},
                        "symbol": _symbols(front, cost)},
                line={"color": color, "width": 2},
                error_y={"type": "data", "array": std if std is not None else [],
                         "visible": std is not None, "thickness": 1},
                **hover_kwargs(front, hover),
            ), row=1, col=i)
        overall = data.filter("_f").sort(col)
        fig.add_trace(go.Scatter(
            x=floats(overall[col]), y=floats(overall[qcol]), mode="lines",
            name="front, all routers", legendgroup="_all", showlegend=i == 1,
            hoverinfo="skip", line={"color": "black", "width": 1.2, "dash": "dash"},
        ), row=1, col=i)
        fig.update_xaxes(type="log", title_text=ptext(label(cost)), row=1, col=i)
    if any(flagged_timing(data, cost).any() for cost, data in present):
        fig.add_trace(go.Scatter(  # a legend entry only
            x=[None], y=[None], mode="markers", name=ptext(FLAGGED_LABEL), hoverinfo="skip",
            marker={"color": "grey", "size": 8, "symbol": FLAGGED_SYMBOL}), row=1, col=1)
    base_layout(fig, title or f"{label(quality)}: Pareto fronts", height=460,
                 legend={"orientation": "h", "y": -0.2, "x": 0, "yanchor": "top"})
    fig.update_yaxes(title_text=ptext(label(quality)), col=1)
    return fig


def fig_training_fronts(agg: pl.DataFrame, *, hover: Hover = None) -> go.Figure | None:
    """Fronts against training compute, in the paper's convention when recorded (3 x forward
    multiply-adds x images), else ours (3 x forward FLOPs x images): the axis label says."""
    cost = "train_exaflops_paper" if _present(agg, "train_exaflops_paper") else "train_exaflops"
    return fig_fronts(agg, [cost], title="Training Pareto fronts: quality against training "
                      "compute", hover=hover)


def fig_eval_fronts(agg: pl.DataFrame, *, hover: Hover = None) -> go.Figure | None:
    """Fronts against eval cost, counted (GFLOP/img) and measured (latency, throughput)."""
    return fig_fronts(agg, ["gflops_per_image", "infer_latency_ms", "infer_images_per_s"],
                      title="Inference Pareto fronts: quality against eval cost (counted and "
                      "measured)", hover=hover)


def _present(agg: pl.DataFrame, metric: str) -> bool:
    col = f"{metric}_mean"
    return col in agg.columns and agg[col].cast(pl.Float64).fill_nan(None).null_count() < (
        agg.height)


# --------------------------------------------------------------------------- slots per expert


def fig_slots_per_expert(
    agg: pl.DataFrame, quality: str | None = None, *, hover: Hover = None,
) -> go.Figure | None:
    """Soft MoE's quality (left axis, solid) and training step time (right axis, dashed)
    against slots per expert, one line per (model, experts) with at least two slot counts;
    dense models as dotted quality references."""
    agg, hover = _prepare(agg, hover)
    quality = quality or primary_quality(agg)
    if quality is None or not _has(agg, "router", "slots_per_expert", "num_experts", "model"):
        return None
    qcol = f"{quality}_mean"
    soft = agg.filter((pl.col("router") == "soft") & pl.col("slots_per_expert").is_not_null()
                      & pl.col(qcol).is_not_null())
    if soft.height == 0:
        return None
    best = best_per(soft, ["model", "num_experts", "slots_per_expert"], quality)
    lines = (best.group_by(["model", "num_experts"])
             .agg(pl.col("slots_per_expert").n_unique().alias("n"))
             .filter(pl.col("n") >= 2).sort(["model", "num_experts"]))
    if lines.height == 0:
        return None
    step = _present(best, "train_step_ms")
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    palette = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#8c564b", "#17becf")
    xs_all: list[Any] = []
    for i, (model, experts, _) in enumerate(lines.iter_rows()):
        sub = best.filter((pl.col("model") == model) & (pl.col("num_experts") == experts)).sort(
            "slots_per_expert")
        xs_all += sub["slots_per_expert"].to_list()
        color = palette[i % len(palette)]
        name = f"{model}, {experts} experts"
        std = std_of(sub, quality)
        fig.add_trace(go.Scatter(
            x=floats(sub["slots_per_expert"]), y=floats(sub[qcol]), mode="lines+markers",
            name=ptext(f"{label(quality)}: {name}"), marker={"color": color, "size": 8},
            line={"color": color},
            error_y={"type": "data", "array": std if std is not None else [],
                     "visible": std is not None, "thickness": 1},
            **hover_kwargs(sub, hover),
        ), secondary_y=False)
        if step:
            fig.add_trace(go.Scatter(
                x=floats(sub["slots_per_expert"]), y=floats(sub["train_step_ms_mean"]),
                mode="lines+markers", name=ptext(f"step time: {name}"),
                marker={"color": color, "size": 7, "symbol": "diamond-open"},
                line={"color": color, "dash": "dash"}, **hover_kwargs(sub, hover),
            ), secondary_y=True)
    dense = agg.filter((pl.col("router") == "dense") & pl.col(qcol).is_not_null())
    models = set(lines["model"].to_list())
    for row in best_per(dense, ["model"], quality).iter_rows(named=True) if dense.height else ():
        if row["model"] in models:
            x = [min(xs_all), max(xs_all)]
            fig.add_trace(go.Scatter(
                x=x, y=[row[qcol]] * 2, mode="lines", name=ptext(f"dense {row['model']}"),
                line={"color": router_color("dense"), "dash": "dot"},
                hovertemplate=ptext(f"dense {row['model']}: {fmt(row[qcol])}") + "<extra></extra>",
            ), secondary_y=False)
    base_layout(fig, f"Soft MoE: {label(quality)} and step time against slots per expert",
                 legend={"orientation": "h", "y": -0.2, "x": 0, "yanchor": "top"}, height=480)
    fig.update_xaxes(type="log", title_text="slots per expert", **power_ticks(xs_all))
    fig.update_yaxes(title_text=ptext(label(quality)), secondary_y=False)
    if step:
        fig.update_yaxes(title_text=ptext(label("train_step_ms")), secondary_y=True,
                         showgrid=False)
    return fig


# --------------------------------------------------------------------------- bars


def _bar_trace(sub: pl.DataFrame, x: list[str], quality: str, hover: Hover, **kw) -> go.Bar:
    std = std_of(sub, quality)
    h = hover_kwargs(sub, hover)
    return go.Bar(
        x=x, y=floats(sub[f"{quality}_mean"]),
        error_y={"type": "data", "array": std if std is not None else [],
                 "visible": std is not None, "thickness": 1},
        textposition="none", **h, **kw,
    )


PLACEMENT_COLORS = {"last": "#1f77b4", "spread": "#ff7f0e", "single": "#7f7f7f"}


def fig_placement(
    agg: pl.DataFrame, quality: str | None = None, *, hover: Hover = None,
) -> go.Figure | None:
    """Quality per MoE placement (Soft MoE and its variants), one bar each, ordered as the
    paper's table (by the number of MoE blocks, last blocks before spread ones), coloured by
    kind; a dotted line marks the dense model. One panel per model with at least two
    placements."""
    agg, hover = _prepare(agg, hover)
    quality = quality or primary_quality(agg)
    if quality is None or not _has(agg, "router", "model", "moe_layers"):
        return None
    qcol = f"{quality}_mean"
    moe = agg.filter(pl.col("router").is_in(list(SOFT_ROUTERS)) & pl.col(BLOCKS).is_not_null()
                     & pl.col(qcol).is_not_null())
    if moe.height == 0:
        return None
    best = best_per(moe, ["model", BLOCKS], quality)
    counts = best.group_by("model").agg(pl.len().alias("n")).filter(pl.col("n") >= 2)
    models = sorted(counts["model"].to_list(), key=str)
    if not models:
        return None
    fig = make_subplots(rows=len(models), cols=1, subplot_titles=[ptext(m) for m in models],
                        vertical_spacing=0.15)
    order = {"single": 1, "last": 0, "spread": 2}
    shown: set[str] = set()
    for i, model in enumerate(models, 1):
        sub = best.filter(pl.col("model") == model).with_columns(
            pl.col(PLACEMENT).replace_strict(order, default=3).alias("_o"))
        sub = sub.sort([N_BLOCKS, "_o", BLOCKS])
        x = [f"{{{b}}} x{_g(e)}" for b, e in zip(sub[BLOCKS], sub["num_experts"], strict=True)]
        for kind in ("last", "spread", "single"):
            part = sub.with_columns(pl.Series("_x", x)).filter(pl.col(PLACEMENT) == kind)
            if part.height == 0:
                continue
            fig.add_trace(_bar_trace(
                part, part["_x"].to_list(), quality, hover,
                name=f"{kind} block{'s' if kind != 'single' else ''}", legendgroup=kind,
                showlegend=kind not in shown, marker={"color": PLACEMENT_COLORS[kind]},
            ), row=i, col=1)
            shown.add(kind)
        dense = agg.filter((pl.col("router") == "dense") & (pl.col("model") == model)
                           & pl.col(qcol).is_not_null())
        if dense.height:
            value = best_per(dense, ["model"], quality)[qcol][0]
            fig.add_trace(go.Scatter(
                x=[x[0], x[-1]], y=[value, value], mode="lines", name="dense",
                legendgroup="dense", showlegend="dense" not in shown,
                line={"color": "black", "dash": "dot"},
                hovertemplate=ptext(f"dense {model}: {fmt(value)}") + "<extra></extra>",
            ), row=i, col=1)
            shown.add("dense")
        fig.update_xaxes(type="category", categoryorder="array", categoryarray=x, row=i, col=1)
    base_layout(fig, f"{label(quality)} by MoE placement ({{blocks}} x experts per block)",
                 height=380 * len(models) + 80, barmode="group")
    fig.update_yaxes(title_text=ptext(label(quality)))
    return fig


def fig_ablations(
    agg: pl.DataFrame, quality: str | None = None, *, hover: Hover = None,
) -> go.Figure | None:
    """Soft MoE against its fixed-routing ablations (Soft / Uniform, Uniform / Soft,
    Uniform, Identity) and dense: one bar per variant, grouped by model, error bars over
    seeds. Soft MoE is shown only with the settings an ablation ran with (experts, slots,
    placement, ...); per model and variant, the best such configuration. Drawn when an
    ablation ran."""
    agg, hover = _prepare(agg, hover)
    quality = quality or primary_quality(agg)
    if quality is None or not _has(agg, "router", "model"):
        return None
    qcol = f"{quality}_mean"
    data = agg.filter(pl.col("router").is_in(list(ABLATION_ORDER)) & pl.col(qcol).is_not_null())
    ablations = data.filter(pl.col("router").is_in(list(SOFT_ROUTERS[1:])))
    if ablations.height == 0:
        return None
    # Soft MoE only where an ablation has the same other settings; dense of those models
    context = [c for c in spec_columns(agg) if c not in ("router", "spec")]
    soft = data.filter(pl.col("router") == "soft").join(
        ablations.select(context).unique(), on=context, how="semi", nulls_equal=True)
    models = ablations["model"].unique().to_list()
    dense = data.filter((pl.col("router") == "dense") & pl.col("model").is_in(models))
    best = best_per(pl.concat([soft, ablations, dense]), ["model", "router"], quality)
    fig = go.Figure()
    present = [r for r in ABLATION_ORDER if r in set(best["router"].to_list())]
    for model in sorted(set(best["model"].to_list()), key=str):
        sub = best.filter(pl.col("model") == model).with_columns(
            pl.col("router").replace_strict({r: i for i, r in enumerate(ABLATION_ORDER)},
                                            default=99).alias("_o")).sort("_o")
        fig.add_trace(_bar_trace(
            sub, [router_name(r) for r in sub["router"].to_list()], quality, hover,
            name=ptext(str(model)),
            marker={"color": [router_color(r) for r in sub["router"].to_list()]},
        ))
    base_layout(fig, f"{label(quality)}: Soft MoE against its fixed-routing ablations",
                 barmode="group", height=440)
    fig.update_xaxes(type="category", categoryorder="array",
                     categoryarray=[router_name(r) for r in present])
    fig.update_yaxes(title_text=ptext(label(quality)))
    return fig


# --------------------------------------------------------------------------- training curves


def history_frame(frame: pl.DataFrame) -> pl.DataFrame:
    """The ok runs' ``history`` as long rows: the spec keys, seed, step, and the recorded
    values (``test_accuracy`` where an evaluation ran, ``train_loss``). History written as
    JSON text (a store mixing record versions) is parsed."""
    from reports.aggregate import ok_runs, spec_keys

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
    from reports.aggregate import spec_keys

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


# --------------------------------------------------------------------------- dropped tokens


def fig_dropped_tokens(agg: pl.DataFrame, *, hover: Hover = None) -> go.Figure | None:
    """Dropped-token fraction against the expert count for Tokens Choice and Experts Choice
    (tokens no expert took): one line per sweep, i.e. configurations equal but for the
    expert count (so K, c, model and placement fixed along a line). Drawn when some sweep
    has two or more expert counts."""
    agg, hover = _prepare(agg, hover)
    col = "router_dropped_fraction_mean"
    if not _has(agg, col, "num_experts", "router"):
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
        knob = (f"K={_g(row.get('k'))}" if router == "tokens_choice"
                else f"c={_g(row.get('capacity_factor'))}")
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


# --------------------------------------------------------------------------- the section


FIGURES: tuple[tuple[str, str, str], ...] = (
    ("fig-paper-heatmap-quality", "Experts x slots: quality", "heat_quality"),
    ("fig-paper-heatmap-throughput", "Experts x slots: training throughput", "heat_speed"),
    ("fig-paper-fronts-train", "Training Pareto fronts", "train_fronts"),
    ("fig-paper-fronts-eval", "Inference Pareto fronts", "eval_fronts"),
    ("fig-paper-slots", "Slots per expert", "slots"),
    ("fig-paper-placement", "Expert placement", "placement"),
    ("fig-paper-ablations", "Fixed-routing ablations", "ablations"),
    ("fig-paper-curves", "Quality over training", "curves"),
    ("fig-paper-dropped", "Dropped tokens", "dropped"),
)


def paper_figures(frame: pl.DataFrame, agg: pl.DataFrame | None = None, *,
                  shared_hover: bool = False) -> list[tuple[str, go.Figure]]:
    """(div id, figure) for every paper figure the records can fill, in page order.

    ``shared_hover``: scatter and bar traces carry only row numbers and take their hover
    text from the page's one array (``reports.html.hover_script``), as the page's own
    figures do; only for a page rendered from the same ``frame``, whose aggregated rows are
    then the same. Heat maps always carry their (few) cells' texts.
    """
    from reports.aggregate import aggregate

    agg = derive(with_rows(aggregate(frame) if agg is None else agg))
    texts = hover_texts(agg)
    hover: Hover = SHARED if shared_hover else texts
    makers = {
        "heat_quality": lambda: fig_experts_slots_heatmap(agg, hover=texts),
        "heat_speed": lambda: fig_experts_slots_heatmap(agg, "train_images_per_s", hover=texts),
        "train_fronts": lambda: fig_training_fronts(agg, hover=hover),
        "eval_fronts": lambda: fig_eval_fronts(agg, hover=hover),
        "slots": lambda: fig_slots_per_expert(agg, hover=hover),
        "placement": lambda: fig_placement(agg, hover=hover),
        "ablations": lambda: fig_ablations(agg, hover=hover),
        "curves": lambda: fig_training_curves(frame),
        "dropped": lambda: fig_dropped_tokens(agg, hover=hover),
    }
    out = []
    for fig_id, _, key in FIGURES:
        fig = makers[key]()
        if fig is not None:
            out.append((fig_id, fig))
    return out


def paper_section(frame: pl.DataFrame, agg: pl.DataFrame | None = None) -> str | None:
    """The page section with the paper's figures (None when no figure fits the records).

    For the page of the same ``frame`` (``reports.build``): hover texts come from the
    page's shared array, so a configuration's text is written once, not once per figure.
    """
    from reports.html import figure_html

    figures = paper_figures(frame, agg, shared_hover=True)
    if not figures:
        return None
    note = ('<p class="note">The paper\'s figures that these records can fill. Points and '
            "cells are means over seeds; where several configurations share a point "
            "(learning rates, placements), the best by quality is shown. Slots per token = "
            "expert work per input token: Soft MoE experts x slots / tokens, Tokens Choice "
            "K x C, Experts Choice c.</p>")
    body = "".join(figure_html(fig_id, fig) for fig_id, fig in figures)
    return f'<section id="paper"><h2>The paper\'s figures</h2>{note}{body}</section>'
