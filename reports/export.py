"""``moe-harness export``: a study's records where researchers already look.

* :func:`export_tables` writes two tables, Parquet or CSV: the **per-run** table (one row per
  record, every status, typed columns, timestamps as UTC datetimes, the training history as a
  nested ``list<struct<step, train_loss, test_accuracy>>`` column in Parquet, JSON text in
  CSV) and the **aggregated** table (one row per configuration, mean / std / n over seeds,
  as the report computes it). The per-run table also has the planned-against-measured columns
  (``reports.analyses.planned``). Reading them: ``docs/tracking.md``.
* :func:`export_mlflow` logs one MLflow run per record into the study's experiment (see
  ``harness.runtime.tracking``): parameters are the run spec, metrics the record's numbers (at the
  last step) and its history (``history/<key>`` at each step), tags the identity and
  environment. Matched by the ``run_id`` tag, so exporting again changes nothing, a changed
  record (a rerun) replaces its MLflow run, and a run logged live gets its record added.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path
from typing import Any

import polars as pl

from harness.errors import HarnessError
from harness.results.store import SCHEMA, BadRecord, Store
from reports.aggregate import aggregate
from reports.analyses.planned import planned_frame
from reports.metrics import SEED_KEY, SPEC_KEYS
from reports.records import load_records

FORMATS = ("parquet", "csv", "mlflow")
_DTYPES = {"str": pl.String, "int": pl.Int64, "float": pl.Float64}
_TIMES = ("started_at", "finished_at")


# --- tables ------------------------------------------------------------------------------------
def runs_table(frame: pl.DataFrame) -> pl.DataFrame:
    """One typed row per record: the store's known columns get their dtypes (a column no
    record filled is still typed), timestamps become UTC datetimes."""
    frame = frame.with_columns(
        pl.col(key).cast(_DTYPES[kind], strict=False) if key in frame.columns
        else pl.lit(None, dtype=_DTYPES[kind]).alias(key)
        for key, kind in SCHEMA.items())
    untyped = [name for name, dtype in frame.schema.items() if dtype == pl.Null]
    frame = frame.with_columns(pl.col(untyped).cast(pl.String))
    frame = frame.with_columns(
        pl.col(key).str.to_datetime("%Y-%m-%dT%H:%M:%S%z", strict=False, time_zone="UTC")
        for key in _TIMES)
    return frame.select(*SCHEMA, *(c for c in frame.columns if c not in SCHEMA))


def with_planned(table: pl.DataFrame, frame: pl.DataFrame) -> pl.DataFrame:
    """``table`` (one row per record) with the planned-against-measured columns of each
    finished run (``reports.analyses.planned.PLANNED_COLUMNS``; empty for the others),
    joined on ``run_id``."""
    planned = planned_frame(frame.to_dicts()).drop("spec", "device")
    return table.join(planned, on="run_id", how="left")


def aggregated_table(frame: pl.DataFrame) -> pl.DataFrame:
    """One row per configuration (the ok runs, over seeds), as the report aggregates."""
    agg = aggregate(frame)
    untyped = [name for name, dtype in agg.schema.items() if dtype == pl.Null]
    return agg.with_columns(pl.col(untyped).cast(pl.String))


def _flat_for_csv(frame: pl.DataFrame) -> pl.DataFrame:
    """CSV has no nested values: lists of scalars become space-separated text, anything
    deeper (the history) JSON text."""
    out = []
    for name, dtype in frame.schema.items():
        if isinstance(dtype, pl.List) and not dtype.inner.is_nested():
            out.append(pl.col(name).cast(pl.List(pl.String)).list.join(" "))
        elif dtype.is_nested():
            out.append(pl.col(name).map_elements(
                lambda v: json.dumps(v.to_list() if hasattr(v, "to_list") else v),
                return_dtype=pl.String))
    return frame.with_columns(out)


def table_paths(store: Store, fmt: str, out: Path | None) -> tuple[Path, Path]:
    """(per-run table, aggregated table): ``out`` names the first, the second sits beside it
    as ``STEM-aggregated.EXT``; by default ``RESULTS/STUDY/export/runs.EXT``."""
    runs = Path(out) if out else store.dir / "export" / f"runs.{fmt}"
    return runs, runs.with_name(f"{runs.stem}-aggregated{runs.suffix or '.' + fmt}")


def export_tables(store: Store, fmt: str, out: Path | None = None) -> tuple[Path, Path]:
    """Write the study's per-run and aggregated tables as ``fmt`` (parquet | csv)."""
    if fmt not in ("parquet", "csv"):
        raise HarnessError(f"export --to {fmt!r}: allowed: {', '.join(FORMATS)}")
    frame = load_records(store.runs_dir)
    if frame.height == 0:
        raise HarnessError(f"{store.runs_dir}: no records to export yet (run the study first)")
    tables = (with_planned(runs_table(frame), frame), aggregated_table(frame))
    paths = table_paths(store, fmt, out)
    if out is None:  # the default folder, inside the study's own
        paths[0].parent.mkdir(exist_ok=True)
    for path in paths:
        if path.is_dir():
            raise HarnessError(f"export: {path}: is a folder; the tables go to {paths[0]} "
                               f"and {paths[1]}")
        if not path.parent.is_dir():
            raise HarnessError(f"export --out {path}: no such folder {path.parent}; create it "
                               "first")
    for table, path in zip(tables, paths, strict=True):
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            if fmt == "parquet":
                table.write_parquet(tmp)
            else:
                _flat_for_csv(table).write_csv(tmp)
            tmp.replace(path)
        finally:  # a full disk or an interrupt leaves no partial file behind
            tmp.unlink(missing_ok=True)
    return paths


