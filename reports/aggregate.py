"""Aggregate the records over seeds, once, with polars, and the columns every analysis reads.

Three functions over the records frame (``reports.records``):

* :func:`aggregate` keeps the ``ok`` runs and groups them by every spec key except the seed:
  mean, standard deviation and count of each metric;
* :func:`problems` returns every run that is not ``ok`` (failed, diverged, unreadable, no
  status), so that nothing is dropped silently;
* :func:`summarise` is the aggregate the page, its analyses and ``report --json`` read: the
  aggregate with a row index (:data:`ROW`, for the page's hover texts) and the report's columns
  (:func:`derive`), computed once.

:func:`derive` adds the columns the figures and the claims check share (tokens per image, slots
per token, Soft MoE's total slots, MoE blocks, placement kind), read from the records' derived
fields (``harness.spec.model.DERIVED_FIELDS``, which ``reports.records.upgrade`` gives old records).
"Slots per token" is the expert work per input token, comparable across routers: Soft MoE
n·p/m (n experts, p slots each, m tokens), Tokens Choice K·C, Experts Choice c.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import polars as pl

from reports.metrics import (
    DERIVED_KEYS,
    ENVIRONMENT_KEYS,
    IDENTITY_KEYS,
    METRICS,
    PER_RUN_KEYS,
    QUALITY_AXES,
    SEED_KEY,
    SPEC_KEYS,
    looks_like_metric,
)
from reports.records import moe_blocks

__all__ = ["BLOCKS", "DEPTH", "N_BLOCKS", "PLACEMENT", "ROW", "SLOTS_PER_TOKEN", "TOKENS",
           "TOTAL_SLOTS", "aggregate", "best_per", "derive", "metric_columns",
           "ok_runs", "placement_kind", "prepared", "present", "primary_quality", "problems",
           "quality_axes", "spec_columns", "spec_keys", "status_counts", "summarise",
           "with_rows"]

# --------------------------------------------------------------------------- roles


def spec_keys(df: pl.DataFrame, spec: Iterable[str] | None = None) -> list[str]:
    """The group key: the spec columns present in ``df``, without the seed.

    ``spec`` overrides the known list, :data:`reports.metrics.SPEC_KEYS`.
    """
    known = tuple(spec) if spec is not None else SPEC_KEYS
    excluded = {SEED_KEY, *IDENTITY_KEYS, *PER_RUN_KEYS, *METRICS} - {"study"}
    seen: dict[str, None] = {}
    for key in known:
        if key in df.columns and key not in excluded:
            seen[key] = None
    return list(seen)


def metric_columns(df: pl.DataFrame, keys: Sequence[str] = ()) -> list[str]:
    """Columns averaged over seeds: the known metrics, then unknown numeric measurements.

    An unknown column counts as a metric when it is a float, or an integer whose name reads
    like a measurement (``*_ms``, ``router_*``, ...). Other unknown columns are carried.
    """
    known = [m for m in METRICS if m in df.columns]
    taken = {*keys, SEED_KEY, *IDENTITY_KEYS, *ENVIRONMENT_KEYS, *PER_RUN_KEYS, *DERIVED_KEYS,
             *known}
    extra = []
    for name, dtype in df.schema.items():
        if name in taken:
            continue
        if dtype.is_float() or (dtype.is_integer() and looks_like_metric(name)):
            extra.append(name)
    return known + extra


# --------------------------------------------------------------------------- aggregation


def ok_runs(df: pl.DataFrame) -> pl.DataFrame:
    """Runs with ``status == "ok"``, one row per ``run_id`` (the latest finished one wins)."""
    if "status" not in df.columns or df.height == 0:
        return df.clear()
    ok = df.filter(pl.col("status") == "ok")
    if "run_id" in ok.columns:
        if "finished_at" in ok.columns:
            ok = ok.sort("finished_at", nulls_last=False, maintain_order=True)
        ok = ok.unique(subset="run_id", keep="last", maintain_order=True)
    return ok


def aggregate(
    df: pl.DataFrame,
    *,
    spec: Iterable[str] | None = None,
) -> pl.DataFrame:
    """Mean, standard deviation and count over seeds of every metric, per configuration.

    Keeps the ``ok`` runs only (see :func:`problems` for the rest) and groups them by
    :func:`spec_keys` (nulls group together: a dense run's ``num_experts`` is null). Output
    columns: the keys; ``n_runs``; ``seeds`` and ``run_ids`` (lists); for each metric ``M``,
    ``M_mean``, ``M_std`` (sample std, null with one seed) and ``M_n`` (non-null count);
    the derived columns (``DERIVED_KEYS``, one value per group); then every other column
    (environment, unknown text) as its distinct values joined by ``", "``. Rows are sorted
    by the keys.
    """
    ok = ok_runs(df)
    keys = spec_keys(ok, spec)
    metrics = metric_columns(ok, keys)
    derived = [name for name in DERIVED_KEYS if name in ok.columns]
    skipped = {*keys, *metrics, *derived, SEED_KEY, "run_id", "status", "error",
               "diverged_step"}
    carried = [
        name
        for name, dtype in ok.schema.items()
        if name not in skipped and name not in PER_RUN_KEYS and not dtype.is_nested()
    ]
    aggs: list[pl.Expr] = [pl.len().alias("n_runs")]
    if SEED_KEY in ok.columns:
        aggs.append(pl.col(SEED_KEY).sort().alias("seeds"))
    if "run_id" in ok.columns:
        aggs.append(pl.col("run_id").sort().alias("run_ids"))
    for m in metrics:
        col = pl.col(m).cast(pl.Float64).fill_nan(None)
        aggs += [
            col.mean().alias(f"{m}_mean"),
            col.std().alias(f"{m}_std"),
            col.count().alias(f"{m}_n"),
        ]
    aggs += [pl.col(name).first() for name in derived]  # functions of the group's spec
    for name in carried:
        if name in ("started_at", "finished_at"):  # the span of the group's runs
            pick = pl.col(name).min() if name == "started_at" else pl.col(name).max()
            aggs.append(pick.cast(pl.String).alias(name))
            continue
        aggs.append(
            pl.col(name).drop_nulls().cast(pl.String).unique().sort().str.join(", ").alias(name)
        )
    if not keys:
        if ok.height == 0:
            return ok.select(aggs).clear()
        if "study" not in ok.columns:
            warnings.warn("no spec column in the records: all ok runs form one group",
                          stacklevel=2)
        return ok.select(aggs)
    out = ok.group_by(keys).agg(aggs)
    return out.sort(keys, nulls_last=True)


def problems(df: pl.DataFrame) -> pl.DataFrame:
    """Every run that is not ``ok``: failed, diverged, unreadable, or without a status.

    All columns are kept (identity first); rows sorted by status then run_id.
    """
    if df.height == 0:
        return df
    if "status" not in df.columns:
        bad = df
    else:
        bad = df.filter(pl.col("status").is_null() | (pl.col("status") != "ok"))
    first = [c for c in (*IDENTITY_KEYS, "model", "router", SEED_KEY) if c in bad.columns]
    bad = bad.select(first + [c for c in bad.columns if c not in first])
    order = [c for c in ("status", "run_id") if c in bad.columns]
    return bad.sort(order, nulls_last=True) if order else bad


def status_counts(df: pl.DataFrame) -> dict[str, int]:
    """Number of runs per status (``"none"`` for a missing status)."""
    if df.height == 0 or "status" not in df.columns:
        return {}
    counts = df.group_by("status").len().sort("status", nulls_last=True)
    return {(s if s is not None else "none"): n for s, n in counts.iter_rows()}


# --------------------------------------------------------------------------- the report's columns

ROW = "_row"  # index of a row of the aggregated frame, to look up its hover text

#: The report's columns (see :func:`derive`).
TOKENS, SLOTS_PER_TOKEN, TOTAL_SLOTS = "_tokens", "_slots_per_token", "_total_slots"
DEPTH, BLOCKS, N_BLOCKS, PLACEMENT = "_depth", "_moe_blocks", "_n_moe_blocks", "_placement"


def with_rows(agg: pl.DataFrame) -> pl.DataFrame:
    """The aggregated frame with a row index, as every figure function expects."""
    return agg if ROW in agg.columns else agg.with_row_index(ROW)


def placement_kind(blocks: Sequence[int] | None, depth: int | None) -> str | None:
    """``last`` (consecutive blocks ending at the last one), ``spread`` (several blocks,
    otherwise), ``single`` (one block), or None when unknown."""
    if not blocks or depth is None:
        return None
    if len(blocks) == 1:
        return "single"
    consecutive = all(b - a == 1 for a, b in zip(blocks, blocks[1:], strict=False))
    return "last" if consecutive and blocks[-1] == depth - 1 else "spread"


def derive(agg: pl.DataFrame) -> pl.DataFrame:
    """``agg`` with the report's columns (nulls where the records do not say): the records'
    tokens, slots per token, MoE blocks and depth, Soft MoE's total slots (experts x rows per
    expert) and the placement kind."""
    def column(name: str) -> list[Any]:
        return agg[name].to_list() if name in agg.columns else [None] * agg.height

    experts, depth, blocks = column("num_experts"), column("depth"), column("moe_blocks")
    total = [round(e * rows) if family == "soft" and rows is not None else None
             for family, rows, e in zip(column("router_family"), column("expert_rows"), experts,
                                        strict=True)]
    kind = [placement_kind(moe_blocks(b, d), d) for b, d in zip(blocks, depth, strict=True)]
    return agg.with_columns(
        pl.Series(TOKENS, column("tokens"), dtype=pl.Int64),
        pl.Series(SLOTS_PER_TOKEN, column("slots_per_token"), dtype=pl.Float64),
        pl.Series(TOTAL_SLOTS, total, dtype=pl.Int64),
        pl.Series(DEPTH, depth, dtype=pl.Int64),
        pl.Series(BLOCKS, blocks, dtype=pl.String),
        pl.Series(N_BLOCKS, [n or None for n in column("n_moe_blocks")], dtype=pl.Int64),
        pl.Series(PLACEMENT, kind, dtype=pl.String),
    )


def prepared(agg: pl.DataFrame) -> pl.DataFrame:
    """``agg`` as the analyses and figures read it: with the row index and the report's
    columns (each added only where missing)."""
    agg = with_rows(agg)
    return agg if TOKENS in agg.columns else derive(agg)


def summarise(frame: pl.DataFrame) -> pl.DataFrame:
    """The records' one aggregate for the page and its analyses: :func:`aggregate`, with the
    row index and the report's columns."""
    return derive(with_rows(aggregate(frame)))


# --------------------------------------------------------------------------- reading the aggregate


def spec_columns(agg: pl.DataFrame) -> list[str]:
    """The configuration columns of an aggregated frame (everything before ``n_runs``)."""
    if "n_runs" not in agg.columns:
        return [c for c in SPEC_KEYS if c in agg.columns]
    return [c for c in agg.columns[: agg.columns.index("n_runs")] if c != ROW]


def present(agg: pl.DataFrame, metric: str) -> bool:
    """Whether some configuration has a mean of ``metric``."""
    col = f"{metric}_mean"
    return col in agg.columns and agg[col].cast(pl.Float64).fill_nan(None).null_count() < (
        agg.height)


def quality_axes(agg: pl.DataFrame, qualities: Sequence[str] | None = None) -> list[str]:
    """The quality metrics with at least one value, in :data:`QUALITY_AXES` order."""
    return [q for q in (qualities or QUALITY_AXES) if present(agg, q)]


def primary_quality(agg: pl.DataFrame) -> str | None:
    axes = quality_axes(agg)
    return axes[0] if axes else None


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
