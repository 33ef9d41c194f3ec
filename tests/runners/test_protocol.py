"""The runners: one protocol, named in one table, and no module of the package importing another
in a cycle (module-level, function-local and type-only imports alike)."""

from __future__ import annotations

from pathlib import Path

import pytest

import runners
from harness.errors import HarnessError
from harness.results.store import Store
from runners.base import Runner
from runners.executors import EXECUTORS, RUNNERS, runner_class
from runners.local import DebugRunner, LocalRunner
from runners.slurm import SlurmRunner

ROOT = Path(__file__).parents[2]


def test_one_table_names_every_executor_of_the_schema():
    assert tuple(RUNNERS) == EXECUTORS
    assert RUNNERS == {"local": LocalRunner, "debug": DebugRunner, "slurm": SlurmRunner}
    for name, cls in RUNNERS.items():
        assert issubclass(cls, Runner) and cls.name == name and runner_class(name) is cls
    with pytest.raises(HarnessError, match=r"^--executor 'ssh': allowed: local, debug, slurm$"):
        runner_class("ssh")


def test_what_differs_is_said_by_the_runner():
    assert [c.remote for c in RUNNERS.values()] == [False, False, True]
    assert [c.in_process for c in RUNNERS.values()] == [False, True, False]
    assert DebugRunner.tethered(print) is print and LocalRunner.tethered(print) is not print


def test_no_runner_holds_live_jobs_without_a_scheduler(tmp_path):
    store = Store(tmp_path, "quiet")
    assert runners.live_view(store) == {} and runners.cancel(store) == []

