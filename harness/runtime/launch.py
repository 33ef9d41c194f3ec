"""A run across several ranks of this machine: ``train.gpus: N`` on the local executor.

The local executor (``runners.local.LocalRunner``) submits such a run as one submitit job whose
function is a :class:`RankJob`: it starts N processes through PyTorch's elastic launcher
(``torch.distributed.launcher.api.elastic_launch``, the machinery of ``torchrun``), each
calling ``harness.runtime.run.execute``; the launcher sets ``RANK``/``WORLD_SIZE``/
``LOCAL_RANK`` and the rendezvous address, which ``harness.runtime.distributed`` reads (NCCL on
GPUs, one per rank: ``cuda:LOCAL_RANK`` among the job's ``CUDA_VISIBLE_DEVICES``; gloo on CPU).
Rank 0 writes the record.

- Addresses: the rendezvous is the launcher's own c10d store on ``127.0.0.1`` with a port the
  system picks (``127.0.0.1:0``), so two multi-rank runs on one machine never collide.
- Faults: a rank that dies (a signal, an exception on that rank alone) makes the launcher stop
  the other ranks at once (no restarts); the job then records the run ``failed``, naming the
  rank and its cause. Every rank watches the sweep and the job's launcher
  (``harness.runtime.lifeline``): when either is gone, the rank ends itself. When another
  process holds the run (its lock), rank 0 exits at once with ``SKIPPED`` and the launcher
  stops the other ranks: nothing is recorded, as for a run of one process.
- Devices: :class:`Slots` hands out the ranks of ``executor.max_parallel`` (which counts ranks on
  the local executor, not runs) and, on GPUs, the devices of each run (disjoint sets while
  ``max_parallel`` is at most the number of GPUs).
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import HarnessError
from harness.runtime.lifeline import process_start, this_process, watch
from harness.spec.config import TrainConfig
from harness.spec.study import RunSpec


def on_gpus(train: TrainConfig) -> bool:
    """Whether a run of ``train`` trains on this machine's GPUs (``cuda``, or ``auto`` with
    CUDA)."""
    import torch

    return train.device == "cuda" or (train.device == "auto" and torch.cuda.is_available())


def gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def check_ranks(trains: list[TrainConfig]) -> None:
    """A GPU run needs as many GPUs as ranks: refuse one that asks for more than there are."""
    wide = [t.gpus for t in trains if t.gpus > 1 and on_gpus(t)]
    if wide and (n := gpu_count()) < max(wide):
        raise HarnessError(f"train.gpus: {max(wide)} ranks, one per GPU, but this machine has "
                           f"{n} GPU{'s' if n != 1 else ''} (CUDA_VISIBLE_DEVICES="
                           f"{os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}); lower "
                           "train.gpus or use train.device: cpu (gloo ranks)")


def worker_devices(worker: int, train: TrainConfig) -> tuple[int, ...]:
    """The GPUs of tuning worker ``worker`` (trials of ``train.gpus`` ranks; empty on CPU):
    ``[worker * ranks, (worker + 1) * ranks)``, disjoint from the other workers'."""
    if not on_gpus(train):
        return ()
    return tuple(range(worker * train.gpus, (worker + 1) * train.gpus))


@dataclass
class Slots:
    """The ranks (``capacity``: ``max_parallel``) and GPUs (``gpus``; 0 on CPU) that running
    jobs hold. A run wider than ``capacity`` runs alone."""

    capacity: int
    gpus: int = 0
    used: dict[int, int] = field(default_factory=dict)  # GPU -> runs on it
    held: int = 0

    def take(self, spec: RunSpec, busy: bool) -> tuple[int, tuple[int, ...]] | None:
        """``(ranks, devices)`` for ``spec`` if it may start now (``busy``: jobs are running),
        else None; ``devices``: the GPUs it gets (empty on CPU)."""
        ranks = spec.train.gpus
        if busy and self.held + ranks > self.capacity:
            return None
        devices: tuple[int, ...] = ()
        if self.gpus and on_gpus(spec.train):
            load = sorted(range(self.gpus), key=lambda d: (self.used.get(d, 0), d))
            devices = tuple(sorted(load[:ranks]))
            for d in devices:
                self.used[d] = self.used.get(d, 0) + 1
        self.held += ranks
        return ranks, devices

    def give(self, grant: tuple[int, tuple[int, ...]]) -> None:
        ranks, devices = grant
        self.held -= ranks
        for d in devices:
            self.used[d] -= 1


