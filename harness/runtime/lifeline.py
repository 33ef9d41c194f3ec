"""Worker processes that die with the command that started them.

submitit's local executor starts each job as a controller process with the job under it; a
``moe-harness run`` that is killed (SIGKILL included) would leave both training under PID 1.
A job wrapped in :class:`Tethered` watches the process that submitted it and kills itself
when that process is gone (its controller then exits too). The watched process is named by
its PID and its start time, so a recycled PID is not mistaken for it.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


def _stat(pid: int) -> list[str] | None:
    """/proc/PID/stat's fields after the command name (state, ppid, ...), None if absent."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None


def process_start(pid: int) -> str | None:
    """The start time of ``pid`` in clock ticks since boot (Linux), None elsewhere or if gone."""
    stat = _stat(pid)
    return stat[19] if stat else None  # field 22 of proc(5)


def alive(pid: int, start: str | None) -> bool:
    """``pid`` runs and is the process that started at ``start`` (a zombie, killed but not yet
    reaped by its parent, counts as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    stat = _stat(pid)
    if stat is None:
        return start is None  # no /proc: trust os.kill
    return stat[0] != "Z" and (start is None or stat[19] == start)


def this_process() -> tuple[int, str | None]:
    """This process's PID and start time (what :func:`alive` checks), for :func:`tether` in
    the processes it starts."""
    return os.getpid(), process_start(os.getpid())


@dataclass(frozen=True)
class Tethered:
    """``fn`` as a picklable job that ends (SIGKILL) within ``interval_s`` of the submitting
    process's death. Make it in the submitting process: it records who that is (``submitter``:
    PID and start time)."""

    fn: Callable[..., Any]
    submitter: tuple[int, str | None] = field(default_factory=this_process)
    interval_s: float = 0.5

    def __call__(self, *args, **kwargs):
        watch(*self.submitter, self.interval_s)
        return self.fn(*args, **kwargs)


def children(pid: int) -> list[int]:
    """The PIDs whose parent is ``pid`` (Linux; empty elsewhere)."""
    entries = os.listdir("/proc") if os.path.isdir("/proc") else []
    return [int(e) for e in entries
            if e.isdigit() and (stat := _stat(int(e))) and int(stat[1]) == pid]


def kill_tree(pid: int) -> None:
    """SIGKILL ``pid`` and its descendants, the deepest first (so none is left orphaned)."""
    for child in children(pid):
        kill_tree(child)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def tether(submitter: tuple[int, str | None], interval_s: float = 0.5) -> None:
    """Make this process (a pool's worker, a spawned rank) end within ``interval_s`` of
    ``submitter``'s death (:func:`this_process` of the process that started it): the
    initializer of a process pool, the first call of a spawned process."""
    watch(*submitter, interval_s)


def watch(pid: int, start: str | None, interval_s: float = 0.5) -> threading.Thread:
    def run():
        while alive(pid, start):
            time.sleep(interval_s)
        os.kill(os.getpid(), signal.SIGKILL)  # no record: the run stays pending, resumable

    thread = threading.Thread(target=run, name="lifeline", daemon=True)
    thread.start()
    return thread
