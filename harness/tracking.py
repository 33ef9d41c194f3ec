"""Live trackers: what a run reports to TensorBoard and MLflow while it trains.

``open_log(spec, workdir, results_root)`` returns one ``log(step, {name: value})`` callable
for the training loop (``harness.train.fit``), or None when the study's ``tracking:`` section
switches every tracker off. Only rank 0 opens one. Scalars are named by group:

* ``train/loss`` (mean over the steps since the last point), ``train/lr``,
  ``train/step_time_ms`` and ``train/images_per_s`` (wall time of the training steps alone,
  global batch);
* ``eval/test_accuracy`` (the history evaluations' fixed test subset), ``router/<metric>``;
* ``final/<key>`` at the last step: the full test set (accuracy, loss, router metrics) and
  the few-shot probe.

TensorBoard event files go into the run's work folder (``RESULTS/STUDY/work/RUN_ID/``), so
``tensorboard --logdir RESULTS/STUDY/work`` shows every run of a study, named by run id. A
resumed run purges the points after its checkpoint (TensorBoard's ``purge_step``).

MLflow: one experiment per study, one MLflow run per harness run, found by its ``run_id``
tag. The helpers here are shared with ``moe-harness export --to mlflow``
(``reports.export``), so a run logged live and its record exported later are one MLflow run.
"""

from __future__ import annotations

import importlib.util
import itertools
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness.errors import HarnessError

Log = Callable[[int, dict[str, Any]], None]

MLFLOW_DB = "mlflow.db"  # the embedded default tracking store, under the results root
MLFLOW_ARTIFACTS = "mlflow-artifacts"
#: The harness statuses as MLflow run statuses (the harness status is also a tag).
MLFLOW_STATUS = {"ok": "FINISHED", "failed": "FAILED", "diverged": "FAILED", "pruned": "KILLED"}


def tensorboard_available() -> bool:
    return importlib.util.find_spec("tensorboard") is not None


def open_log(spec, workdir: Path, results_root: Path) -> tuple[Log | None, Callable[[], None]]:
    """The run's ``log`` callable (None when no tracker is on) and the function closing it."""
    cfg = spec.tracking
    sinks: list[Any] = []
    if cfg.tensorboard and tensorboard_available():
        sinks.append(TensorBoardLog(Path(workdir), spec))
    if cfg.mlflow:
        sinks.append(MlflowLog(spec, mlflow_uri(cfg.mlflow_uri, results_root)))
    if not sinks:
        return None, lambda status="ok": None

    def log(step: int, values: dict[str, Any]) -> None:
        values = {k: float(v) for k, v in values.items() if _is_number(v)}
        for sink in sinks:
            sink.log(step, values)

    def close(status: str = "ok") -> None:
        for sink in sinks:
            sink.close(status)

    return log, close


def _is_number(value: Any) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value))


_EVENT_FILES = itertools.count()


class TensorBoardLog:
    """Scalars into a TensorBoard event file in ``logdir``, opened at the first point.

    Written and flushed in the calling thread, one small record per point, with tensorboard's
    own record format and protocol buffers. ``SummaryWriter`` would hand each event to a writer
    thread instead; here the tracker's whole cost lies inside ``log`` (which ``bench tracking``
    times), and a point is on disk, visible to a running TensorBoard, when ``log`` returns.
    """

    def __init__(self, logdir: Path, spec):
        self.logdir, self.spec, self.records = logdir, spec, None

    def log(self, step: int, values: dict[str, float]) -> None:
        from tensorboard.compat.proto.summary_pb2 import Summary

        if self.records is None:
            self._open(step)
        self._write(step, Summary(value=[Summary.Value(tag=key, simple_value=value)
                                         for key, value in values.items()]))
        self.records.flush()

    def _open(self, step: int) -> None:
        import os
        import socket

        from tensorboard.compat.proto.event_pb2 import Event, SessionLog
        from tensorboard.summary.writer.record_writer import RecordWriter
        from torch.utils.tensorboard.summary import text

        self.logdir.mkdir(parents=True, exist_ok=True)
        # time, host, process and a per-process count: a later writer never overwrites a file
        name = (f"events.out.tfevents.{time.time():010.0f}.{socket.gethostname()}."
                f"{os.getpid()}.{next(_EVENT_FILES)}")
        self.records = RecordWriter(open(self.logdir / name, "wb"))  # noqa: SIM115 - kept open
        self._event(Event(file_version="brain.Event:2"))
        # the first point is the step training starts from: a resumed run drops what an
        # earlier attempt logged after its checkpoint, a rerun everything before
        self._event(Event(step=step, session_log=SessionLog(status=SessionLog.START)))
        self._write(step, text("run", f"{self.spec.label} `{self.spec.run_id}`"))

    def _write(self, step: int, summary) -> None:
        from tensorboard.compat.proto.event_pb2 import Event

        self._event(Event(step=step, summary=summary))

    def _event(self, event) -> None:
        event.wall_time = event.wall_time or time.time()
        self.records.write(event.SerializeToString())

    def close(self, status: str = "ok") -> None:
        if self.records is not None:
            self.records.close()
            self.records = None


# --- MLflow --------------------------------------------------------------------------------
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


