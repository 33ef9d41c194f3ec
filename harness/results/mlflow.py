"""The MLflow side of the results: one experiment per study, one MLflow run per harness run
(found by its ``run_id`` tag), shared by the live tracker (``harness.runtime.tracking``) and
``moe-harness export --to mlflow`` (``reports.export``), so that a run logged live and its
record exported later are one MLflow run. Torch-free.
"""

from __future__ import annotations

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


def mlflow_experiment(client, study: str, results_root: Path | None = None) -> str:
    """The id of the study's experiment (named after the study), created or restored."""
    exp = client.get_experiment_by_name(study)
    if exp is None:
        # an embedded store keeps its artifacts beside it, not in the current folder
        local = client.tracking_uri.startswith("sqlite:///") and results_root is not None
        where = (Path(results_root).resolve() / MLFLOW_ARTIFACTS / study).as_uri() if local \
            else None
        return client.create_experiment(study, artifact_location=where)
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
