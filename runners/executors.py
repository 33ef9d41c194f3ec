"""The one place that knows the executor names and makes submitit executors.

``debug`` runs jobs in this process, ``local`` as subprocesses of this machine, ``slurm`` as
SLURM jobs with the study's ``executor.slurm`` settings (``runners.slurm.executor_parameters``).
Sweeps and tuning workers both get their executor here, in the folder the store names for it.
"""

from __future__ import annotations

from pathlib import Path
from typing import get_args

from harness.errors import HarnessError
from harness.spec.config import ExecutorConfig
from harness.spec.study import Study

EXECUTORS: tuple[str, ...] = get_args(ExecutorConfig.model_fields["name"].annotation)


def check_executor(name: str, where: str = "--executor") -> str:
    if name not in EXECUTORS:
        raise HarnessError(f"{where} {name!r}: allowed: {', '.join(EXECUTORS)}")
    return name


def make_executor(name: str, folder: Path, study: Study, *, timeout_min: int = 24 * 60):
    """A submitit executor of kind ``name`` keeping its jobs under ``folder`` (with ``%j``);
    ``timeout_min`` bounds a local job (a SLURM job's limit is ``executor.slurm.time_min``)."""
    import submitit

    check_executor(name)
    if name == "debug":
        return submitit.DebugExecutor(folder=folder)
    if name == "local":
        executor = submitit.LocalExecutor(folder=folder)
        executor.update_parameters(timeout_min=timeout_min)
        return executor
    from runners.slurm import executor_parameters

    executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
    executor.update_parameters(**executor_parameters(study))
    return executor

