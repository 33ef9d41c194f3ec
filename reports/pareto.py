"""Pareto fronts of cost against quality, vectorised with polars.

A configuration is on the front when no other configuration (in the same ``by`` group) is
at least as good on both axes and strictly better on one. Consequences worth stating:

* exact ties (same cost, same quality) do not dominate each other: all of them stay;
* at equal cost only the best quality survives; at equal quality only the cheapest;
* a single point is its own front; rows with a null or NaN on either axis are never on it.

Directions come from the arguments, or when left ``None`` from :data:`reports.metrics.METRICS`
(a ``_mean`` suffix is ignored, so aggregated columns work): images/s is a cost where higher
is better, test loss a quality where lower is better.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import polars as pl

from reports.metrics import METRICS

_C, _Q, _I = "__pareto_cost", "__pareto_quality", "__pareto_row"


def _direction(column: str, given: bool | None, *, lower_default: bool) -> bool:
    """Lower-is-better for ``column``: the given flag, else the metrics table, else default."""
    if given is not None:
        return given
    base = column.removesuffix("_mean")
    metric = METRICS.get(base)
    return metric.lower_is_better if metric else lower_default


def _by_list(by: str | Sequence[str] | None) -> list[str]:
    if by is None:
        return []
    return [by] if isinstance(by, str) else list(by)


def pareto_mask(
    df: pl.DataFrame,
    cost: str,
    quality: str,
    cost_lower_is_better: bool | None = None,
    quality_higher_is_better: bool | None = None,
    by: str | Sequence[str] | None = None,
) -> pl.Series:
    """Boolean Series aligned with ``df``: True where the row is on its group's front.

    ``cost_lower_is_better`` / ``quality_higher_is_better`` default to the metrics table
    (lower-is-better cost, higher-is-better quality for unknown columns). ``by`` computes
    one front per group (e.g. ``"router"``); nulls in ``by`` form one group.
    """
    groups = _by_list(by)
    cost_lower = _direction(cost, cost_lower_is_better, lower_default=True)
    quality_lower = (
        not quality_higher_is_better
        if quality_higher_is_better is not None
        else _direction(quality, None, lower_default=False)
    )
    c = pl.col(cost).cast(pl.Float64).fill_nan(None)
    q = pl.col(quality).cast(pl.Float64).fill_nan(None)
    # normalise: minimise _C, maximise _Q
    frame = (
        df.select(
            *[pl.col(g) for g in groups],
            (c if cost_lower else -c).alias(_C),
            (-q if quality_lower else q).alias(_Q),
        )
        .with_row_index(_I)
        .filter(pl.col(_C).is_not_null() & pl.col(_Q).is_not_null())
        .sort([*groups, _C], nulls_last=True)
    )

    def over(expr: pl.Expr, keys: list[str]) -> pl.Expr:
        return expr.over(keys) if keys else expr

    # best quality at this exact cost, and best quality at any strictly lower cost
    # (rows are sorted by cost in each group, so the running maximum before a cost level's
    # first row covers exactly the strictly cheaper rows)
    before = "__pareto_before"
    frame = frame.with_columns(over(pl.col(_Q).cum_max().shift(1), groups).alias(before))
    best_here = over(pl.col(_Q).max(), [*groups, _C])
    best_before = over(pl.col(before).first(), [*groups, _C])
    front = frame.filter(
        (pl.col(_Q) >= best_here) & (best_before.is_null() | (pl.col(_Q) > best_before))
    )
    mask = np.zeros(df.height, dtype=bool)
    mask[front[_I].to_numpy()] = True
    return pl.Series("pareto", mask)

