"""One tuning worker: it takes trials from the shared storage until N trials are finished.

Each trial turns its parameters into a RunSpec (``runners.tune.space``) and runs
``harness.runtime.run.execute``, so it writes a normal record (with ``tune_trial``) that ``report``
shows beside the grid runs. Two workers that start the last trial at the same moment: the
later one fails at once as ``surplus`` (user attribute ``outcome``), not counted.

Identical parameters (TPE re-samples small categorical spaces) give the same run_id: a trial
whose run already has an ``ok`` record reuses it (user attribute ``reused_record``) instead of
training again, and a trial waits for an earlier RUNNING trial of the same run_id rather than
training the same run in the same work folder at the same time.

Pruning: a pruner (median or Hyperband) judges the values a trial reports while it trains,
through ``execute(on_progress=...)``: by default the training loss that
``harness.runtime.train.fit``
reports every few steps (a running mean, ``pruner.smoothing``), negated when the objective is
maximised so that the pruner's "worse" points the objective's way; ``pruner.metric`` may name
``test_accuracy`` / ``test_loss`` for a training loop that reports evaluations. The reporter
raises ``harness.runtime.run.Pruned``; ``execute`` records the run with status ``pruned``
(parameters,
cost and environment measured before training, ``pruned_step``, ``prune_reason``); the store
counts it as done and the trial is PRUNED, counted as finished.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import socket
import time
from typing import TYPE_CHECKING, Any

from harness.errors import HarnessError
from harness.spec.study import Study
from runners.tune.liveness import Heartbeat, counted, counts, proc_start, recover_stale, trial_id
from runners.tune.space import suggest, trial_spec
from runners.tune.storage import open_storage, open_study

if TYPE_CHECKING:
    from runners.tune.schema import TuneConfig

class Surplus(Exception):
    """Two workers started the last trial at the same moment: this one is not needed."""


class TrialFailed(Exception):
    """The run failed (its record says why) or its parameters make no valid run."""


def run_worker(study: Study, cfg: TuneConfig, url: str, trials: int, worker: int,
               results_root: str, resumed_at: int = 0, poll_s: float = 2.0) -> dict[str, int]:
    """One worker: take trials from the shared storage until ``trials`` are finished.

    While the finished plus the running trials make ``trials``, the worker waits instead of
    leaving: a running trial whose worker died turns stale (heartbeat or pid), is failed and
    queued again, and this worker then runs it. So the study always reaches ``trials``.
    """
    import optuna

    # torch loads now, before this worker holds a RUNNING trial that has no heartbeat yet
    import harness.nn.vit  # noqa: F401
    import harness.runtime.run  # noqa: F401

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(url, cfg)
    ostudy = open_study(study, cfg, url, storage=storage, worker=worker, resumed_at=resumed_at)
    objective = functools.partial(_objective, study=study, cfg=cfg, storage=storage,
                                  trials=trials, results_root=results_root, worker=worker)
    ran = 0
    while True:
        recover_stale(ostudy, storage, cfg)
        c = counts(ostudy.get_trials(deepcopy=False))
        if c["finished"] >= trials:
            break
        if c["finished"] + c["running"] >= trials:
            time.sleep(poll_s)  # others are on the last trials: wait for them (or their death)
            continue
        ostudy.optimize(objective, n_trials=1, catch=(TrialFailed, Surplus),
                        gc_after_trial=True)
        ran += 1
    return {"worker": worker, "trials_run": ran}


def _objective(trial, *, study: Study, cfg: TuneConfig, storage, trials: int,
               results_root: str, worker: int):
    """Run one trial; a journal storage hears its heartbeat from the first moment on."""
    from optuna.storages import JournalStorage

    trial.set_user_attr("worker_host", socket.gethostname())
    trial.set_user_attr("worker_pid", os.getpid())
    trial.set_user_attr("worker_started", proc_start(os.getpid()))
    trial.set_user_attr("worker", worker)
    trial.set_user_attr("heartbeat_at", time.time())
    beat = Heartbeat(storage, trial_id(storage, study.name, trial.number),
                     cfg.heartbeat.interval_s) if isinstance(storage, JournalStorage) \
        else contextlib.nullcontext()
    with beat:
        return _run_trial(trial, study=study, cfg=cfg, storage=storage, trials=trials,
                          results_root=results_root, worker=worker)


def _run_trial(trial, *, study: Study, cfg: TuneConfig, storage, trials: int,
               results_root: str, worker: int = 0):
    import optuna

    from harness.results.store import Store
    from harness.runtime.run import execute

    trial.set_user_attr("slurm_job_id", _slurm_job_id())
    if trial.user_attrs.get("stale"):  # a retry inherits its stale predecessor's attributes
        trial.set_user_attr("stale", None)
    check_surplus(trial, trials)
    params = suggest(trial, study, cfg)
    try:
        spec = trial_spec(study, cfg, params)
    except HarnessError as err:
        trial.set_user_attr("outcome", "invalid")
        trial.set_user_attr("error", str(err))
        raise TrialFailed(str(err)) from None
    trial.set_user_attr("run_id", spec.run_id)
    trial.set_user_attr("spec", spec.model_config_().spec)
    _wait_for_twin(trial, storage, spec.run_id, cfg)
    record = Store(results_root, study.name).read(spec.run_id)
    if record and record.get("status") in ("ok", "diverged") and metric_values(record, cfg):
        trial.set_user_attr("reused_record", record.get("tune_trial", "grid"))
    elif spec.train.gpus > 1:  # ranks of this machine; not pruned (no rank stops alone)
        from harness.runtime.launch import RankJob, visible_devices, worker_devices

        with visible_devices(worker_devices(worker, spec.train)):
            record = RankJob()(spec, results_root,
                               tags={"tune_trial": trial.number, "tune_study": study.name})
    else:
        record = execute(spec, results_root, on_progress=reporter(trial, cfg),
                         tags={"tune_trial": trial.number, "tune_study": study.name})
    trial.set_user_attr("status", record.get("status"))
    for name, value in constraint_values(record, cfg).items():
        trial.set_constraint(name, value)
    if record.get("status") == "pruned":
        trial.set_user_attr("outcome", "pruned")
        raise optuna.TrialPruned(f"pruned at step {record.get('pruned_step')}")
    values = metric_values(record, cfg) if record.get("status") in ("ok", "diverged") else None
    if values is None:
        trial.set_user_attr("outcome", "failed")
        error = record.get("error") or f"no {', '.join(cfg.metrics)} in the record"
        trial.set_user_attr("error", str(error)[:500])
        raise TrialFailed(error)
    trial.set_user_attr("outcome", "complete")
    return values if cfg.multi else values[0]


def _slurm_job_id() -> str | None:
    """As the record names it (``harness.runtime.run``: ``ARRAY_TASK`` for an array task)."""
    import harness.runtime.run

    named = getattr(harness.runtime.run, "slurm_job_id", None)
    return named() if named else os.environ.get("SLURM_JOB_ID")


def check_surplus(trial, trials: int) -> None:
    """Exactly ``trials`` finished: a trial beyond them (a start race) fails as surplus."""
    from optuna.trial import TrialState as S

    active = sorted(t.number for t in trial.study.get_trials(deepcopy=False)
                    if counted(t) or t.state == S.RUNNING)
    if trial.number in active and active.index(trial.number) >= trials:
        trial.set_user_attr("outcome", "surplus")
        raise Surplus(f"trial {trial.number}: {trials} trials are already finished or running")


def _wait_for_twin(trial, storage, run_id: str, cfg: TuneConfig) -> None:
    """Let an earlier RUNNING trial of the same run finish first (same work folder), or die:
    a twin whose worker died is failed here (nobody else may be free to notice)."""
    from optuna.trial import TrialState as S

    while True:
        recover_stale(trial.study, storage, cfg)
        twins = [t for t in trial.study.get_trials(deepcopy=False, states=(S.RUNNING,))
                 if t.user_attrs.get("run_id") == run_id and t.number < trial.number]
        if not twins:
            return
        time.sleep(min(2.0, cfg.heartbeat.interval_s))


def metric_values(record: dict, cfg: TuneConfig) -> list[float] | None:
    """The record's values of the objectives, in order; None if one is missing or NaN."""
    values = []
    for metric in cfg.metrics:
        v = record.get(metric)
        if v is None or not isinstance(v, (int, float)) or math.isnan(v):
            return None
        values.append(float(v))
    return values


