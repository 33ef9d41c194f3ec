"""Figures of the joint scaling laws and of a two-study comparison, as plain plotly figure
dicts (``{"data": [...], "layout": {...}}``): JSON-serialisable, validated only where the page
embeds them (``plotly.graph_objects.Figure(fig)``). The numbers come from
:mod:`reports.analyses.laws` (:func:`reports.analyses.laws.law_surface`) and
:mod:`reports.analyses.studies`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from reports.analyses.laws import JointLaw, law_surface
from reports.figures.common import ptext, router_color
from reports.labels import router_name

_LAYOUT = {"template": "plotly_white", "margin": {"l": 60, "r": 20, "t": 60, "b": 50}}


def fig_joint_law(laws: Sequence[JointLaw], steps: int = 25,
                  points: bool = False) -> dict[str, Any] | None:
    """One surface per fitted router's law: predicted quality over dense size (log) and
    expert count (log); ``points`` adds each router's measured points (a second trace per
    router, in the same legend group). None when no law is fitted."""
    fitted = [law for law in laws if law.fitted]
    if not fitted:
        return None
    routers = [law.router for law in fitted]
    traces: list[dict[str, Any]] = []
    for law in fitted:
        surface = law_surface(law, steps)
        color, name = router_color(law.router, routers), router_name(law.router)
        traces.append({
            "type": "surface", "name": ptext(f"{name} ({law.transform})"),
            "x": surface["params_backbone"], "y": surface["num_experts"],
            "z": surface["quality"], "colorscale": [[0, color], [1, color]],
            "showscale": False, "opacity": 0.75, "showlegend": True,
            "legendgroup": law.router,
            "hovertemplate": "N %{x:.3g}<br>E %{y:.3g}<br>predicted %{z:.4g}<extra>"
                             + ptext(name) + "</extra>"})
        if points:
            measured = surface["measured"]
            traces.append({
                "type": "scatter3d", "mode": "markers", "name": ptext(f"{name} measured"),
                "x": measured["params_backbone"], "y": measured["num_experts"],
                "z": measured["quality"], "text": [ptext(t) for t in measured["labels"]],
                "marker": {"color": color, "size": 4}, "legendgroup": law.router,
                "showlegend": False, "hovertemplate": "%{text}: %{z:.4g}<extra></extra>"})
    quality = fitted[0].quality.label
    scene = {"xaxis": {"type": "log", "title": {"text": "dense parameters N"}},
             "yaxis": {"type": "log", "title": {"text": "experts E"}},
             "zaxis": {"title": {"text": ptext(quality)}}}
    return {"data": traces, "layout": {
        **_LAYOUT, "height": 560, "scene": scene,
        "title": {"text": ptext(f"{quality}: joint law over size and experts, per router")}}}


def fig_compare_fronts(data: dict[str, Any]) -> dict[str, Any] | None:
    """Both studies' Pareto fronts of :func:`reports.analyses.studies.compare` (its
    ``fronts``) on one axis pair: one step line per study. None without fronts."""
    fronts = data.get("fronts")
    if not fronts or not (fronts["a"] or fronts["b"]):
        return None
    traces = []
    for side, dash in (("a", "solid"), ("b", "dash")):
        pts = fronts[side]
        traces.append({
            "type": "scatter", "mode": "lines+markers", "line": {"shape": "hv", "dash": dash},
            "name": ptext(data["names"][side]), "x": [p["cost"] for p in pts],
            "y": [p["quality"] for p in pts], "text": [ptext(p["config"]) for p in pts],
            "hovertemplate": "%{text}<br>%{x:.4g}, %{y:.4g}<extra></extra>"})
    return {"data": traces, "layout": {
        **_LAYOUT, "height": 440, "hovermode": "closest",
        "title": {"text": ptext(f"Pareto fronts: {data['names']['a']} and "
                                f"{data['names']['b']}")},
        "xaxis": {"type": "log", "title": {"text": ptext(fronts["cost_label"])}},
        "yaxis": {"title": {"text": ptext(fronts["quality_label"])}}}}


__all__ = ["fig_compare_fronts", "fig_joint_law"]