@dataclass(frozen=True)
class RankJob:
    """A submitit job function: ``spec`` as ``spec.train.gpus`` ranks on this machine.

    Made in the sweep's process (``submitter``: its PID and start time, which every rank
    watches). Returns rank 0's record; a rank that fails makes it a ``failed`` record naming
    the rank and the cause.
    """

    submitter: tuple[int, str | None] = field(default_factory=this_process)
    monitor_s: float = 0.2

    def __call__(self, spec: RunSpec, results_root: str, fresh: bool = False,
                 tags: dict[str, Any] | None = None) -> dict | None:
        from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
        from torch.distributed.launcher.api import LaunchConfig, elastic_launch

        from harness.runtime.run import now

        watch(*self.submitter)  # the launcher too ends with the sweep
        config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=spec.train.gpus,
                              run_id=spec.run_id, rdzv_backend="c10d",
                              rdzv_endpoint="127.0.0.1:0", max_restarts=0,
                              monitor_interval=self.monitor_s, start_method="spawn")
        started = now()
        try:
            returned = elastic_launch(config, rank_main)(spec, results_root, fresh,
                                                         self.submitter, tags)
        except ChildFailedError as err:
            rank, failure = err.get_first_failure()
            if rank == 0 and failure.exitcode == SKIPPED:
                return None  # another process holds the run (its lock): nothing recorded
            return record_failure(spec, results_root, err, started, tags)
        return returned.get(0)


SKIPPED = 75  # rank 0's exit code when another process holds the run: the other ranks stop


def rank_main(spec: RunSpec, results_root: str, fresh: bool, submitter: tuple[int, str | None],
              tags: dict[str, Any] | None = None) -> dict | None:
    """One rank: ends with the sweep or its launcher, then runs ``execute``."""
    from torch.distributed.elastic.multiprocessing.errors import record

    from harness.runtime.distributed import env_context
    from harness.runtime.run import execute

    launcher = os.getppid()
    watch(launcher, process_start(launcher))
    watch(*submitter)
    returned = record(execute)(spec, results_root, fresh=fresh, tags=tags)
    if returned is None and env_context().is_main:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(SKIPPED)  # the launcher then stops the ranks waiting for this one
    return returned


def failure_text(err: Any, ranks: int) -> str:
    """``rank R of N: <cause>`` for the first rank that failed (``ChildFailedError``)."""
    rank, failure = err.get_first_failure()
    if failure.exitcode < 0:
        cause = f"killed by {failure.signal_name()} (exit code {failure.exitcode})"
    else:
        message = failure.message
        if isinstance(message, dict):
            message = message.get("message", "")
        first = first_line(message or "")
        cause = f"exit code {failure.exitcode}" + (f": {first}" if first else "")
    return f"rank {rank} of {ranks}: {cause}"


def first_line(text: str) -> str:
    lines = str(text).strip().splitlines()
    return lines[0] if lines else ""


def record_failure(spec: RunSpec, results_root: str, err: Any, started: str,
                   tags: dict[str, Any] | None = None) -> dict:
    """The run's ``failed`` record after a rank failed; what rank 0 recorded in this attempt
    (an error of its own, e.g. a peer gone) is kept in ``rank0_error``."""
    from harness.results.store import Store
    from harness.runtime.run import failed_record, job_log_path

    store = Store(Path(results_root), spec.study)
    earlier = store.read(spec.run_id)
    extra = {}
    if earlier is not None and (earlier.get("started_at") or "") >= started:
        if earlier.get("status") != "failed":
            return earlier  # it wrote its record, then a rank died: keep what it recorded
        extra["rank0_error"] = earlier.get("error") or ""
    also = f"; rank 0 recorded: {first_line(extra['rank0_error'])}" if extra else ""
    record = failed_record(spec, f"a rank failed: {failure_text(err, spec.train.gpus)}{also}",
                          **(tags or {}),
                          ranks=spec.train.gpus, failed_rank=err.get_first_failure()[0],
                          log_path=job_log_path(), **extra)
    store.write(record)
    return record


@contextmanager
def visible_devices(devices: tuple[int, ...]):
    """Jobs submitted in this block see only ``devices`` (``CUDA_VISIBLE_DEVICES``; nothing
    changes when empty)."""
    if not devices:
        yield
        return
    old = os.environ.get("CUDA_VISIBLE_DEVICES")
    names = old.split(",") if old else [str(d) for d in range(max(devices) + 1)]
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(names[d] for d in devices)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = old