def constraint_values(record: dict, cfg: TuneConfig) -> dict[str, float]:
    """Optuna's convention: a constraint holds when its value is <= 0 (unmeasured: inf)."""
    out = {}
    for c in cfg.constraints:
        v = record.get(c.metric)
        if c.max is not None:
            out[f"{c.metric}<={c.max:g}"] = math.inf if v is None else float(v) - c.max
        if c.min is not None:
            out[f"{c.metric}>={c.min:g}"] = math.inf if v is None else c.min - float(v)
    return out


def reporter(trial, cfg: TuneConfig):
    """``on_progress`` for ``execute``: report the pruner's metric (a running mean) at each
    progress step and raise ``harness.runtime.run.Pruned`` when the pruner says so. Single objective
    only (Optuna prunes nothing else); the value is negated when its direction is not the
    objective's, e.g. the training loss of a study that maximises accuracy."""
    if cfg.multi or cfg.pruner.name == "none":
        return None
    from harness.runtime.run import Pruned
    from runners.tune.schema import INTERMEDIATE

    key, higher_better = INTERMEDIATE[cfg.pruner.metric]
    sign = 1.0 if higher_better == (cfg.directions[0] == "maximize") else -1.0
    alpha = cfg.pruner.smoothing
    mean: list[float] = []

    def on_progress(info: dict[str, Any]) -> None:
        value, step = info.get(key), info.get("step")
        if value is None or step is None or not math.isfinite(value):
            return
        mean[:] = [float(value) if not mean else alpha * float(value) + (1 - alpha) * mean[0]]
        trial.report(sign * mean[0], int(step))
        if trial.should_prune():
            raise Pruned(int(step), f"{cfg.pruner.metric} {mean[0]:.4g} at step {step}: worse "
                                    f"than the {cfg.pruner.name} pruner allows")

    return on_progress
