"""Run specs on this machine through submitit: subprocesses (``local``: ``LocalRunner``) or
in-process (``debug``: ``DebugRunner``), at most ``max_parallel`` at a time, retrying failed
runs ``max_retries`` times.

A run with ``train.gpus: N > 1`` is N ranks on this machine (``harness.runtime.launch``:
PyTorch's elastic launcher inside the run's job); ``max_parallel`` then counts ranks, not runs,
and on GPUs each run gets its own devices.

One local sweep of a study at a time (``Store.lock_sweep``); each job dies with the sweep
(``harness.runtime.lifeline``); Ctrl-C or SIGTERM stops the running jobs and says how to resume; a
full disk stops the sweep with one line, the runs already recorded untouched.
"""

from __future__ import annotations

import errno
import os
import signal
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from harness.errors import HarnessError, Interrupted
from harness.results.store import Store
from harness.runtime.launch import RankJob, Slots, check_ranks, gpu_count, visible_devices
from harness.runtime.lifeline import Tethered, kill_tree
from harness.spec.study import RunSpec, Study
from runners.base import Runner, Summary


class LocalRunner(Runner):
    """Each run a subprocess of this machine, tethered to the sweep."""

    name = "local"

    def __init__(self, study: Study, store: Store, *, max_retries: int | None = None,
                 timeout_min: int = 24 * 60, **options):
        super().__init__(study, store, **options)
        if self.in_process:
            self.max_parallel = 1
        else:
            self.max_parallel = self.max_parallel or study.executor.max_parallel
        self.max_retries = study.executor.max_retries if max_retries is None else max_retries
        self.executor = self.make_executor(store.jobs_folder(self.name), study,
                                           timeout_min=timeout_min)

    @classmethod
    def make_executor(cls, folder: Path, study: Study, *, timeout_min: int = 24 * 60):
        import submitit

        executor = submitit.LocalExecutor(folder=folder)
        executor.update_parameters(timeout_min=timeout_min)
        return executor

    @classmethod
    def tethered(cls, fn: Callable) -> Callable:
        return Tethered(fn)  # the job dies with this process

    @classmethod
    def stop(cls, jobs: list) -> None:
        stop_local_jobs(jobs)

    def run(self, specs: list[RunSpec]) -> Summary:
        from harness.runtime.run import execute, now
        from harness.views.progress import SweepProgress

        summary = Summary(submitted=len(specs))
        queue = [(spec, 0) for spec in specs]
        running: dict = {}
        # each process (a run, or a rank of one) its share of the cores
        threads = max(1, (os.cpu_count() or 1)
                      // max([self.max_parallel, *(s.train.gpus for s in specs)]))
        task = self.tethered(execute)
        wide = [s for s in specs if s.train.gpus > 1]
        if wide:
            check_ranks([s.train for s in wide])
        slots = Slots(self.max_parallel, gpu_count() if wide else 0)
        with self.store.lock_sweep(), stop_on_sigterm(), SweepProgress(
                self.store, len(specs), enabled=self.show_progress) as progress:
            try:
                while queue or running:
                    while queue and (grant := slots.take(queue[0][0], bool(running))):
                        spec, tries = queue.pop(0)
                        fn = RankJob() if spec.train.gpus > 1 else task
                        with self.submitting(threads), visible_devices(grant[1]):
                            job = self.executor.submit(fn, spec, str(self.store.root),
                                                       fresh=self.fresh)
                        summary.job_ids.append(str(job.job_id))
                        running[job] = (spec, tries, now(), grant)
                        progress.started(spec)
                    for job in [j for j in running if self.in_process or j.done()]:
                        spec, tries, submitted, grant = running.pop(job)
                        slots.give(grant)
                        record = self._result(job, spec, submitted)
                        if record is None:  # another process holds this run
                            summary.skipped += 1
                            progress.skipped(spec)
                            continue
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
                self.stop(list(running))
                raise Interrupted(
                    f"interrupted: stopped {len(running)} running run(s) of {self.study.name}; "
                    f"{summary.ok + summary.failed + summary.diverged} finished in this sweep "
                    f"are recorded. Run the same command again to resume") from None
            except OSError as err:
                self.stop(list(running))
                if err.errno != errno.ENOSPC:
                    raise
                raise HarnessError(
                    f"{self.store.dir}: no space left on device; the sweep stopped with "
                    f"{len(queue) + len(running)} run(s) not done (the recorded ones are "
                    f"kept); free space and run the same command again") from None
        return summary

    def _result(self, job, spec: RunSpec, submitted: str) -> dict | None:
        """The run's record (None if another process holds the run); if the job died before
        writing one, record that as failed (a finished record of the run stays current)."""
        from harness.runtime.run import failed_record

        try:
            return job.result()
        except Exception as err:  # noqa: BLE001 - the process died (killed, OOM, timeout)
            record = self.store.read(spec.run_id)
            if record is not None and (record.get("started_at") or "") >= submitted:
                return record  # it wrote its record, then died: keep what it recorded
            record = failed_record(
                spec, f"job {job.job_id} ended without a record: "
                      f"{type(err).__name__}: {str(err).strip().splitlines()[0]}",
                log_path=str(job.paths.stderr))
            self.store.write(record)
            return record


class DebugRunner(LocalRunner):
    """Each run in this process, one at a time, when its result is asked (a debugger and
    breakpoints work; nothing is tethered or killed)."""

    name = "debug"
    in_process = True

    @classmethod
    def make_executor(cls, folder: Path, study: Study, *, timeout_min: int = 24 * 60):
        import submitit

        return submitit.DebugExecutor(folder=folder)

    @classmethod
    def tethered(cls, fn: Callable) -> Callable:
        return fn

    @classmethod
    def stop(cls, jobs: list) -> None:
        for job in jobs:  # marked cancelled: a job not run yet never runs
            job.cancel(check=False)


def stop_local_jobs(jobs) -> None:
    """End submitit local jobs now: each job's process tree (its controller, whose PID is the
    job id, and the job under it) gets SIGKILL. A job is stopped between checkpoints anyway;
    SIGINT would make the controller print a traceback on our terminal."""
    for job in jobs:
        kill_tree(int(job.job_id))


@contextmanager
def stop_on_sigterm():
    """SIGTERM (e.g. ``kill``, a job's end) stops the sweep as Ctrl-C does."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt

    try:
        old = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)
