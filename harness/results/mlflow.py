"""The MLflow side of the results: one experiment per study, one MLflow run per harness run
(found by its ``run_id`` tag), shared by the live tracker (``harness.runtime.tracking``) and
``moe-harness export --to mlflow`` (``reports.export``), so that a run logged live and its
record exported later are one MLflow run. Torch-free.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from harness.errors import HarnessError

MLFLOW_DB = "mlflow.db"  # the embedded default tracking store, under the results root


MLFLOW_ARTIFACTS = "mlflow-artifacts"


MLFLOW_STATUS = {"ok": "FINISHED", "failed": "FAILED", "diverged": "FAILED", "pruned": "KILLED"}


def mlflow_uri(uri: str | None, results_root: Path) -> str:
    """``uri``, else the embedded default: a SQLite tracking store under the results root."""
    return uri or f"sqlite:///{(Path(results_root) / MLFLOW_DB).resolve()}"


def mlflow_client(uri: str):
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise HarnessError("MLflow is not installed: pip install 'moe-harness[mlflow]'") from None
    return MlflowClient(tracking_uri=uri)


def artifact_root(results_root: Path) -> Path:
    """Where an embedded (SQLite) store keeps its artifacts: under the results root, never in
    the current folder (MLflow's default, ``./mlruns``)."""
    return Path(results_root).resolve() / MLFLOW_ARTIFACTS


def create_store(uri: str, results_root: Path) -> None:
    """Create (or migrate) an embedded SQLite store with its artifact root under the results
    root: MLflow would make its ``Default`` experiment's artifact location the process's
    working folder. Other stores are created by their server."""
    if not uri.startswith("sqlite:///"):
        return
    try:
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
    except ImportError:
        raise HarnessError("MLflow is not installed: pip install 'moe-harness[mlflow]'") from None
    SqlAlchemyStore(uri, artifact_root(results_root).as_uri())


def mlflow_experiment(client, study: str, results_root: Path | None = None) -> str:
    """The id of the study's experiment (named after the study), created or restored."""
    exp = client.get_experiment_by_name(study)
    if exp is None:
        # an embedded store keeps its artifacts beside it, not in the current folder
        local = client.tracking_uri.startswith("sqlite:///") and results_root is not None
        where = (artifact_root(results_root) / study).as_uri() if local else None
        try:
            return client.create_experiment(study, artifact_location=where)
        except Exception:
            exp = client.get_experiment_by_name(study)  # another process created it first
            if exp is None:
                raise
    if exp.lifecycle_stage == "deleted":
        client.restore_experiment(exp.experiment_id)
    return exp.experiment_id


def mlflow_runs(client, experiment_id: str) -> dict[str, Any]:
    """The experiment's active MLflow runs by their ``run_id`` tag."""
    from mlflow.entities import ViewType

    found: dict[str, Any] = {}
    token = None
    while True:
        page = client.search_runs([experiment_id], run_view_type=ViewType.ACTIVE_ONLY,
                                  max_results=1000, page_token=token)
        for run in page:
            key = run.data.tags.get("run_id")
            if key and key not in found:
                found[key] = run
        token = page.token
        if not token:
            return found


def spec_params(spec_json: str | dict) -> dict[str, str]:
    """A run spec as flat MLflow parameters: ``train.lr``, ``data.name``, ``router``, ..."""
    import json

    spec = json.loads(spec_json) if isinstance(spec_json, str) else spec_json
    out: dict[str, str] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for key, value in sorted(node.items()):
                walk(f"{prefix}{key}.", value)
        else:
            out[prefix[:-1]] = json.dumps(node) if isinstance(node, list | dict) else str(node)

    walk("", spec)
    return out


def log_batches(client, mlflow_run_id: str, *, metrics=(), params=(), tags=()) -> None:
    """``log_batch`` within MLflow's limits (1000 metrics, 100 params, 100 tags a call)."""
    metrics, params, tags = list(metrics), list(params), list(tags)
    while metrics or params or tags:
        client.log_batch(mlflow_run_id, metrics=metrics[:1000], params=params[:100],
                         tags=tags[:100])
        metrics, params, tags = metrics[1000:], params[100:], tags[100:]


# --- safe to share: one migration, one find-or-create at a time, bounded waits ---------------
#: A live tracker's limits on MLflow's HTTP client (a value the user set in the environment
#: wins): an unreachable server costs a run seconds, not MLflow's minutes of retries.
LIVE_HTTP_LIMITS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
                    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
LOCK_WAIT_S = 120.0  # creating and migrating an SQLite store takes seconds, more on a busy disk


def tracking_lock_path(uri: str, results_root: Path) -> Path:
    """The file whose lock is held while a tracking store is created or migrated, or while a
    harness run's MLflow run is found or created: beside an SQLite store, else under the
    results root (one lock for every study of it)."""
    if uri.startswith("sqlite:///") and len(uri) > len("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///").split("?")[0])
        return db.with_name(db.name + ".lock")
    return Path(results_root) / "mlflow.lock"


