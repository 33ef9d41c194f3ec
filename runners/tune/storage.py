"""Where a tuning lives: Optuna storages (SQLite, journal file, any SQLAlchemy URL), the
study's sampler and pruner, and opening (or creating) the Optuna study.

Storage (``--storage``, else ``tune.storage``, else the one used last time, else a default):

- ``sqlite:///PATH``: the default for the local executors, ``RESULTS/STUDY/tune/optuna.db``;
- ``journal:PATH`` (or a path ending ``.journal``): Optuna's journal file, safe on NFS; the
  default for SLURM workers, ``RESULTS/STUDY/tune/optuna.journal``;
- any SQLAlchemy URL, e.g. ``postgresql+psycopg2://user@host:5432/db``, for many nodes.

The storage used is remembered in ``RESULTS/STUDY/tune/storage.json`` (without a password)
for ``--show`` and the report.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.errors import HarnessError
from harness.results.storage import check_storage, storage_file, storage_kind
from harness.results.store import tune_dir
from harness.spec.study import Study
from runners.executors import runner_class

if TYPE_CHECKING:
    from runners.tune.schema import TuneConfig


def dashboard_command(url: str) -> list[str]:
    """The ``optuna-dashboard`` command line that opens the storage ``url``."""
    if storage_kind(url) == "journal":
        return ["optuna-dashboard", "--storage-class", "JournalFileStorage", journal_path(url)]
    return ["optuna-dashboard", without_password(url)]


def journal_path(url: str) -> str:
    return url.removeprefix("journal:")


def default_storages(store_dir: Path) -> dict[str, str]:
    return {"rdb": f"sqlite:///{tune_dir(store_dir) / 'optuna.db'}",
            "journal": f"journal:{tune_dir(store_dir) / 'optuna.journal'}"}


def _pointer(store_dir: Path) -> Path:
    return tune_dir(store_dir) / "storage.json"


def resolve_storage(study: Study, cfg: TuneConfig, store_dir: Path, given: str | None,
                    executor: str) -> str:
    """--storage, else tune.storage, else the storage used last time, else a default file:
    SQLite for local workers, a journal file for workers on other machines (a ``remote``
    runner's, SLURM's: SQLite's locks are unsafe on network file systems)."""
    if given or cfg.storage:
        url = given or cfg.storage
        check_storage(url, "--storage" if given else
                      f"{study.source or study.name}: tune.storage")
        return url
    last = recorded_storage(store_dir)
    if last:
        return last
    defaults = default_storages(store_dir)
    for kind in ("rdb", "journal"):
        if storage_file(defaults[kind]).exists():
            return defaults[kind]
    return defaults["journal" if runner_class(executor).remote else "rdb"]


def existing_storage(cfg: TuneConfig, store_dir: Path, given: str | None = None) -> str | None:
    """The storage of a tuning that already ran (``given``, ``tune.storage``, the recorded
    one, or a default file that exists); None when there is none yet."""
    url = given or cfg.storage or recorded_storage(store_dir)
    if url is None:
        url = next((u for u in default_storages(store_dir).values() if storage_file(u).exists()),
                   None)
    if url is None:
        return None
    path = storage_file(url)
    return None if path is not None and not path.exists() else url


def recorded_storage(store_dir: Path) -> str | None:
    try:
        return json.loads(_pointer(store_dir).read_text())["storage"]
    except (FileNotFoundError, KeyError, json.JSONDecodeError):
        return None


def record_storage(store_dir: Path, url: str) -> None:
    """Remember the storage for ``--show`` and the report; a password is never written (libpq
    finds it in ~/.pgpass or $PGPASSWORD)."""
    from harness.results.store import atomic_write_json

    atomic_write_json(_pointer(store_dir), {"storage": without_password(url)})


def without_password(url: str) -> str:
    """The URL as it may be shown and written down: any password left out."""
    if storage_kind(url) != "rdb":
        return url
    from sqlalchemy.engine import URL, make_url

    p = make_url(url)
    if p.password is None:
        return url
    return URL.create(p.drivername, p.username, None, p.host, p.port, p.database,
                      p.query).render_as_string(hide_password=False)


def open_storage(url: str, cfg: TuneConfig, *, heartbeats: bool = True):
    """The Optuna storage behind ``url``; RDB storages get Optuna's heartbeats (``heartbeats``)
    whose stale-trial callback queues a dead worker's parameters again."""
    import optuna

    if storage_kind(url) == "journal":
        from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

        path = journal_path(url)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(
            JournalFileBackend(path, lock_obj=JournalFileOpenLock(path)))
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}  # several local workers
    if heartbeats:
        kwargs.update(
            heartbeat_interval=cfg.heartbeat.interval_s, grace_period=cfg.heartbeat.grace_s,
            heartbeat_stale_trial_callback=retry_callback(cfg))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        try:
            return optuna.storages.RDBStorage(url, **kwargs)
        except Exception as err:  # noqa: BLE001 - bad URL, server down, driver missing
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise HarnessError(f"--storage {without_password(url)}: cannot open: {first}") \
                from None


