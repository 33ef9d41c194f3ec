"""Load the results store and aggregate runs over seeds, with polars.

The store holds one JSON file per run (``RESULTS_ROOT/STUDY/runs/RUN_ID.json``), each a flat
record (spec fields, cost, quality, router metrics, environment). Three public functions:

* :func:`load_records` reads a runs folder into one frame; missing keys become nulls, unknown
  keys are carried along, an unreadable file becomes a row with ``status="unreadable"``;
* :func:`aggregate` keeps the ``ok`` runs and groups them by every spec key except the seed:
  mean, standard deviation and count of each metric;
* :func:`problems` returns every run that is not ``ok`` (failed, diverged, unreadable, no
  status), so that nothing is dropped silently.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import polars as pl

from harness.results.store import BadRecord, read_record
from reports.metrics import (
    DERIVED_KEYS,
    ENVIRONMENT_KEYS,
    IDENTITY_KEYS,
    METRICS,
    PER_RUN_KEYS,
    SEED_KEY,
    SPEC_KEYS,
    looks_like_metric,
)

#: Status given to a store file that is not a readable JSON object.
UNREADABLE = "unreadable"


# --------------------------------------------------------------------------- loading


def records_frame(records: Sequence[dict[str, Any]]) -> pl.DataFrame:
    """Build a frame from record dicts, one column at a time.

    Keys missing from a record become nulls; a column whose values disagree in type takes
    their supertype (int and float -> float, anything and str -> str); a nested column that
    polars cannot unify (``history`` written by two versions) is kept as JSON text.
    Columns are ordered by first appearance.
    """
    keys: dict[str, None] = {}
    for record in records:
        keys.update(dict.fromkeys(record))
    columns = []
    for key in keys:
        values = [record.get(key) for record in records]
        kinds = {type(v) for v in values if v is not None}
        if kinds & {list, dict} and len(kinds) > 1:  # polars would stringify lossily
            series = _json_column(key, values)
        else:
            try:
                series = pl.Series(key, values, strict=False)
            except Exception:  # noqa: BLE001 - polars raises several kinds here
                series = _json_column(key, values)
        columns.append(series)
    if not columns:
        return pl.DataFrame(schema={k: pl.String for k in IDENTITY_KEYS})
    return pl.DataFrame(columns)


def _json_column(key: str, values: list[Any]) -> pl.Series:
    return pl.Series(key, [None if v is None else json.dumps(v) for v in values], dtype=pl.String)


def _runs_folder(path: Path) -> Path:
    """Accept either the runs folder or the study folder that holds it."""
    if (path / "runs").is_dir() and not any(path.glob("*.json")):
        return path / "runs"
    return path


def load_records(runs_dir: str | Path) -> pl.DataFrame:
    """Read every ``*.json`` record of a runs folder (or of ``STUDY/runs``) into a frame.

    Hidden files (``.RUN_ID.json``, a half-written temporary) are skipped. A file that is not
    a JSON object gives a row with ``status="unreadable"`` and the parse error, so that it
    shows among the problems rather than vanishing. A missing folder gives an empty frame: a
    study with no finished run yet still has a report (everything pending).
    """
    folder = _runs_folder(Path(runs_dir))
    records: list[dict[str, Any]] = []
    files = sorted(p for p in folder.glob("*.json") if not p.name.startswith(".")) if (
        folder.is_dir()
    ) else []
    for path in files:
        try:
            record = read_record(path)
        except FileNotFoundError:  # replaced or archived while we listed the folder
            continue
        except BadRecord as exc:  # not JSON, not an object, a field of the wrong type, ...
            record = {"run_id": path.stem, "status": UNREADABLE, "error": f"{path.name}: {exc}"}
        records.append(record)
    return records_frame(records)


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