class MlflowLog:
    """Scalars into the study's MLflow experiment while the run trains (``tracking.mlflow``)."""

    def __init__(self, spec, uri: str):
        self.spec, self.uri, self.run = spec, uri, None

    def log(self, step: int, values: dict[str, float]) -> None:
        from mlflow.entities import Metric

        if self.run is None:
            self._start()
        now = int(time.time() * 1000)
        log_batches(self.client, self.run,
                    metrics=[Metric(k, v, now, step) for k, v in values.items()])

    def _start(self) -> None:
        from mlflow.entities import Param

        self.client = mlflow_client(self.uri)
        experiment = mlflow_experiment(self.client, self.spec.study)
        existing = mlflow_runs(self.client, experiment).get(self.spec.run_id)
        if existing is not None:  # a resumed run goes on in its MLflow run
            self.run = existing.info.run_id
            self.client.update_run(self.run, status="RUNNING")
            return
        self.run = self.client.create_run(
            experiment, run_name=self.spec.label,
            tags={"run_id": self.spec.run_id, "study": self.spec.study}).info.run_id
        params = spec_params(self.spec.canonical_json())
        log_batches(self.client, self.run, params=[Param(k, v) for k, v in params.items()])

    def close(self, status: str = "ok") -> None:
        if self.run is not None:
            self.client.set_terminated(self.run, status=MLFLOW_STATUS.get(status, "FAILED"))


# --- overhead benchmark ----------------------------------------------------------------------
def bench_tracking(*, model: str = "vit-w64d4h4m256/4", router: str = "soft",
                   num_experts: int = 16, image_size: int = 16, steps: int = 150,
                   batch_size: int = 128, repeats: int = 5, threads: int | None = None,
                   progress=None) -> dict[str, Any]:
    """The training loop's time with TensorBoard event files on and off.

    ``repeats`` interleaved pairs of identical runs (same seed, data and model; the order
    within a pair alternates), each timed by the loop's own ``train_time_s`` (the steps, with
    the tracker's calls, without the evaluations) and by the process's CPU time between its
    first and last progress points (every thread of the process, so a tracker's own threads
    count; other processes on a shared machine do not). Returns the per-run times, each
    mode's median, the median of the per-pair ratios on / off (wall and CPU), and
    ``log_share``: the time inside the tracker's calls over the loop's time (median over the
    "on" runs), the overhead measured directly.
    """
    import statistics
    import tempfile

    import torch.utils.tensorboard  # noqa: F401 - imported once, outside the timed loops

    from harness import routers
    from harness.config import DataConfig, MeasureConfig, TrackingConfig, TrainConfig
    from harness.data import load_data
    from harness.models import build
    from harness.study import RunSpec
    from harness.train import fit, seed_everything

    fields = routers.get(router).settings(num_experts=num_experts)
    spec = RunSpec(
        study="bench-tracking", model=model, router=router, num_experts=fields.num_experts,
        slots_per_expert=fields.slots_per_expert, k=fields.k,
        capacity_factor=fields.capacity_factor, moe_layers="last:2",
        data=DataConfig(image_size=image_size, num_classes=100, train_size=20_000,
                        test_size=1_000),
        train=TrainConfig(steps=steps, batch_size=batch_size, eval_every=0,
                          checkpoint_every=0, fewshot_shots=0, warmup_steps=10, device="cpu",
                          threads=threads),
        measure=MeasureConfig(enabled=False))
    data = load_data(spec.data)
    times: dict[str, list[float]] = {"off": [], "on": []}
    cpu: dict[str, list[float]] = {"off": [], "on": []}
    shares: list[float] = []
    for i in range(repeats):
        for mode in (("off", "on") if i % 2 == 0 else ("on", "off")):
            seed_everything(spec.seed)
            net = build(spec.model_config_(data.num_classes))
            run = spec.model_copy(update={"tracking": TrackingConfig(tensorboard=mode == "on")})
            with tempfile.TemporaryDirectory(prefix="moe-bench-tracking-") as tmp:
                log, close = open_log(run, Path(tmp), Path(tmp))  # as harness.run does
                spent = [0.0]

                def timed(step: int, values: dict, log=log, spent=spent) -> None:
                    tic = time.perf_counter()
                    log(step, values)
                    if step > 0:  # the call before the loop opens the writer, untimed
                        spent[0] += time.perf_counter() - tic

                marks: list[float] = []
                result = fit(net, run, data, workdir=Path(tmp), device="cpu",
                             log=timed if log else None,
                             on_progress=lambda _, marks=marks: marks.append(time.process_time()))
                close()
                if log:
                    shares.append(spent[0] / result["train_time_s"])
                assert bool(list(Path(tmp).glob("events.out.tfevents.*"))) == (mode == "on")
            times[mode].append(result["train_time_s"])
            cpu[mode].append(marks[-1] - marks[0])
            if progress:
                progress(f"{mode:>3}: {1e3 * result['train_time_s'] / steps:.2f} ms/step")
    ratios = [on / off for on, off in zip(times["on"], times["off"], strict=True)]
    cpu_ratios = [on / off for on, off in zip(cpu["on"], cpu["off"], strict=True)]
    return {"spec": spec.model_config_().spec, "steps": steps, "batch_size": batch_size,
            "times_s": times, "median_s": {k: statistics.median(v) for k, v in times.items()},
            "ratio_on_off": statistics.median(ratios), "ratios": ratios,
            "cpu_s": cpu, "cpu_ratio_on_off": statistics.median(cpu_ratios),
            "cpu_ratios": cpu_ratios,
            "log_share": statistics.median(shares), "log_shares": shares}
