"""Run specs on this machine through submitit: subprocesses (``local``) or in-process
(``debug``), at most ``max_parallel`` at a time, retrying failed runs ``max_retries`` times."""

from __future__ import annotations

import os
import time
from contextlib import contextmanager

import submitit

from harness.run import execute, now
from harness.store import Store
from harness.study import RunSpec, Study
from runners.progress import SweepProgress


@contextmanager
def thread_env(threads: int):
    """Children inherit the environment at submission: give each its share of the cores."""
    keys = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
    old = {k: os.environ.get(k) for k in keys}
    os.environ.update({k: str(threads) for k in keys})
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class LocalRunner:
    def __init__(self, study: Study, store: Store, *, debug: bool = False,
                 max_parallel: int | None = None, max_retries: int | None = None,
                 show_progress: bool = True, timeout_min: int = 24 * 60, **_ignored):
        self.study, self.store, self.debug = study, store, debug
        self.max_parallel = 1 if debug else (max_parallel or study.executor.max_parallel)
        self.max_retries = study.executor.max_retries if max_retries is None else max_retries
        self.show_progress = show_progress
        folder = store.dir / "submitit" / "%j"
        if debug:
            self.executor = submitit.DebugExecutor(folder=folder)
        else:
            self.executor = submitit.LocalExecutor(folder=folder)
            self.executor.update_parameters(timeout_min=timeout_min)

    def run(self, specs: list[RunSpec]):
        from runners import Summary

        summary = Summary(submitted=len(specs))
        queue = [(spec, 0) for spec in specs]
        running: dict = {}
        threads = max(1, (os.cpu_count() or 1) // self.max_parallel)
        with SweepProgress(self.store, len(specs), enabled=self.show_progress) as progress:
            try:
                while queue or running:
                    while queue and len(running) < self.max_parallel:
                        spec, tries = queue.pop(0)
                        with thread_env(threads):
                            job = self.executor.submit(execute, spec, str(self.store.root))
                        summary.job_ids.append(str(job.job_id))
                        running[job] = (spec, tries, now())
                        progress.started(spec)
                    for job in [j for j in running if self.debug or j.done()]:
                        spec, tries, submitted = running.pop(job)
                        record = self._result(job, spec, submitted)
                        if record["status"] == "failed" and tries < self.max_retries:
                            queue.append((spec, tries + 1))
                            progress.retrying(spec, record)
                            continue
                        summary.count(record)
                        progress.finished(spec, record)
                    progress.refresh([spec for spec, *_ in running.values()])
                    if running:
                        time.sleep(0.5)
            except KeyboardInterrupt:
                for job in running:
                    job.cancel(check=False)
                raise
        return summary

    def _result(self, job, spec: RunSpec, submitted: str) -> dict:
        """The run's record; if the job died before writing one, record that as failed."""
        try:
            return job.result()
        except Exception as err:  # noqa: BLE001 - the process died (killed, OOM, timeout)
            record = self.store.read(spec.run_id)
            if record is not None and (record.get("started_at") or "") >= submitted:
                return record  # it wrote its record, then died: keep what it recorded
            record = {**spec.flat(), "status": "failed", "started_at": None,
                      "finished_at": now(), "spec_json": spec.canonical_json(),
                      "error": f"job {job.job_id} ended without a record: "
                               f"{type(err).__name__}: {str(err).strip().splitlines()[0]}",
                      "log_path": str(job.paths.stderr)}
            self.store.write(record)
            return record
