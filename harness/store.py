"""The results store: one JSON record per run, ``ROOT/STUDY/runs/RUN_ID.json``.

Records are written atomically (a temporary file in the same folder, fsync, ``os.replace``),
so concurrent writers never corrupt or lose a record, and a reader never sees half a file.
A record is replaced only by a newer record of the same run (``--rerun``, a retry).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from harness.errors import HarnessError

ENV_ROOT = "MOE_HARNESS_RESULTS"
# finished: a result, not retried unless --rerun. "pruned": a tuning trial stopped early by its
# pruner (runners.tune); its record keeps the cost measured before training and pruned_step.
DONE = ("ok", "diverged", "pruned")
STATUSES = ("ok", "failed", "diverged", "pruned")

# Columns every frame has, with their polars dtypes, so that old records missing a key still
# load into the same schema (as nulls). Other keys are carried along as found.
SCHEMA = {
    "study": "str", "run_id": "str", "status": "str", "error": "str", "spec": "str",
    "model": "str", "router": "str", "num_experts": "int", "slots_per_expert": "int", "k": "int",
    "capacity_factor": "float", "moe_layers": "str", "pool": "str", "gelu": "str",
    "capacity_rounding": "str", "router_noise": "float", "seed": "int", "lr": "float",
    "steps": "int", "batch_size": "int", "data": "str", "image_size": "int",
    "params_total": "int", "params_active": "int", "gflops_per_image": "float",
    "train_exaflops": "float", "train_exaflops_paper": "float", "train_step_ms": "float",
    "train_images_per_s": "float", "infer_images_per_s": "float", "infer_latency_ms": "float",
    "peak_memory_mb": "float", "test_accuracy": "float", "test_loss": "float",
    "fewshot_accuracy": "float", "diverged_step": "int", "steps_done": "int",
    "resumed_from_step": "int", "device": "str", "torch_version": "str",
    "attention_backend": "str", "git_sha": "str", "started_at": "str", "finished_at": "str",
}


def results_root(value: str | Path | None = None) -> Path:
    """--results, else $MOE_HARNESS_RESULTS, else ./results."""
    return Path(value or os.environ.get(ENV_ROOT) or "results").resolve()


class Store:
    def __init__(self, root: str | Path, study: str):
        self.root = Path(root).resolve()
        self.dir = (self.root / study).resolve()
        if self.root not in self.dir.parents:
            raise HarnessError(f"study name {study!r} would write outside the results root "
                               f"{self.root}")
        self.runs_dir = self.dir / "runs"

    # --- writing ---------------------------------------------------------------------------
    def path(self, run_id: str) -> Path:
        return self.runs_dir / f"{run_id}.json"

    def write(self, record: dict[str, Any]) -> Path:
        if record.get("status") not in STATUSES:
            raise ValueError(f"record status must be one of {STATUSES}, got {record.get('status')}")
        return atomic_write_json(self.path(record["run_id"]), record)

    def workdir(self, run_id: str) -> Path:
        """Per-run scratch: checkpoints, progress. Kept after the run for inspection."""
        path = self.dir / "work" / run_id
        path.mkdir(parents=True, exist_ok=True)
        return path

    # --- reading ---------------------------------------------------------------------------
    def read(self, run_id: str) -> dict[str, Any] | None:
        try:
            return json.loads(self.path(run_id).read_text())
        except FileNotFoundError:
            return None

    def records(self) -> list[dict[str, Any]]:
        if not self.runs_dir.is_dir():
            return []
        out = []
        for path in sorted(self.runs_dir.glob("*.json")):
            try:
                out.append(json.loads(path.read_text()))
            except (json.JSONDecodeError, OSError):  # never written by us half-way; skip noise
                continue
        return out

    def statuses(self) -> dict[str, str]:
        return {r["run_id"]: r.get("status", "failed") for r in self.records()}

    def done_ids(self) -> set[str]:
        return {run_id for run_id, s in self.statuses().items() if s in DONE}

    def failed_ids(self) -> set[str]:
        return {run_id for run_id, s in self.statuses().items() if s == "failed"}

    def load(self):
        """All records as a polars DataFrame with a stable schema (missing keys are null)."""
        return records_frame(self.records())


def atomic_write_json(path: Path, payload: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(payload, f, indent=1, sort_keys=True, default=str)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def records_frame(records: list[dict[str, Any]]):
    import polars as pl

    dtypes = {"str": pl.String, "int": pl.Int64, "float": pl.Float64}
    schema = {key: dtypes[kind] for key, kind in SCHEMA.items()}
    rows = []
    for record in records:
        row = {key: record.get(key) for key in schema}
        row.update({k: v for k, v in record.items() if k not in schema})
        rows.append(row)
    if not rows:
        return pl.DataFrame(schema=schema)
    frame = pl.DataFrame(rows, infer_schema_length=None, strict=False)
    return frame.with_columns(
        [pl.col(k).cast(t, strict=False) for k, t in schema.items()]
    ).select([*schema, *[c for c in frame.columns if c not in schema]])
