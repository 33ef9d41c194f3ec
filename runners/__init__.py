"""Dispatch a study's pending runs to an executor; callers never branch on where jobs run.

``dispatch(study, ...)`` picks the runs to do (pending; or failed with ``retry_failed``; or all
with ``rerun``), hands them to the runner named by ``executor`` (``local``, ``debug``,
``slurm``), and returns a summary. Every runner executes ``harness.run.execute`` per spec.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from harness.errors import HarnessError
from harness.store import DONE, Store
from harness.study import RunSpec, Study

EXECUTORS = ("local", "debug", "slurm")


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
    ok: int = 0
    failed: int = 0
    diverged: int = 0
    pruned: int = 0
    skipped: int = 0  # held by another process (a second sweep of the study)
    job_ids: list[str] = field(default_factory=list)
    waited: bool = True

    def count(self, record: dict) -> None:
        status = record.get("status", "failed")
        setattr(self, status, getattr(self, status) + 1)


def check_executor(name: str, where: str = "--executor") -> str:
    if name not in EXECUTORS:
        raise HarnessError(f"{where} {name!r}: allowed: {', '.join(EXECUTORS)}")
    return name


def make_runner(name: str, study: Study, store: Store, **options):
    check_executor(name)
    if name in ("local", "debug"):
        from runners.local import LocalRunner

        return LocalRunner(study, store, debug=name == "debug", **options)
    if name == "slurm":
        from runners.slurm import SlurmRunner

        return SlurmRunner(study, store, **options)


def dispatch(study: Study, specs: list[RunSpec], *, results_root: Path, executor: str | None = None,
             **options) -> Summary:
    store = Store(results_root, study.name)
    runner = make_runner(executor or study.executor.name, study, store, **options)
    return runner.run(specs)
