"""What is best, as data: each router's best configuration within one compute budget that every
router's runs reach (the page's answer, first thing on the page), and the ranking of the best
configurations (the summary table)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import polars as pl

from reports.aggregate import ROW, primary_quality
from reports.analyses.noise import Margin
from reports.metrics import METRICS

#: Cost axes for "equal cost", the first one measured wins: training compute, then the
#: forward cost per image, then active parameters.
BUDGET_AXES = ("train_exaflops", "gflops_per_image", "params_active")
COST_TOL = 0.05  # costs within 5% of the budget count as within it


@dataclass(frozen=True)
class EqualCost:
    """Each router's best configuration within ``budget`` (of ``cost``, with ``COST_TOL``)."""

    quality: str
    cost: str
    budget: float
    best: list[dict[str, Any]]  # one aggregated row per router, the best router first
    absent: list[str]  # routers with no configuration within the budget


def _cost_axis(agg: pl.DataFrame) -> str | None:
    for cost in BUDGET_AXES:
        col = f"{cost}_mean"
        if col in agg.columns and agg[col].drop_nulls().len():
            return cost
    return None


def best_within_budget(agg: pl.DataFrame) -> EqualCost | None:
    """The best configuration of each router whose cost is within a common budget: the
    smallest of the routers' largest costs, so that every router is judged on the same
    budget and none by a configuration the others never ran. None without quality or cost."""
    quality, cost = primary_quality(agg), _cost_axis(agg)
    if quality is None or cost is None or "router" not in agg.columns:
        return None
    qcol, ccol = f"{quality}_mean", f"{cost}_mean"
    data = agg.filter(pl.col(qcol).is_not_null() & pl.col(ccol).is_not_null())
    if data.height == 0:
        return None
    budget = data.group_by("router").agg(pl.col(ccol).max())[ccol].min()
    within = data.filter(pl.col(ccol) <= budget * (1 + COST_TOL))
    higher = not METRICS[quality].lower_is_better
    best = (within.sort(qcol, descending=higher)
            .group_by("router", maintain_order=True).first())
    absent = sorted(set(data["router"].to_list()) - set(best["router"].to_list()), key=str)
    return EqualCost(quality, cost, budget, best.to_dicts(), absent)


def best_configurations(agg: pl.DataFrame, quality: str, top: int = 10) -> pl.DataFrame:
    """The best configuration of each router, then the overall top ``top`` (deduplicated)."""
    qcol = f"{quality}_mean"
    descending = not METRICS[quality].lower_is_better
    ranked = agg.filter(pl.col(qcol).is_not_null()).sort(qcol, descending=descending)
    if "router" in ranked.columns:
        per_router = ranked.group_by("router", maintain_order=True).first().select(ranked.columns)
    else:
        per_router = ranked.head(1)
    rows = pl.concat([per_router, ranked.head(top)], how="vertical_relaxed")
    return rows.unique(subset=ROW, keep="first", maintain_order=True).sort(
        qcol, descending=descending
    )


def gaps_to_best(agg: pl.DataFrame, found: EqualCost) -> list[tuple[str, Margin]]:
    """Per other router in ``found``: how far its best trails the best router's, with the
    95% interval of the difference of the means over seeds (the study's pooled seed spread
    where a configuration has one seed). Resolved where the interval excludes 0
    (``margin.lo > 0``); else the two are within noise of each other."""
    from reports.analyses.compare import pooled_spread, stats_of
    from reports.analyses.noise import difference

    spread = pooled_spread(agg, found.quality)
    higher = not METRICS[found.quality].lower_is_better
    top, out = found.best[0], []
    for row in found.best[1:]:
        first, second = (top, row) if higher else (row, top)
        out.append((row["router"], difference(*stats_of(found.quality, first, second),
                                              spread)))
    return out