def retry_callback(cfg: TuneConfig):
    """Optuna's callback that queues a stale trial's parameters again (None: no retries)."""
    import optuna

    if cfg.heartbeat.retries == 0:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=cfg.heartbeat.retries)


def make_sampler(cfg: TuneConfig, worker: int = 0, resumed_at: int = 0):
    """The seeded sampler of one worker. The seed mixes in the worker index and the number of
    trials the study held when this ``tune`` started, so that workers (and later ``tune`` calls,
    whose random start would otherwise replay the first one's) draw different points; one
    worker and the same sequence of calls reproduce the same trials."""
    import optuna

    seed = (cfg.sampler.seed + 1009 * worker + 7919 * resumed_at) % 2**32
    name = cfg.sampler.name
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if name == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        if name == "nsga2":
            return optuna.samplers.NSGAIISampler(
                seed=seed, population_size=cfg.sampler.population_size)
        # constraints: each trial sets its own (Trial.set_constraint, Optuna 5), which TPE and
        # NSGA-II read; constraints_func is deprecated
        return optuna.samplers.TPESampler(
            seed=seed, n_startup_trials=cfg.sampler.startup_trials, multivariate=True,
            group=True, constant_liar=True)


def make_pruner(cfg: TuneConfig, steps: int):
    import optuna

    p = cfg.pruner
    if p.name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=p.startup_trials,
                                           n_warmup_steps=p.warmup_steps)
    if p.name == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=p.min_resource or "auto", max_resource=steps,
            reduction_factor=p.reduction_factor)
    return optuna.pruners.NopPruner()


def open_study(study: Study, cfg: TuneConfig, url: str, *, storage=None, worker: int = 0,
               resumed_at: int = 0, create: bool = False, heartbeats: bool = True):
    """The Optuna study named after the study, in ``url`` (or the already opened
    ``storage`` of ``url``); created if ``create``."""
    import optuna

    storage = storage or open_storage(url, cfg, heartbeats=heartbeats)
    sampler = make_sampler(cfg, worker, resumed_at)
    pruner = make_pruner(cfg, study.train.steps)
    try:
        if create:
            ostudy = optuna.create_study(storage=storage, study_name=study.name,
                                         directions=cfg.directions, sampler=sampler,
                                         pruner=pruner, load_if_exists=True)
        else:
            ostudy = optuna.load_study(storage=storage, study_name=study.name, sampler=sampler,
                                       pruner=pruner)
    except KeyError:
        raise HarnessError(f"{study.source or study.name}: no tuning study {study.name!r} in "
                           f"{without_password(url)}; run 'moe-harness tune' first") from None
    have = [d.name.lower() for d in ostudy.directions]
    if have != cfg.directions:
        raise HarnessError(
            f"{study.source or study.name}: tune.objectives: the storage "
            f"{without_password(url)} holds study {study.name!r} with directions {have}, but "
            f"the file now asks {cfg.directions}; use another --storage or study name")
    if create:
        ostudy.set_user_attr("metrics", cfg.metrics)
        with warnings.catch_warnings():  # experimental in Optuna, and what the dashboard reads
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            ostudy.set_metric_names(cfg.metrics)  # the objectives' names in optuna-dashboard
    return ostudy
