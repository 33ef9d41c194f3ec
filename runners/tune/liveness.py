"""Trial bookkeeping and liveness: which trials count, which workers died, heartbeats.

Trials counted towards N ("finished"): COMPLETE, PRUNED, and FAIL of a trial that really ran
and failed (its record says why). A trial whose worker died is *stale*: it is marked FAIL and
its parameters are queued again (a WAITING trial, taken before any new sample), so it is
neither lost nor counted twice. RDB storages (SQLite, PostgreSQL, MySQL) find stale trials
with Optuna's heartbeats (``heartbeat_interval``, ``grace_period``,
``RetryHeartbeatStaleTrialCallback``). A journal storage has no heartbeats, so workers write
their own into the trial's user attributes (``worker_host``, ``worker_pid``, ``heartbeat_at``
every ``heartbeat.interval_s``); ``tune`` at start and end, and every worker before each
trial, fail RUNNING trials whose worker process is gone (same host) or whose heartbeat is
older than ``heartbeat.grace_s`` (any host).
"""

from __future__ import annotations

import os
import socket
import threading
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from runners.tune.schema import TuneConfig


def counts(trials) -> dict[str, int]:
    """complete / pruned / failed (ran and failed) / stale / running / waiting / finished."""
    from optuna.trial import TrialState as S

    out = dict.fromkeys(("complete", "pruned", "failed", "stale", "running", "waiting"), 0)
    for t in trials:
        if t.state == S.COMPLETE:
            out["complete"] += 1
        elif t.state == S.PRUNED:
            out["pruned"] += 1
        elif t.state == S.FAIL:
            out["failed" if ran(t) else "stale"] += 1
        elif t.state == S.RUNNING:
            out["running"] += 1
        elif t.state == S.WAITING:
            out["waiting"] += 1
    out["finished"] = out["complete"] + out["pruned"] + out["failed"]
    return out


def ran(trial) -> bool:
    """A FAIL trial that ran to an outcome (its worker set one), not a stale or surplus one."""
    return trial.user_attrs.get("outcome") in ("failed", "invalid")


def counted(trial) -> bool:
    """Whether the trial counts towards the number of trials asked for."""
    from optuna.trial import TrialState as S

    return trial.state in (S.COMPLETE, S.PRUNED) or (trial.state == S.FAIL and ran(trial))


def _pid_alive(pid: int, started: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    if started is None:
        return True
    return proc_start(pid) in (None, started)  # the same process, not a reused pid


def proc_start(pid: int) -> str | None:
    """The process's start time in clock ticks (/proc), telling a reused pid apart."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def stale_reason(trial, grace_s: int, now: float | None = None) -> str | None:
    """Why a RUNNING trial is stale (journal storages), or None while its worker lives."""
    attrs = trial.user_attrs
    now = time.time() if now is None else now
    start = trial.datetime_start.timestamp() if trial.datetime_start else now
    beat = max(float(attrs.get("heartbeat_at") or 0.0), start)
    if attrs.get("worker_host") == socket.gethostname() and attrs.get("worker_pid"):
        # a retried trial inherits its predecessor's attributes until its worker writes its own
        if float(attrs.get("heartbeat_at") or 0.0) >= start - 1 and \
                not _pid_alive(int(attrs["worker_pid"]), attrs.get("worker_started")):
            return f"worker pid {attrs['worker_pid']} on {attrs['worker_host']} is gone"
    if now - beat > grace_s:
        return f"no heartbeat for {now - beat:.0f} s (grace {grace_s} s)"
    return None


def trial_id(storage, study_name: str, number: int) -> int:
    """The storage's id of trial ``number`` of the study (Optuna's public storage API)."""
    study_id = storage.get_study_id_from_name(study_name)
    return storage.get_trial_id_from_study_id_trial_number(study_id, number)


def recover_stale(ostudy, storage, cfg: TuneConfig) -> list[tuple[int, str]]:
    """Mark RUNNING trials of dead workers FAIL and queue their parameters again.

    ``storage`` is the one ``ostudy`` was opened on. RDB: Optuna's heartbeats
    (``fail_stale_trials``, whose callback re-queues). Journal: our own heartbeat attributes
    and pid check. Returns (trial number, reason) of those failed.
    """
    import optuna
    from optuna.trial import TrialState as S

    from runners.tune.storage import retry_callback

    if not isinstance(storage, optuna.storages.JournalStorage):
        before = {t.number for t in ostudy.get_trials(deepcopy=False, states=(S.RUNNING,))}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(ostudy)
        after = {t.number for t in ostudy.get_trials(deepcopy=False, states=(S.RUNNING,))}
        return [(n, "heartbeat older than the grace period") for n in sorted(before - after)]
    failed = []
    retry = retry_callback(cfg)
    for trial in ostudy.get_trials(deepcopy=True, states=(S.RUNNING,)):
        reason = stale_reason(trial, cfg.heartbeat.grace_s)
        if reason is None:
            continue
        tid = trial_id(storage, ostudy.study_name, trial.number)
        try:
            storage.set_trial_user_attr(tid, "stale", reason)
            storage.set_trial_state_values(tid, state=S.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # finished, or another process got there first
        failed.append((trial.number, reason))
        if retry is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                retry(ostudy, storage.get_trial(tid))
    return failed


class Heartbeat:
    """Journal storages: write ``heartbeat_at`` into the trial every ``interval`` seconds."""

    def __init__(self, storage, trial_id: int, interval: int):
        self.storage, self.trial_id, self.interval = storage, trial_id, interval
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        while not self.stop.wait(self.interval):
            try:
                self.storage.set_trial_user_attr(self.trial_id, "heartbeat_at", time.time())
            except Exception:  # noqa: BLE001 - finished meanwhile; the next trial has its own
                return

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(timeout=5)
