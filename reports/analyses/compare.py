"""Comparing configurations for the claims check (``reports.analyses.claims``): which ones are
comparable (equal but for what a claim varies), how much better one is than another with its
interval (``reports.analyses.noise``), and the evidence's wording helpers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import polars as pl

from reports.aggregate import primary_quality, spec_columns
from reports.analyses.noise import Margin, Spread, difference, pooled
from reports.labels import config_label
from reports.metrics import METRICS

MAX_LISTED = 6  # groups or violations spelled out in one verdict


def usable_quality(agg: pl.DataFrame, quality: str | None) -> str | None:
    quality = quality or primary_quality(agg)
    return quality if quality and f"{quality}_mean" in agg.columns else None


def better_by(quality: str, a: float, b: float) -> float:
    """How much better ``a`` is than ``b`` (positive = better), by the metric's direction."""
    return b - a if METRICS[quality].lower_is_better else a - b


def comparable(agg: pl.DataFrame, vary: Sequence[str]) -> list[str]:
    """Spec columns that must be equal for two configurations to be compared."""
    return [c for c in spec_columns(agg) if c not in {*vary, "spec"}]


def config_groups(data: pl.DataFrame, keys: list[str]) -> list[pl.DataFrame]:
    if data.height == 0:
        return []
    if not keys:
        return [data]
    return [g for _, g in data.group_by(keys, maintain_order=True)]


def short_name(row: dict[str, Any], drop: Sequence[str] = ()) -> str:
    """A configuration's short name without the parts the claim varies."""
    row = {k: (None if k in drop else v) for k, v in row.items()}
    return config_label(row).replace(" None", "")


def stats_of(metric: str, *rows: dict[str, Any]) -> list[Any]:
    return [row.get(f"{metric}_{s}") for row in rows for s in ("mean", "std", "n")]


def pooled_spread(agg: pl.DataFrame, metric: str, relative: bool = False) -> Spread | None:
    """The study's pooled seed variance of ``metric`` (of std / mean when ``relative``)."""
    if f"{metric}_std" not in agg.columns or f"{metric}_n" not in agg.columns:
        return None
    std = pl.col(f"{metric}_std").cast(pl.Float64)
    if relative:
        std = std / pl.col(f"{metric}_mean").cast(pl.Float64)
    cols = agg.select(std.alias("s"), pl.col(f"{metric}_n").alias("n"))
    return pooled(cols["s"].to_list(), cols["n"].to_list())


def margin_of(metric: str, a: dict[str, Any], b: dict[str, Any],
            spread: Spread | None) -> Margin:
    """How much better ``a`` is than ``b`` on ``metric`` (direction-aware), with its interval."""
    first, second = (b, a) if METRICS[metric].lower_is_better else (a, b)
    return difference(*stats_of(metric, first, second), spread)


def in_band(change: Margin, band: float) -> str:
    """Whether a relative change lies within +-band: "inside", "outside" or "unsure"."""
    lo, hi = (change.lo, change.hi) if change.known else (change.value, change.value)
    if -band <= lo and hi <= band:
        return "inside"
    return "outside" if lo > band or hi < -band else "unsure"


def counted(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def listing(items: list[str]) -> str:
    shown = items[:MAX_LISTED]
    more = f"; and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else ""
    return "; ".join(shown) + more


def measured(agg: pl.DataFrame, *metrics: str) -> pl.DataFrame:
    out = agg
    for m in metrics:
        out = out.filter(pl.col(f"{m}_mean").cast(pl.Float64).fill_nan(None).is_not_null())
    return out
