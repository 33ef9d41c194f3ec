"""``moe-harness tune``: open (or continue) the Optuna study, recover trials left RUNNING by
dead workers, launch K workers through the executor's runner (``debug``, ``local`` or
``slurm``; SLURM reuses ``executor.slurm``), follow them, and write the tuning's summary into
the store.
"""

from __future__ import annotations

import functools
import gc
import os
from pathlib import Path
from typing import Any

from harness.errors import HarnessError
from harness.results.tune_summary import write_summary
from harness.spec.study import Study
from runners.executors import runner_class
from runners.tune.config import parse
from runners.tune.liveness import counts, recover_stale
from runners.tune.results import summarise
from runners.tune.storage import (
    open_storage,
    open_study,
    record_storage,
    resolve_storage,
    storage_kind,
    without_password,
)
from runners.tune.worker import run_worker


def tune(study: Study, *, results_root: Path, trials: int | None = None,
         workers: int | None = None, executor: str | None = None, storage: str | None = None,
         wait: bool | None = None, show_progress: bool = True, console=None,
         timeout_min: int = 24 * 60) -> dict[str, Any]:
    """Run (or continue) the study's tuning until ``trials`` trials are finished.

    Returns a summary: storage, counts before and after, stale trials recovered, job ids,
    worker errors and whether the workers were ``waited`` for: local workers always are, SLURM
    workers (a ``remote`` runner's) only with ``wait``.
    """
    import optuna
    from rich.console import Console

    from harness.results.store import Store
    from harness.views.tune import follow_trials

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    console = console or Console(stderr=True)
    cfg = parse(study)
    where = study.source or study.name
    trials = trials or cfg.trials
    if not trials:
        raise HarnessError(f"{where}: --trials: missing; give --trials N (or tune.trials)")
    workers = workers or cfg.workers
    executor = executor or study.executor.name
    runner = runner_class(executor)
    store = Store(results_root, study.name)
    url = resolve_storage(study, cfg, store.dir, storage, executor)
    kind = storage_kind(url)
    if runner.remote and url.startswith("sqlite:"):
        console.print("[yellow]warning[/]: SQLite on a shared file system is unsafe with "
                      "workers on several nodes; prefer journal:PATH or a PostgreSQL URL")
    opened = open_storage(url, cfg)
    ostudy = open_study(study, cfg, url, storage=opened, create=True)
    record_storage(store.dir, url)
    summary: dict[str, Any] = {"storage": without_password(url), "kind": kind,
                               "trials": trials, "workers": workers, "executor": executor,
                               "stale": recover_stale(ostudy, opened, cfg), "job_ids": [],
                               "worker_errors": [], "waited": True}
    before = counts(ostudy.get_trials(deepcopy=False))
    summary["before"] = before
    _say_stale(console, cfg, summary["stale"])
    if before["finished"] >= trials:
        summary["after"] = before
        console.print(f"{study.name}: {before['finished']} of {trials} trials already finished "
                      f"({without_password(url)}); nothing to do")
        write_summary(store.dir, summarise(study, cfg, ostudy, url))
        return summary
    workers = max(1, min(workers, trials - before["finished"]))
    ranks = 1
    if study.train.gpus > 1:  # multi-rank trials (not pruned): workers x ranks within the GPUs
        workers, ranks = trial_workers(study, executor, workers), study.train.gpus
    ex = runner.worker_executor(store.jobs_folder("tune"), study, workers=workers,
                                timeout_min=timeout_min)
    console.print(f"{study.name}: {before['finished']} of {trials} trials finished; "
                  f"{workers} {executor} worker{'s' if workers > 1 else ''} on "
                  f"{without_password(url)}")
    threads = max(1, (os.cpu_count() or 1) // (workers * ranks))
    worker_fn = runner.tethered(functools.partial(  # e.g. local workers die with this process
        run_worker, study, cfg, url, trials, results_root=str(store.root),
        resumed_at=len(ostudy.get_trials(deepcopy=False))))
    with runner.submitting(threads):  # Ctrl-C reaches this process alone
        jobs = ex.map_array(worker_fn, list(range(workers)))
    summary["job_ids"] = [str(j.job_id) for j in jobs]
    if runner.remote and not wait:
        summary["waited"] = False
        console.print(f"submitted SLURM job{'s' if len(jobs) > 1 else ''} "
                      f"{', '.join(summary['job_ids'])}; follow with "
                      f"'moe-harness tune {where} --show'")
        summary["after"] = before
        write_summary(store.dir, summarise(study, cfg, ostudy, url))
        return summary
    try:
        if runner.in_process:  # the workers run in here, now
            for job in jobs:
                _finish(job)
        else:
            follow_trials(jobs, lambda: counts(ostudy.get_trials(deepcopy=False)), trials,
                          before, console, show_progress)
    except KeyboardInterrupt:
        runner.stop(jobs)
        console.print("interrupted: workers cancelled; their running trials end FAILED; "
                      "'moe-harness tune' again continues the study")
        raise
    for i, job in enumerate(jobs):
        try:
            job.result()
        except Exception as err:  # noqa: BLE001 - killed, timed out, crashed: say so, go on
            line = _job_error(err)
            summary["worker_errors"].append(f"worker {i} (job {job.job_id}): {line}")
            console.print(f"[red]worker {i}[/] (job {job.job_id}) ended early: {line[:300]} "
                          f"(log: {job.paths.stderr})")
    del jobs, job  # submitit's LocalJob.__del__ must run now, not at interpreter exit
    gc.collect()
    late = recover_stale(ostudy, opened, cfg)
    _say_stale(console, cfg, late)
    summary["stale"] += late
    after = counts(ostudy.get_trials(deepcopy=False))
    summary["after"] = after
    console.print(f"{study.name}: {after['finished']} of {trials} trials finished "
                  f"({after['complete']} complete, {after['pruned']} pruned, {after['failed']} "
                  f"failed; {after['stale']} stale, {after['waiting']} queued, "
                  f"{after['running']} running) -> records in {store.runs_dir}")
    write_summary(store.dir, summarise(study, cfg, ostudy, url))
    return summary


def _say_stale(console, cfg, stale: list[tuple[int, str]]) -> None:
    for number, reason in stale:
        console.print(f"[yellow]trial {number}[/] was left RUNNING ({reason}): marked failed"
                      + (", its parameters queued again" if cfg.heartbeat.retries else ""))


def _finish(job) -> None:
    """Wait for a job; an error is reported by the caller, from ``job.result()`` again."""
    try:
        job.result()
    except Exception:  # noqa: BLE001
        pass


def _job_error(err: Exception) -> str:
    """One line for a worker job that raised or died."""
    text = [t.strip() for t in str(err).splitlines() if t.strip()]
    if "has not produced any output" in str(err):
        state = str(err).split("(state: ", 1)[-1].split(")", 1)[0]
        return f"the worker process ended without a result ({state.lower()}): killed?"
    return text[-1] if text else type(err).__name__


def trial_workers(study: Study, executor: str, workers: int) -> int:
    """How many workers of ``study.train.gpus`` ranks each may run side by side: no more than
    the GPUs hold (one rank per GPU), any number on the CPU; local executors only."""
    from harness.runtime.launch import check_ranks, gpu_count, on_gpus

    if runner_class(executor).remote:
        raise HarnessError(f"{study.source or study.name}: train.gpus: {study.train.gpus}: "
                           f"multi-rank trials run on the local executor, not {executor}")
    check_ranks([study.train])
    return min(workers, gpu_count() // study.train.gpus) if on_gpus(study.train) else workers