# --- MLflow ------------------------------------------------------------------------------------
def record_digest(record: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _ms(stamp: Any) -> int | None:
    try:
        return int(dt.datetime.fromisoformat(str(stamp)).timestamp() * 1000)
    except ValueError:
        return None


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value == value


def record_metrics(record: dict[str, Any]) -> list[tuple[str, float, int]]:
    """(key, value, step): the record's numbers at its last step, then its history."""
    spec = {*SPEC_KEYS, SEED_KEY}
    last = record.get("steps_done") or 0
    out = [(key, float(value), last) for key, value in sorted(record.items())
           if key not in spec and _is_number(value)]
    for point in record.get("history") or []:
        out += [(f"history/{key}", float(value), int(point["step"]))
                for key, value in sorted(point.items()) if key != "step" and _is_number(value)]
    return out


def record_tags(record: dict[str, Any], digest: str) -> dict[str, str]:
    tags = {"run_id": record["run_id"], "study": record.get("study"),
            "status": record.get("status"), "git_commit": record.get("git_sha"),
            "mlflow.source.git.commit": record.get("git_sha"), "device": record.get("device"),
            "model_spec": record.get("spec"), "record_sha": digest,
            "error": (str(record.get("error") or "").splitlines() or [None])[0]}
    return {k: str(v)[:5000] for k, v in tags.items() if v not in (None, "")}


def export_mlflow(store: Store, study: str, uri: str | None = None) -> dict[str, int]:
    """Log every record of ``store`` to MLflow; returns how many runs were created, updated
    (a changed record, or a run logged live), left unchanged, or skipped as bad records (counted
    only when there are some).

    The whole export holds the tracking store's lock, so that two exports (or an export and
    a live run) never make two MLflow runs of one harness run; a record is checked before any
    MLflow call, so a bad one is skipped, never a half-written MLflow run. The points a live
    tracker could not send are logged with the record's."""
    from mlflow.entities import Metric, Param, RunTag

    from harness.results.mlflow import (
        MLFLOW_STATUS,
        log_batches,
        mlflow_client,
        mlflow_runs,
        mlflow_uri,
        pending_metrics,
        prepare_tracking,
        record_params,
        tracking_lock,
    )

    records = store.records()
    if not records:
        raise HarnessError(f"{store.runs_dir}: no records to export yet (run the study first)")
    uri = mlflow_uri(uri, store.root)
    experiment = prepare_tracking(uri, store.root, study)
    client = mlflow_client(uri)
    counts = {"created": 0, "updated": 0, "unchanged": 0}
    with tracking_lock(uri, store.root):
        existing = mlflow_runs(client, experiment)
        for record in records:
            try:
                params = record_params(record)
            except BadRecord:
                counts["bad records skipped"] = counts.get("bad records skipped", 0) + 1
                continue
            digest = record_digest(record)
            found = existing.get(record["run_id"])
            if found is not None and found.data.tags.get("record_sha") == digest:
                counts["unchanged"] += 1
                continue
            if found is not None and "record_sha" in found.data.tags:
                client.delete_run(found.info.run_id)  # a rerun: its metrics would mix
                found = None
            if found is None:
                counts["created"] += 1
                run = client.create_run(experiment, start_time=_ms(record.get("started_at")),
                                        run_name=record.get("label") or record["run_id"],
                                        tags={"run_id": record["run_id"]}).info.run_id
            else:
                counts["updated"] += 1
                run, params = found.info.run_id, {}  # logged live: it has its parameters
            stamp = _ms(record.get("finished_at")) or 0
            metrics = [Metric(k, v, stamp, s) for k, v, s in record_metrics(record)]
            metrics += [Metric(k, v, ts, s) for k, v, s, ts in
                        pending_metrics(store.work_path(record["run_id"]))]
            log_batches(client, run,
                        params=[Param(k, v[:6000]) for k, v in params.items()],
                        metrics=metrics,
                        tags=[RunTag(k, v) for k, v in record_tags(record, digest).items()])
            client.set_terminated(run, status=MLFLOW_STATUS.get(record.get("status"), "FAILED"),
                                  end_time=_ms(record.get("finished_at")))
    return counts
