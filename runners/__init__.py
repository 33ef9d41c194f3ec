"""Dispatch a study's pending runs to an executor; callers never branch on where jobs run.

``dispatch(study, ...)`` picks the runs to do (pending; or failed with ``retry_failed``; or all
with ``rerun``), hands them to the runner named by ``executor`` (``local``, ``debug``,
``slurm``), and returns a summary. Every runner executes ``harness.runtime.run.execute`` per spec.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from harness.results.store import DONE, Store
from harness.spec.study import RunSpec, Study
from runners.executors import EXECUTORS, check_executor

__all__ = ["EXECUTORS", "Plan", "Summary", "check_executor", "dispatch", "plan"]


@dataclass
class Plan:
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


def plan(study: Study, store: Store, *, rerun: bool = False, retry_failed: bool = False) -> Plan:
    specs = study.expand()
    statuses = store.statuses()
    if rerun:
        todo = specs
    elif retry_failed:
        todo = [s for s in specs if statuses.get(s.run_id) == "failed"]
    else:
        todo = [s for s in specs if s.run_id not in statuses]
    return Plan(specs, todo, statuses)


@dataclass
class Summary:
    submitted: int = 0
    skipped: int = 0  # held by another process (a second sweep of the study)
    job_ids: list[str] = field(default_factory=list)
    waited: bool = True
    statuses: Counter = field(default_factory=Counter)  # finished runs by record status

    def count(self, record: dict) -> None:
        self.statuses[record.get("status", "failed")] += 1

    @property
    def ok(self) -> int:
        return self.statuses["ok"]

    @property
    def failed(self) -> int:
        return self.statuses["failed"]

    @property
    def diverged(self) -> int:
        return self.statuses["diverged"]


def dispatch(study: Study, specs: list[RunSpec], *, results_root: Path, executor: str | None = None,
             max_parallel: int | None = None, wait: bool = False,
             show_progress: bool = True) -> Summary:
    """Run ``specs`` with ``executor`` (default: the study's). ``max_parallel`` applies to the
    local executor (the debug one runs one at a time), ``wait`` to SLURM (local runs are
    always waited for)."""
    store = Store(results_root, study.name)
    name = check_executor(executor or study.executor.name)
    if name == "slurm":
        from runners.slurm import SlurmRunner

        runner = SlurmRunner(study, store, wait=wait, show_progress=show_progress)
    else:
        from runners.local import LocalRunner

        runner = LocalRunner(study, store, debug=name == "debug", max_parallel=max_parallel,
                             show_progress=show_progress)
    return runner.run(specs)
