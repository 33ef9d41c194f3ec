"""What every runner is: the ``Runner`` protocol, the ``Summary`` it returns, and the helpers
for submitting jobs from this process.

A runner is one way of executing a study's runs through submitit (``runners.executors`` names
them all, from the study schema's ``ExecutorConfig.name``). Sweeps (``runners.dispatch``) make
a runner and call ``run``; tuning (``runners.tune``) uses its executor and job handling for
its workers; ``runners.live_view`` and ``runners.cancel`` ask every runner for the study's live
jobs. None of them asks which runner it holds: what differs is said by the runner (its
attributes and methods).
"""

from __future__ import annotations

import os
import signal
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from harness.results.store import Store
    from harness.spec.study import RunSpec, Study


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


class Runner(ABC):
    """Where a study's jobs run, through submitit.

    Made as ``Runner(study, store, max_parallel=..., wait=..., show_progress=...)``: every
    runner takes the options of ``dispatch`` and uses those that concern it (as submitit's
    AutoExecutor takes every cluster's parameters): ``max_parallel`` bounds the runs a runner
    runs itself at once, ``wait`` follows ``remote`` jobs until they end (the others are always
    waited for). Subclasses may add keywords of their own (retries, polling, time limits).
    """

    name: ClassVar[str]  # the executor name in study files and --executor
    remote: ClassVar[bool] = False  # jobs run on other machines and outlive this process
    in_process: ClassVar[bool] = False  # jobs run in this process, when their result is asked

    def __init__(self, study: Study, store: Store, *, max_parallel: int | None = None,
                 wait: bool = False, show_progress: bool = True, fresh: bool = False):
        self.study, self.store, self.show_progress = study, store, show_progress
        self.max_parallel = max_parallel
        self.wait = wait or not self.remote
        self.fresh = fresh  # a rerun: each run trains from scratch, its old work set aside

    @abstractmethod
    def run(self, specs: list[RunSpec]) -> Summary:
        """Execute (or, ``remote`` without ``wait``, submit) ``specs``; what became of them."""

    # --- submitit executors and jobs, for sweeps and tuning workers alike -------------------
    @classmethod
    @abstractmethod
    def make_executor(cls, folder: Path, study: Study, *, timeout_min: int = 24 * 60) -> Any:
        """A submitit executor keeping its jobs under ``folder`` (with ``%j``); ``timeout_min``
        bounds a job where the runner has no time limit of its own."""

    @classmethod
    def worker_executor(cls, folder: Path, study: Study, *, workers: int,
                        timeout_min: int = 24 * 60) -> Any:
        """An executor for ``workers`` long-lived single-process workers (tuning)."""
        return cls.make_executor(folder, study, timeout_min=timeout_min)

    @classmethod
    def tethered(cls, fn: Callable) -> Callable:
        """``fn`` as this runner's jobs should call it (e.g. ending with this process)."""
        return fn

    @classmethod
    @contextmanager
    def submitting(cls, threads: int) -> Iterator[None]:
        """Around ``executor.submit``: jobs get ``threads`` threads each and ignore Ctrl-C
        (which reaches this process alone, which stops them: ``stop``)."""
        with thread_env(threads), sigint_ignored():
            yield

    @classmethod
    def stop(cls, jobs: list) -> None:
        """End ``jobs`` now (this process was interrupted)."""
        for job in jobs:
            job.cancel(check=False)

    # --- jobs that outlive this process -----------------------------------------------------
    @classmethod
    def live(cls, store: Store) -> dict[str, dict]:
        """run_id -> {state, job_id, elapsed, restarts, reason, log} of the study's runs whose
        job is still held by a scheduler and not yet recorded (none for a local runner)."""
        return {}

    @classmethod
    def cancel(cls, store: Store) -> list[str]:
        """Cancel the study's live jobs; returns their ids."""
        return []


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


@contextmanager
def sigint_ignored():
    """Processes started in this block ignore SIGINT (inherited through exec): a Ctrl-C on the
    terminal reaches the sweep alone, which stops its jobs itself (``Runner.stop``)."""
    try:
        old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)
