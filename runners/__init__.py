"""Dispatch a study's pending runs to an executor; callers never branch on where jobs run.

``dispatch(study, ...)`` picks the runs to do (pending; or failed with ``retry_failed``; or all
with ``rerun``), hands them to the runner named by ``executor`` (``local``, ``debug``,
``slurm``), and returns a summary. Every runner executes ``harness.runtime.run.execute`` per spec.

The runners share one protocol (``runners.base.Runner``) and are named in one table
(``runners.executors.RUNNERS``); ``live_view`` and ``cancel`` ask every runner for the study's
jobs that outlive the process which submitted them (SLURM's).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from harness.results.store import DONE, Store
from harness.spec.study import RunSpec, Study
from runners.base import Runner, Summary
from runners.executors import EXECUTORS, RUNNERS, check_executor, make_runner, runner_class

__all__ = ["EXECUTORS", "RUNNERS", "Selection", "Runner", "Summary", "cancel", "check_executor",
           "dispatch", "live_view", "select", "runner_class"]


@dataclass
class Selection:
    """What a ``run`` would do: all specs, and those selected to run now."""

    specs: list[RunSpec]
    todo: list[RunSpec]
    statuses: dict[str, str] = field(default_factory=dict)

    @property
    def done(self) -> int:
        return sum(1 for s in self.specs if self.statuses.get(s.run_id) in DONE)

    @property
    def failed(self) -> int:
        return sum(1 for s in self.specs if self.statuses.get(s.run_id) == "failed")


def select(study: Study, store: Store, *, rerun: bool = False,
           retry_failed: bool = False) -> Selection:
    specs = study.expand()
    statuses = store.statuses()
    if rerun:
        todo = specs
    elif retry_failed:
        todo = [s for s in specs if statuses.get(s.run_id) == "failed"]
    else:
        todo = [s for s in specs if s.run_id not in statuses]
    return Selection(specs, todo, statuses)


def dispatch(study: Study, specs: list[RunSpec], *, results_root: Path, executor: str | None = None,
             max_parallel: int | None = None, wait: bool = False,
             show_progress: bool = True, fresh: bool = False) -> Summary:
    """Run ``specs`` with ``executor`` (default: the study's). ``max_parallel`` applies to the
    local executor (the debug one runs one at a time), ``wait`` to SLURM (local runs are
    always waited for); ``fresh`` (a rerun) trains each run from scratch."""
    runner = make_runner(executor or study.executor.name, study, Store(results_root, study.name),
                         max_parallel=max_parallel, wait=wait, show_progress=show_progress,
                         fresh=fresh)
    return runner.run(specs)


def live_view(store: Store) -> dict[str, dict]:
    """run_id -> {state, job_id, elapsed, restarts, reason, log} of the study's runs whose job
    a scheduler still holds and whose record is not in yet, whichever runner submitted it."""
    live: dict[str, dict] = {}
    for cls in RUNNERS.values():
        live.update(cls.live(store))
    return live


def cancel(store: Store) -> list[str]:
    """Cancel the study's live jobs, whichever runner submitted them; returns their ids."""
    return [job_id for cls in RUNNERS.values() for job_id in cls.cancel(store)]