_HELD: set[Path] = set()  # the tracking locks this process holds (they nest)


@contextmanager
def tracking_lock(uri: str, results_root: Path, wait: float = LOCK_WAIT_S):
    """``with tracking_lock(uri, root):`` waits (at most ``wait`` seconds, else
    ``harness.results.store.Busy``) until no other process of this machine (or of a shared
    file system) creates, migrates or writes the harness runs of this tracking store. It
    nests: ``prepare_tracking`` and ``mlflow_run_for`` may be called inside it."""
    from harness.results.store import hold_lock

    path = tracking_lock_path(uri, results_root).resolve()
    if path in _HELD:
        yield
        return
    with hold_lock(path, f"MLflow store {uri}", wait=wait):
        _HELD.add(path)
        try:
            yield
        finally:
            _HELD.discard(path)


def prepare_tracking(uri: str, results_root: Path, study: str,
                     wait: float = LOCK_WAIT_S) -> str:
    """Create (or migrate) the tracking store and the study's experiment, under the store's
    lock; returns the experiment id. A sweep calls it once before its runs start; every live
    tracker calls it again (quick once done), so that parallel runs never migrate one SQLite
    store at once, which leaves it half-migrated."""
    with tracking_lock(uri, results_root, wait):
        create_store(uri, results_root)  # an SQLite store is created and migrated here
        client = mlflow_client(uri)
        return mlflow_experiment(client, study, results_root)


def prepare_sweep_tracking(tracking, results_root: Path, study: str) -> str | None:
    """What a sweep calls once before its runs start (``tracking``: the study's ``tracking``
    section): with live MLflow logging on, prepare its store and experiment
    (``prepare_tracking``, HTTP bounded). None when done or off; else one warning line (a
    tracker is never worth a sweep: each run's tracker then tries again, and fails alone)."""
    if not tracking.mlflow:
        return None
    uri = mlflow_uri(tracking.mlflow_uri, results_root)
    try:
        with bounded_http():
            prepare_tracking(uri, results_root, study)
    except Exception as err:  # noqa: BLE001 - reported, the sweep goes on
        text = str(err).strip()
        return (f"warning: MLflow {uri} not ready ({type(err).__name__}"
                f"{': ' + text.splitlines()[0][:300] if text else ''}); the runs go on, "
                f"their points are kept for moe-harness export --to mlflow")
    return None


def mlflow_run_for(client, experiment_id: str, run_id: str, *, create, uri: str,
                   results_root: Path, wait: float = LOCK_WAIT_S):
    """The MLflow run tagged ``run_id`` (an ``mlflow.entities.Run``), else the one
    ``create()`` makes, found or created under the store's lock: two processes (a live run
    and an export, or two exports) never make two MLflow runs of one harness run."""
    with tracking_lock(uri, results_root, wait):
        found = mlflow_runs(client, experiment_id).get(run_id)
        return found if found is not None else create()


@contextmanager
def bounded_http(limits: dict[str, str] | None = None):
    """MLflow's HTTP retries and timeout limited (``LIVE_HTTP_LIMITS``) inside the block,
    unless the environment sets them."""
    limits = LIVE_HTTP_LIMITS if limits is None else limits
    added = [key for key in limits if key not in os.environ]
    os.environ.update({key: limits[key] for key in added})
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


def record_params(record: Any) -> dict[str, str]:
    """The MLflow parameters of a record (its run spec, flattened), or
    ``harness.results.store.BadRecord`` naming what is wrong with it, before anything is
    sent to MLflow."""
    from harness.results.store import check_record

    check_record(record)
    return spec_params(record["spec_json"]) if record.get("spec_json") else {}


# --- points a live tracker could not send ------------------------------------------------------
PENDING = "mlflow-pending.jsonl"  # in the run's work folder


def keep_pending(workdir: Path, step: int, values: dict[str, float],
                 timestamp_ms: int) -> None:
    """Append one point that the live tracker could not send (one JSON line)."""
    import json

    line = json.dumps({"step": step, "timestamp": timestamp_ms, "values": values})
    with open(Path(workdir) / PENDING, "a") as f:
        f.write(line + "\n")


def pending_metrics(workdir: Path) -> list[tuple[str, float, int, int]]:
    """(key, value, step, timestamp ms) of every point a run's live tracker kept instead of
    sending (``export --to mlflow`` logs them); unreadable lines are skipped."""
    import json
    import math

    out: list[tuple[str, float, int, int]] = []
    try:
        lines = (Path(workdir) / PENDING).read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return out
    for line in lines:
        try:
            point = json.loads(line)
            step, stamp = int(point["step"]), int(point["timestamp"])
            out += [(str(k), float(v), step, stamp) for k, v in point["values"].items()
                    if isinstance(v, int | float) and math.isfinite(v)]
        except (ValueError, TypeError, KeyError, AttributeError):
            continue
    return out
