"""The tuning's figures, drawn from the tuning summary in the store
(``harness.results.tune_summary``,
which ``moe-harness tune`` writes and ``report`` refreshes): the optimisation history of each
objective, the Pareto front of the trials (two objectives) and parameter importances (fANOVA).
The page's "Tuning" section (``reports.page.sections``) embeds them like every other figure.
"""

from __future__ import annotations

import html

import plotly.graph_objects as go

from harness.results.tune_summary import Trial, TuneSummary

BEST_COLOR, OTHER_COLOR = "#d62728", "#1f77b4"


def figures(s: TuneSummary) -> list[tuple[str, go.Figure]]:
    """(id, plotly figure) pairs: history per objective, the Pareto front (two objectives),
    importances per objective; none before a trial is complete."""
    complete = [t for t in s.trials if t.state == "COMPLETE" and t.values]
    if not complete:
        return []
    out = [(f"fig-tune-history-{m}", fig_history(s, complete, i))
           for i, m in enumerate(s.metrics)]
    if len(s.metrics) == 2:
        out.append(("fig-tune-pareto", fig_pareto_front(s, complete)))
    out += [(f"fig-tune-importance-{m}", fig_importances(s, m)) for m in s.importances]
    return out


def _hover(t: Trial) -> str:
    return f"trial {t.number}<br>{html.escape(t.params)}<br>run {html.escape(str(t.run_id))}"


def _layout(fig: go.Figure, title: str, x: str, y: str) -> go.Figure:
    fig.update_layout(title=title, template="plotly_white", height=420, hovermode="closest",
                      xaxis_title=x, yaxis_title=y, margin={"l": 60, "r": 20, "t": 60, "b": 50})
    return fig


def fig_history(s: TuneSummary, complete: list[Trial], i: int) -> go.Figure:
    """Each complete trial's value of objective ``i`` by trial number, and the best so far."""
    metric, sign = s.metrics[i], 1 if s.objectives[i].direction == "maximize" else -1
    fig = go.Figure(go.Scatter(
        x=[t.number for t in complete], y=[t.values[i] for t in complete], mode="markers",
        name="trial", marker={"color": OTHER_COLOR}, text=[_hover(t) for t in complete],
        hovertemplate="%{text}<br>" + metric + " %{y:.4g}<extra></extra>"))
    best, running = [], None
    for t in complete:
        running = t.values[i] if running is None else sign * max(sign * running,
                                                                 sign * t.values[i])
        best.append(running)
    fig.add_trace(go.Scatter(x=[t.number for t in complete], y=best, mode="lines",
                             name="best so far", line={"color": BEST_COLOR, "shape": "hv"},
                             hoverinfo="skip"))
    return _layout(fig, f"Optimisation history: {metric}", "trial", metric)


def fig_pareto_front(s: TuneSummary, complete: list[Trial]) -> go.Figure:
    """The complete trials in the plane of the two objectives, the Pareto set marked."""
    on_front = set(s.best)
    fig = go.Figure()
    for name, color, group in (
            ("trial", OTHER_COLOR, [t for t in complete if t.number not in on_front]),
            ("Pareto set", BEST_COLOR, [t for t in complete if t.number in on_front])):
        fig.add_trace(go.Scatter(
            x=[t.values[0] for t in group], y=[t.values[1] for t in group], mode="markers",
            name=name, marker={"color": color, "size": 9}, text=[_hover(t) for t in group],
            hovertemplate="%{text}<extra></extra>"))
    return _layout(fig, "Pareto front of the trials", *s.metrics)


def fig_importances(s: TuneSummary, metric: str) -> go.Figure:
    """The share of the objective's variance each parameter explains (fANOVA)."""
    shares = sorted(s.importances[metric].items(), key=lambda kv: kv[1])
    fig = go.Figure(go.Bar(x=[v for _, v in shares], y=[k for k, _ in shares], orientation="h",
                           marker={"color": OTHER_COLOR},
                           hovertemplate="%{y}: %{x:.3f}<extra></extra>"))
    _layout(fig, f"Parameter importances for {metric} (fANOVA)", "importance", "")
    fig.update_layout(height=160 + 32 * len(shares), yaxis_automargin=True)
    return fig
