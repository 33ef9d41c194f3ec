"""``moe-harness tune``: Optuna over a study's axes, on one machine or many SLURM workers.

A study's ``tune:`` section names a search space over the study's axes, one objective (TPE) or
several (multi-objective TPE or NSGA-II), optional constraints (a cost budget), a pruner and
the storage. ``tune`` opens (or continues) the Optuna study, marks trials left RUNNING by dead
workers as failed and re-queues their parameters, then launches K workers; each pulls trials
from the shared storage until N trials are finished (a worker whose peers hold the last
trials waits for them, and runs their retries if they die). Every trial runs
``harness.runtime.run.execute`` on the RunSpec of its parameters, so it writes a normal record (with
``tune_trial``). When a call ends, the tuning's summary goes into the store
(``harness.results.tune_summary``), which ``tune --show`` and the report read.

One module per part:

- ``schema``: the ``tune:`` section's models (``TuneConfig``) and metrics;
- ``config``: its validation against the study (``parse``);
- ``space``: trial parameters <-> axis values <-> RunSpec;
- ``storage``: storages, sampler, pruner, opening the Optuna study;
- ``liveness``: which trials count, stale trials of dead workers, heartbeats;
- ``worker``: the loop that takes and runs trials, pruning, constraints;
- ``driver``: ``tune()``, launching and following the workers;
- ``results``: best trials, Pareto set, importances, the summary and ``show``.

Seeds: worker i of a ``tune`` call samples with ``sampler.seed`` mixed with i and the number of
trials the study held when the call started (``storage.make_sampler``): one worker and the same
sequence of calls give the same trials; several workers interleave nondeterministically.
"""

from runners.tune.config import parse
from runners.tune.driver import tune
from runners.tune.liveness import counts, proc_start, ran, recover_stale, stale_reason
from runners.tune.results import (
    best_trials,
    importances,
    load_tuning,
    pareto,
    refresh_summary,
    show,
    summarise,
)
from runners.tune.schema import INTERMEDIATE, METRICS, TuneConfig
from runners.tune.space import base_point, describe_params, point_from_params, trial_spec
from runners.tune.storage import (
    dashboard_command,
    open_storage,
    open_study,
    record_storage,
    recorded_storage,
    resolve_storage,
    storage_kind,
    without_password,
)
from runners.tune.worker import Surplus, check_surplus, constraint_values, reporter, run_worker

__all__ = [
    "INTERMEDIATE", "METRICS", "Surplus", "TuneConfig", "base_point", "best_trials",
    "check_surplus", "constraint_values", "counts", "dashboard_command", "describe_params",
    "importances", "load_tuning", "open_storage", "open_study", "pareto", "parse",
    "point_from_params", "proc_start", "ran", "record_storage", "recorded_storage",
    "recover_stale", "refresh_summary", "reporter", "resolve_storage", "run_worker", "show",
    "stale_reason", "storage_kind", "summarise", "trial_spec", "tune", "without_password",
]
