"""The records, read once: the store's JSON files (or record dicts) into one polars frame.

* :func:`load_records` reads a runs folder; missing keys become nulls, unknown keys are carried
  along, an unreadable file becomes a row with ``status="unreadable"`` (never dropped);
* :func:`records_frame` builds the frame from record dicts, each first passed through
  :func:`upgrade`;
* :func:`upgrade` is the one place where a record written before the harness wrote its derived
  fields (``harness.spec.model.DERIVED_FIELDS``: tokens, blocks, router family, slots per token,
  ...) gains them, from its spec columns and the router registry, as the harness computes them for a
  new record. Everything downstream reads these fields and never derives them again.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import polars as pl

from harness.errors import ConfigError
from harness.results.store import BadRecord, read_record
from harness.spec.model import DERIVED_FIELDS, derived_fields, resolve_placement
from reports.metrics import IDENTITY_KEYS, SPEC_KEYS

#: Status given to a store file that is not a readable JSON object.
UNREADABLE = "unreadable"


# --------------------------------------------------------------------------- upgrading


_DERIVED = frozenset(DERIVED_FIELDS)


@lru_cache(maxsize=4096)
def _derived_of_spec(spec: tuple[Any, ...]) -> dict[str, Any]:
    return derived_fields(dict(zip(SPEC_KEYS, spec, strict=True)))  # read, never changed


def upgrade(record: dict[str, Any]) -> dict[str, Any]:
    """The record with every derived field: a record that lacks some (written before the
    harness wrote them) gains them, computed from its spec columns; the fields it has are
    kept as written. Unreadable placeholders are returned as they are."""
    if record.keys() >= _DERIVED or record.get("status") == UNREADABLE:
        return record
    try:
        derived = _derived_of_spec(tuple(map(record.get, SPEC_KEYS)))
    except TypeError:  # an unhashable spec value: compute it uncached
        derived = derived_fields(record)
    out = dict(record)
    for key, value in derived.items():
        out.setdefault(key, value)
    return out


def model_depth(model: str | None) -> int | None:
    """Blocks of a ``vit-SIZE/PATCH`` backbone name, or None when unknown."""
    return derived_fields({"model": model})["depth"]


def moe_blocks(moe_layers: str | None, depth: int | None) -> tuple[int, ...] | None:
    """The MoE block indices of a placement (a record's ``moe_blocks`` field, "8,9,10,11", or
    a study's ``moe_layers``), read by ``harness.spec.model.resolve_placement``; None when the
    placement or the depth is unknown."""
    if moe_layers in (None, "", "none") or depth is None:
        return None
    try:
        return resolve_placement(moe_layers, depth)
    except ConfigError:
        return None


# --------------------------------------------------------------------------- loading


def records_frame(records: Sequence[dict[str, Any]]) -> pl.DataFrame:
    """Build a frame from record dicts (each :func:`upgrade`-d), one column at a time.

    Keys missing from a record become nulls; a column whose values disagree in type takes
    their supertype (int and float -> float, anything and str -> str); a nested column that
    polars cannot unify (``history`` written by two versions) is kept as JSON text.
    Columns are ordered by first appearance.
    """
    records = [upgrade(record) for record in records]
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
