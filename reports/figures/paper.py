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
* ``reports.figures.training.fig_training_curves``: quality and loss over training, from the
  evaluations recorded during training (the records' ``history``), mean over seeds;
* ``reports.figures.routers.fig_dropped_tokens``: dropped-token fraction against the expert
  count for the sparse routers (appendix B).

All but the training curves take the aggregated frame (``reports.aggregate.summarise``, whose
report columns they share with the claims check); the curves need the per-run ``history``,
which the aggregate leaves out, so they take the records.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import plotly.graph_objects as go
import polars as pl
from plotly.subplots import make_subplots

from reports.aggregate import (
    BLOCKS,
    N_BLOCKS,
    PLACEMENT,
    ROW,
    SLOTS_PER_TOKEN,
    best_per,
    prepared,
    present,
    primary_quality,
    spec_columns,
    summarise,
)
from reports.figures.common import (
    FLAGGED_LABEL,
    FLAGGED_SYMBOL,
    SHARED,
    Hover,
    base_layout,
    flagged_timing,
    floats,
    has_columns,
    hover_kwargs,
    hover_texts,
    legend_entry,
    marker_symbols,
    power_ticks,
    prepare,
    ptext,
    router_color,
    std_of,
)
from reports.figures.routers import fig_dropped_tokens
from reports.figures.training import fig_training_curves
from reports.labels import (
    SOFT_ROUTERS,
    SPARSE_ROUTERS,
    config_label,
    fmt,
    router_name,
    short,
    sorted_routers,
)
from reports.metrics import label
from reports.pareto import pareto_mask

GRID_ROUTERS = ("soft", *SPARSE_ROUTERS)
ABLATION_ORDER = (*SOFT_ROUTERS, "dense")


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
    agg, hover = prepare(agg, hover)
    quality = primary_quality(agg)
    metric = metric or quality
    if quality is None or metric is None or f"{metric}_mean" not in agg.columns:
        return None
    if not has_columns(agg, "router", "num_experts", "model"):
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
        xs, ys = [short(e) for e in experts], [short(s) for s in sigmas]
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


def fig_fronts(
    agg: pl.DataFrame, costs: Sequence[str], quality: str | None = None, *,
    title: str | None = None, hover: Hover = None,
) -> go.Figure | None:
    """Quality against each of ``costs`` (one panel each, log x axes labelled with the
    metric and its convention): every configuration as a faint point, each router's Pareto
    front as a line through its non-dominated points (as the paper draws them), the front
    over all routers dashed. Costs never measured are left out; None if none is."""
    agg, hover = prepare(agg, hover)
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
    legend: set[str | None] = set()
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
                            "symbol": marker_symbols(rest, cost)}, **hover_kwargs(rest, hover),
                ), row=1, col=i)
            std = std_of(front, quality)
            fig.add_trace(go.Scatter(
                x=floats(front[col]), y=floats(front[qcol]), mode="lines+markers",
                name=ptext(router_name(router)), legendgroup=str(router), showlegend=False,
                marker={"color": color, "size": 9, "line": {"color": "black", "width": 1},
                        "symbol": marker_symbols(front, cost)},
                line={"color": color, "width": 2},
                error_y={"type": "data", "array": std if std is not None else [],
                         "visible": std is not None, "thickness": 1},
                **hover_kwargs(front, hover),
            ), row=1, col=i)
            if router not in legend:
                legend.add(router)
                fig.add_trace(legend_entry(ptext(router_name(router)), color, str(router),
                                           line=True), row=1, col=1)
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
    cost = "train_exaflops_paper" if present(agg, "train_exaflops_paper") else "train_exaflops"
    return fig_fronts(agg, [cost], title="Training Pareto fronts: quality against training "
                      "compute", hover=hover)


def fig_eval_fronts(agg: pl.DataFrame, *, hover: Hover = None) -> go.Figure | None:
    """Fronts against eval cost, counted (GFLOP/img) and measured (latency, throughput)."""
    return fig_fronts(agg, ["gflops_per_image", "infer_latency_ms", "infer_images_per_s"],
                      title="Inference Pareto fronts: quality against eval cost (counted and "
                      "measured)", hover=hover)


# --------------------------------------------------------------------------- slots per expert


def fig_slots_per_expert(
    agg: pl.DataFrame, quality: str | None = None, *, hover: Hover = None,
) -> go.Figure | None:
    """Soft MoE's quality (left axis, solid) and training step time (right axis, dashed)
    against slots per expert, one line per (model, experts) with at least two slot counts;
    dense models as dotted quality references."""
    agg, hover = prepare(agg, hover)
    quality = quality or primary_quality(agg)
    if quality is None or not has_columns(agg, "router", "slots_per_expert", "num_experts",
                                          "model"):
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
    step = present(best, "train_step_ms")
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
    agg, hover = prepare(agg, hover)
    quality = quality or primary_quality(agg)
    if quality is None or not has_columns(agg, "router", "model", "moe_layers"):
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
        x = [f"{{{b}}} x{short(e)}" for b, e in zip(sub[BLOCKS], sub["num_experts"], strict=True)]
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
    agg, hover = prepare(agg, hover)
    quality = quality or primary_quality(agg)
    if quality is None or not has_columns(agg, "router", "model"):
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


# --------------------------------------------------------------------------- in page order


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
                  shared_hover: bool = False,
                  texts: Sequence[str] | None = None) -> list[tuple[str, go.Figure]]:
    """(div id, figure) for every paper figure the records can fill, in page order.

    ``agg``: the records' aggregate (``reports.aggregate.summarise``) when the caller has it;
    ``texts``: its hover texts when the caller has them. ``shared_hover``: scatter and bar
    traces carry only row numbers and take their hover text from the page's one array
    (``reports.page.html.hover_script``), as the page's own figures do; only for a page
    rendered from the same ``frame``, whose aggregated rows are then the same. Heat maps
    always carry their (few) cells' texts.
    """
    agg = summarise(frame) if agg is None else prepared(agg)
    texts = hover_texts(agg) if texts is None else texts
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
