"""Live trackers: what a run reports to TensorBoard and MLflow while it trains.

``open_log(spec, workdir, results_root)`` returns one ``log(step, {name: value})`` callable
for the training loop (``harness.runtime.train.fit``), or None when the study's ``tracking:``
section switches every tracker off. Only rank 0 opens one. Scalars are named by group:

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

A tracker is never worth a run: one that fails (a tracking server out of reach, a full disk)
is switched off with a warning, its error goes into the record (``tracking_error``), and the
MLflow points it could not send are kept in the work folder for a later export.
"""

from __future__ import annotations

import importlib.util
import itertools
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness.results.mlflow import (
    MLFLOW_STATUS,
    PENDING,
    bounded_http,
    keep_pending,
    log_batches,
    mlflow_client,
    mlflow_run_for,
    mlflow_uri,
    prepare_tracking,
    spec_params,
)

Log = Callable[[int, dict[str, Any]], None]

#: The harness statuses as MLflow run statuses (the harness status is also a tag).


def tensorboard_available() -> bool:
    return importlib.util.find_spec("tensorboard") is not None


def open_log(spec, workdir: Path, results_root: Path
             ) -> tuple[Log | None, Callable[..., dict[str, Any]]]:
    """The run's ``log`` callable (None when no tracker is on) and the function closing it,
    which returns the record's fields about the trackers: ``tracking_error`` when one failed
    (a tracker that fails is switched off with a warning; the run goes on)."""
    cfg = spec.tracking
    sinks: list[Any] = []
    if cfg.tensorboard and tensorboard_available():
        sinks.append(TensorBoardLog(Path(workdir), spec))
    if cfg.mlflow:
        sinks.append(MlflowLog(spec, mlflow_uri(cfg.mlflow_uri, results_root), results_root,
                               Path(workdir)))
    if not sinks:
        return None, lambda status="ok": {}
    failed: dict[str, str] = {}

    def guarded(sink, method: str, *args) -> None:
        if sink.name in failed:
            return
        try:
            getattr(sink, method)(*args)
        except Exception as err:  # noqa: BLE001 - a tracker never fails the run
            text = str(err).strip()
            failed[sink.name] = (f"{sink.name}: {type(err).__name__}"
                                 f"{': ' + text.splitlines()[0][:300] if text else ''}")
            print(f"warning: tracking off for the rest of this run ({failed[sink.name]})",
                  file=sys.stderr, flush=True)

    def log(step: int, values: dict[str, Any]) -> None:
        values = {k: float(v) for k, v in values.items() if _is_number(v)}
        for sink in sinks:
            guarded(sink, "log", step, values)

    def close(status: str = "ok") -> dict[str, Any]:
        for sink in sinks:
            guarded(sink, "close", status)
        errors = [failed.get(s.name) or getattr(s, "error", None) for s in sinks]
        errors = [e for e in errors if e]
        return {"tracking_error": "; ".join(errors)} if errors else {}

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

    name = "tensorboard"

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




class MlflowLog:
    """Scalars into the study's MLflow experiment while the run trains (``tracking.mlflow``).

    Never worth the run: the store is prepared under its lock (``prepare_tracking``), HTTP
    retries and timeouts are bounded (``bounded_http``), and the first error of any kind
    switches the tracker off for the rest of the run (``error`` says why, for the record's
    ``tracking_error``); the points from then on are kept in the work folder
    (``harness.results.mlflow.PENDING``) for ``moe-harness export --to mlflow``.
    """

    name = "mlflow"

    def __init__(self, spec, uri: str, results_root: Path, workdir: Path):
        self.spec, self.uri, self.root, self.workdir = spec, uri, Path(results_root), workdir
        self.run, self.client, self.error = None, None, None

    def log(self, step: int, values: dict[str, float]) -> None:
        now = int(time.time() * 1000)
        if self.error is None:
            try:
                from mlflow.entities import Metric

                with bounded_http():
                    if self.run is None:
                        self._start()
                    log_batches(self.client, self.run,
                                metrics=[Metric(k, v, now, step) for k, v in values.items()])
                return
            except Exception as err:  # noqa: BLE001 - a tracker never fails the run
                self._failed(err)
        keep_pending(self.workdir, step, values, now)

    def _start(self) -> None:
        from mlflow.entities import Param

        experiment = prepare_tracking(self.uri, self.root, self.spec.study)
        self.client = mlflow_client(self.uri)

        def create():
            run = self.client.create_run(
                experiment, run_name=self.spec.label,
                tags={"run_id": self.spec.run_id, "study": self.spec.study})
            params = spec_params(self.spec.canonical_json())
            log_batches(self.client, run.info.run_id,
                        params=[Param(k, v) for k, v in params.items()])
            return run

        found = mlflow_run_for(self.client, experiment, self.spec.run_id, create=create,
                               uri=self.uri, results_root=self.root)
        self.run = found.info.run_id
        if found.info.status != "RUNNING":  # a resumed run goes on in its MLflow run
            self.client.update_run(self.run, status="RUNNING")

    def _failed(self, err: Exception) -> None:
        text = str(err).strip()
        self.error = (f"mlflow {self.uri}: {type(err).__name__}"
                      f"{': ' + text.splitlines()[0][:300] if text else ''}")
        print(f"warning: tracking off for the rest of this run ({self.error}); training goes "
              f"on, the points are kept in {Path(self.workdir) / PENDING} for moe-harness "
              f"export --to mlflow", file=sys.stderr, flush=True)

    def close(self, status: str = "ok") -> None:
        if self.run is None or self.error is not None:
            return
        try:
            with bounded_http():
                self.client.set_terminated(self.run,
                                           status=MLFLOW_STATUS.get(status, "FAILED"))
        except Exception as err:  # noqa: BLE001 - a tracker never fails the run
            self._failed(err)


# --- overhead benchmark ----------------------------------------------------------------------
