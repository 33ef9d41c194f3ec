"""The one place that names the executors: executor name -> runner class.

The names are the study schema's (``ExecutorConfig.name``): ``debug`` runs jobs in this process
(``runners.local.DebugRunner``), ``local`` as subprocesses of this machine
(``runners.local.LocalRunner``), ``slurm`` as SLURM jobs with the study's ``executor.slurm``
settings (``runners.slurm.SlurmRunner``). Sweeps (``runners.dispatch``), tuning workers
(``runners.tune``) and the CLI all get their runner here; a new executor is a name in the
schema and a ``runners.base.Runner`` subclass in ``RUNNER_CLASSES``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, get_args

from harness.errors import HarnessError
from harness.results.store import Store
from harness.spec.config import ExecutorConfig
from harness.spec.study import Study
from runners.base import Runner
from runners.local import DebugRunner, LocalRunner
from runners.slurm import SlurmRunner

EXECUTORS: tuple[str, ...] = get_args(ExecutorConfig.model_fields["name"].annotation)
RUNNER_CLASSES: tuple[type[Runner], ...] = (LocalRunner, DebugRunner, SlurmRunner)


def _table() -> dict[str, type[Runner]]:
    by_name = {cls.name: cls for cls in RUNNER_CLASSES}
    if set(by_name) != set(EXECUTORS):
        raise ImportError(f"executor names of the study schema ({', '.join(EXECUTORS)}) and "
                          f"of the runners ({', '.join(by_name)}) differ")
    return {name: by_name[name] for name in EXECUTORS}


RUNNERS: dict[str, type[Runner]] = _table()  # in the schema's order


def check_executor(name: str, where: str = "--executor") -> str:
    if name not in EXECUTORS:
        raise HarnessError(f"{where} {name!r}: allowed: {', '.join(EXECUTORS)}")
    return name


def runner_class(name: str, where: str = "--executor") -> type[Runner]:
    """The runner of executor ``name`` (a HarnessError naming the allowed ones if unknown)."""
    return RUNNERS[check_executor(name, where)]


def make_runner(name: str, study: Study, store: Store, **options: Any) -> Runner:
    """A runner of executor ``name`` for ``study``'s ``store``; ``options`` are those of
    ``Runner`` (``max_parallel``, ``wait``, ``show_progress``) and the runner's own."""
    return runner_class(name)(study, store, **options)


def make_executor(name: str, folder: Path, study: Study, *, timeout_min: int = 24 * 60):
    """A submitit executor of kind ``name`` keeping its jobs under ``folder`` (with ``%j``);
    ``timeout_min`` bounds a local job (a SLURM job's limit is ``executor.slurm.time_min``)."""
    return runner_class(name).make_executor(folder, study, timeout_min=timeout_min)
