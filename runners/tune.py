"""``moe-harness tune``: Optuna over a study's axes, on one machine or many SLURM workers.

A study's ``tune:`` section names a search space over the study's axes, one objective (TPE) or
several (multi-objective TPE or NSGA-II), optional constraints (a cost budget), a pruner and
the storage. ``tune`` opens (or continues) the Optuna study, marks trials left RUNNING by dead
workers as failed and re-queues their parameters, then launches K workers through submitit
(``debug``, ``local`` or ``slurm``; SLURM reuses ``executor.slurm``). Each worker pulls trials
from the shared storage until N trials are finished (a worker whose peers hold the last
trials waits for them, and runs their retries if they die). Every trial turns its parameters into a
RunSpec through ``Study._spec`` (the study's own validation; base point = axis defaults, then
``fixed:``, then the first value of each grid axis) and runs ``harness.run.execute``, so it
writes a normal record (with ``tune_trial``) that ``report`` shows beside the grid runs.

Storage (``--storage``, else ``tune.storage``, else the one used last time, else a default):

- ``sqlite:///PATH``: the default for the local executors, ``RESULTS/STUDY/tune/optuna.db``;
- ``journal:PATH`` (or a path ending ``.journal``): Optuna's journal file, safe on NFS; the
  default for SLURM workers, ``RESULTS/STUDY/tune/optuna.journal``;
- any SQLAlchemy URL, e.g. ``postgresql+psycopg2://user@host:5432/db``, for many nodes.

Trials counted towards N ("finished"): COMPLETE, PRUNED, and FAIL of a trial that really ran
and failed (its record says why). Two workers that start the last trial at the same moment:
the later one fails at once as ``surplus`` (user attribute ``outcome``), not counted.

A trial whose worker died is *stale*: it is marked FAIL and its parameters are queued again
(a WAITING trial, taken before any new sample), so it is neither lost nor counted twice. RDB
storages (SQLite, PostgreSQL, MySQL) find stale trials with Optuna's heartbeats
(``heartbeat_interval``, ``grace_period``, ``RetryHeartbeatStaleTrialCallback``). A journal
storage has no heartbeats, so workers write their own into the trial's user attributes
(``worker_host``, ``worker_pid``, ``heartbeat_at`` every ``heartbeat.interval_s``); ``tune``
at start and end, and every worker before each trial, fail RUNNING trials whose worker process
is gone (same host) or whose heartbeat is older than ``heartbeat.grace_s`` (any host).

Pruning: a pruner (median or Hyperband) judges the values a trial reports while it trains,
through ``execute(on_progress=...)``: by default the training loss that ``harness.train.fit``
reports every few steps (a running mean, ``pruner.smoothing``), negated when the objective is
maximised so that the pruner's "worse" points the objective's way; ``pruner.metric`` may name
``test_accuracy`` / ``test_loss`` for a training loop that reports evaluations. Optuna prunes
single-objective studies only, so a pruner with several objectives is refused. The reporter
raises ``harness.run.Pruned``; ``execute`` records the run with status ``pruned`` (parameters,
cost and environment measured before training, ``pruned_step``, ``prune_reason``); the store
counts it as done (``run`` does not retry it, ``--rerun`` does) and the trial is PRUNED,
counted as finished.

Identical parameters (TPE re-samples small categorical spaces) give the same run_id: a trial
whose run already has an ``ok`` record reuses it (user attribute ``reused_record``) instead of
training again, and a trial waits for an earlier RUNNING trial of the same run_id rather than
training the same run in the same work folder at the same time.

Seeds: worker i of a ``tune`` call samples with ``sampler.seed`` mixed with i and the number of
trials the study held when the call started (see ``make_sampler``): one worker and the same
sequence of calls give the same trials; several workers interleave nondeterministically.

``tune --show`` prints the best trial (or the Pareto set, feasible trials only) and fANOVA
parameter importances per objective; ``reports.tuning`` draws the same for the HTML report.
"""

from __future__ import annotations

import functools
import gc
import json
import math
import os
import shlex
import socket
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from harness.errors import HarnessError
from harness.study import AXES, TRAIN_AXES, RunSpec, Study

# --- the tune section ------------------------------------------------------------------------
INT_AXES = ("num_experts", "slots_per_expert", "k", "group_size", "seed", "steps", "batch_size",
            "warmup_steps")
FLOAT_AXES = ("capacity_factor", "router_noise", "lr", "weight_decay", "aux_loss_weight")
STR_AXES = ("model", "router", "moe_layers", "pool", "attention", "gelu", "capacity_rounding")
SPACE_AXES = (*AXES, *TRAIN_AXES)
BLOCK_PARAM = "moe_block_{}"  # Optuna parameter names of a per-block placement

# Record columns an objective or constraint may name, with the measurement each needs.
METRICS: dict[str, str | None] = {
    "test_accuracy": None, "test_loss": None, "fewshot_accuracy": None,
    "params_total": None, "params_active": None,
    "gflops_per_image": "flops", "train_exaflops": "flops",
    "train_images_per_s": "time", "infer_images_per_s": "time", "infer_latency_ms": "time",
    "train_step_ms": "time", "peak_memory_mb": "memory", "train_time_s": None,
}
# What a trial can report while it trains, for pruning: name -> (key in the progress dicts of
# harness.train.fit, higher is better). fit reports the training loss every few steps; the
# evaluation metrics are used when a progress dict carries them.
INTERMEDIATE = {"train_loss": ("loss", False), "test_accuracy": ("test_accuracy", True),
                "test_loss": ("test_loss", False)}


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Param(_Model):
    """One axis of the search space.

    ``type`` is inferred when left out: ``choices`` -> categorical, integer bounds -> int,
    other bounds -> float. ``per_block`` (``moe_layers`` only) turns each block's MoE on or off.
    """

    type: Literal["int", "float", "categorical", "per_block"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: list[Any] | None = None
    blocks: list[int] | None = None  # per_block: the candidate blocks (default: all)

    @model_validator(mode="before")
    @classmethod
    def _infer_type(cls, value: Any) -> Any:
        if isinstance(value, list):
            return {"type": "categorical", "choices": value}
        if not isinstance(value, (dict, BaseModel)):
            raise ValueError(f"expected {{low: .., high: ..}}, {{choices: [..]}}, "
                             f"{{type: per_block}} or a list of choices, got {value!r}")
        if isinstance(value, dict) and "type" not in value:
            if "choices" in value:
                return {**value, "type": "categorical"}
            bounds = [value.get("low"), value.get("high")]
            if all(isinstance(b, int) and not isinstance(b, bool) for b in bounds):
                return {**value, "type": "int"}
            return {**value, "type": "float"}
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Param:
        if self.type in ("int", "float"):
            for name in ("low", "high"):
                if getattr(self, name) is None:
                    raise ValueError(f"{name}: missing (a {self.type} axis needs low and high)")
            if self.choices is not None or self.blocks is not None:
                raise ValueError(f"choices: not allowed with type {self.type} (use low/high)")
            if self.type == "int":
                for name in ("low", "high", "step"):
                    v = getattr(self, name)
                    if v is not None and v != int(v):
                        raise ValueError(f"{name}: an int axis needs whole numbers, got {v}")
            if self.low > self.high:
                raise ValueError(f"low: must be <= high ({_num(self.high)}), got {_num(self.low)}")
            if self.log and self.low <= 0:
                raise ValueError(f"low: a log axis needs low > 0, got {_num(self.low)}")
            if self.log and self.step is not None:
                raise ValueError("step: Optuna does not combine step with log: true")
            if self.step is not None and self.step <= 0:
                raise ValueError(f"step: must be > 0, got {_num(self.step)}")
        elif self.type == "categorical":
            if not self.choices:
                raise ValueError("choices: a categorical axis needs a non-empty list")
            if self.low is not None or self.high is not None or self.log or self.step:
                raise ValueError("low: not allowed with choices (give one or the other)")
        else:  # per_block
            if self.low is not None or self.high is not None or self.choices is not None:
                raise ValueError("type: per_block takes only 'blocks' (candidate block indices)")
            if self.blocks is not None and (not self.blocks or min(self.blocks) < 0):
                raise ValueError(f"blocks: non-empty list of block indices >= 0, got {self.blocks}")
        return self


class Objective(_Model):
    metric: str
    direction: Literal["maximize", "minimize"]


class Constraint(_Model):
    """A budget on a record column: ``metric <= max`` and/or ``metric >= min``."""

    metric: str
    max: float | None = None
    min: float | None = None

    @model_validator(mode="after")
    def _bound(self) -> Constraint:
        if self.max is None and self.min is None:
            raise ValueError("max: give max and/or min")
        return self


class SamplerConfig(_Model):
    name: Literal["auto", "tpe", "nsga2", "random"] = "auto"  # auto: TPE (multi-objective TPE)
    seed: int = 0  # worker i samples with seed + i
    startup_trials: int = Field(10, ge=0)  # TPE: random trials before the model kicks in
    population_size: int = Field(20, ge=2)  # NSGA-II


class PrunerConfig(_Model):
    name: Literal["none", "median", "hyperband"] = "none"
    # the intermediate value judged: the training loss (smoothed) by default; reported negated
    # when the objective is maximised, so that "worse" points the objective's way
    metric: Literal["train_loss", "test_accuracy", "test_loss"] = "train_loss"
    smoothing: float = Field(0.3, gt=0, le=1)  # weight of the newest value in the running mean
    startup_trials: int = Field(3, ge=0)  # median: trials finished before pruning starts
    warmup_steps: int = Field(0, ge=0)  # median: steps before a trial may be pruned
    min_resource: int | None = Field(None, ge=1)  # hyperband (training steps); None: auto
    reduction_factor: int = Field(3, ge=2)  # hyperband


class HeartbeatConfig(_Model):
    interval_s: int = Field(10, ge=1)
    grace_s: int = Field(60, ge=1)
    retries: int = Field(1, ge=0)  # times a stale trial's parameters are queued again

    @model_validator(mode="after")
    def _grace(self) -> HeartbeatConfig:
        if self.grace_s < 2 * self.interval_s:
            raise ValueError(f"grace_s: must be >= 2 * interval_s ({2 * self.interval_s}), "
                             f"got {self.grace_s}")
        return self


class TuneConfig(_Model):
    space: dict[str, Param]
    objectives: list[Objective] = Field(min_length=1)
    constraints: list[Constraint] = Field(default_factory=list)
    sampler: SamplerConfig = Field(default_factory=SamplerConfig)
    pruner: PrunerConfig = Field(default_factory=PrunerConfig)
    heartbeat: HeartbeatConfig = Field(default_factory=HeartbeatConfig)
    trials: int | None = Field(None, ge=1)  # default for --trials
    workers: int = Field(1, ge=1)  # default for --workers
    storage: str | None = None  # default for --storage

    @property
    def directions(self) -> list[str]:
        return [o.direction for o in self.objectives]

    @property
    def metrics(self) -> list[str]:
        return [o.metric for o in self.objectives]

    @property
    def multi(self) -> bool:
        return len(self.objectives) > 1


def _num(value: float | None) -> str:
    return "None" if value is None else format(value, "g")


def parse(study: Study) -> TuneConfig:
    """The study's ``tune`` section, validated; errors are one line naming file and field."""
    where = study.source or study.name
    if study.tune is None:
        raise HarnessError(f"{where}: tune: missing; a tuning study needs a 'tune' section "
                           f"with 'space' and 'objectives'")
    try:
        cfg = TuneConfig.model_validate(study.tune)
    except ValidationError as err:
        raise HarnessError(f"{where}: {_describe(err)}") from None
    _check(study, cfg, where)
    return cfg


def _describe(err: ValidationError) -> str:
    e = err.errors()[0]
    loc = ["tune", *(str(p) for p in e["loc"])]
    msg = e["msg"].removeprefix("Value error, ")
    head, sep, rest = msg.partition(": ")
    if sep and head.isidentifier() and " " not in head:  # a model validator naming its field
        loc.append(head)
        msg = rest
    if e["type"] == "extra_forbidden":
        parent = _model_at(e["loc"][:-1])
        allowed = ", ".join(parent.model_fields) if parent else "?"
        return f"{'.'.join(loc)}: unknown key {loc[-1]!r}; allowed: {allowed}"
    if e["type"] == "missing":
        return f"{'.'.join(loc)}: missing (required)"
    if e["type"] == "literal_error":
        return f"{'.'.join(loc)}: {msg} (got {e.get('input')!r})"
    got = "" if e["type"] == "value_error" else f" (got {e.get('input')!r})"
    return f"{'.'.join(loc)}: {msg}{got}"


def _model_at(loc) -> type[BaseModel] | None:
    model: type[BaseModel] = TuneConfig
    for part in loc:
        if isinstance(part, int) or model is None:
            continue
        if model is TuneConfig and part == "space":
            model = None  # a dict of Param: the next part is an axis name
            continue
        field = model.model_fields.get(str(part))
        ann = getattr(field, "annotation", None)
        if ann is None:
            return None
        inner = getattr(ann, "__args__", (ann,))
        model = next((a for a in inner if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if model is None and str(part) in ("objectives", "constraints"):
            model = Objective if part == "objectives" else Constraint
    return model or Param


def _check(study: Study, cfg: TuneConfig, where: str) -> None:
    """Checks that need the study: axis names and types, values the study accepts, metrics."""
    base = base_point(study)
    for axis, p in cfg.space.items():
        at = f"{where}: tune.space.{axis}"
        if axis not in SPACE_AXES:
            raise HarnessError(f"{at}: unknown axis {axis!r}; allowed: {', '.join(SPACE_AXES)}")
        if p.type == "per_block" and axis != "moe_layers":
            raise HarnessError(f"{at}.type: per_block is for moe_layers only")
        if p.type in ("int", "float") and axis in STR_AXES:
            raise HarnessError(f"{at}.type: {axis} takes names, so give choices, not low/high")
        if p.type == "float" and axis in INT_AXES:
            raise HarnessError(f"{at}.type: {axis} is a whole number: use int bounds "
                               f"(e.g. low: 1, high: 8), got {_num(p.low)}..{_num(p.high)}")
        router_tuned = "router" in cfg.space
        if not router_tuned and axis in ("num_experts", "slots_per_expert", "k",
                                         "capacity_factor", "moe_layers"):
            from harness import routers

            if not routers.get(str(base["router"])).uses(axis):
                raise HarnessError(f"{at}: router {base['router']!r} ignores {axis}; fix the "
                                   f"router (fixed.router) or tune it too (space.router)")
        for label, value in _probes(p, axis, study, base):
            try:
                study._spec({**base, **_apply({axis: value}, base, study)})
            except HarnessError as err:
                msg = str(err).split(": ", 2)[-1]
                raise HarnessError(f"{at}.{label}: {value!r} is not a valid {axis}: {msg}") \
                    from None
    if cfg.multi and cfg.pruner.name != "none":
        raise HarnessError(
            f"{where}: tune.pruner.name: Optuna prunes single-objective studies only, and this "
            f"study has {len(cfg.objectives)} objectives ({', '.join(cfg.metrics)}); set "
            f"pruner.name: none or keep one objective")
    if cfg.sampler.name == "nsga2" and not cfg.multi:
        raise HarnessError(f"{where}: tune.sampler.name: nsga2 is for several objectives; "
                           f"use tpe (or auto) for one")
    items = [("objectives", i, o.metric) for i, o in enumerate(cfg.objectives)]
    items += [("constraints", i, c.metric) for i, c in enumerate(cfg.constraints)]
    for section, i, metric in items:
        at = f"{where}: tune.{section}.{i}.metric"
        if metric not in METRICS:
            raise HarnessError(f"{at}: unknown metric {metric!r}; allowed: {', '.join(METRICS)}")
        needs = METRICS[metric]
        if needs and not (study.measure.enabled and getattr(study.measure, needs)):
            raise HarnessError(f"{at}: {metric} needs measure.enabled and measure.{needs}: true")
    if len(set(cfg.metrics)) != len(cfg.metrics):
        raise HarnessError(f"{where}: tune.objectives: a metric appears twice ({cfg.metrics})")
    if cfg.storage is not None:
        storage_kind(cfg.storage, f"{where}: tune.storage")


def _probes(p: Param, axis: str, study: Study, base: dict) -> list[tuple[str, Any]]:
    if p.type == "int":
        return [("low", int(p.low)), ("high", int(p.high))]
    if p.type == "float":
        return [("low", float(p.low)), ("high", float(p.high))]
    if p.type == "categorical":
        return [(f"choices.{i}", _choice(c)) for i, c in enumerate(p.choices)]
    blocks = p.blocks if p.blocks is not None else list(range(_depth(base)))
    return [("blocks", {b: True for b in blocks})]


def _choice(value: Any) -> Any:
    """Optuna stores None, bool, int, float and str; a placement list becomes '2,3'."""
    if isinstance(value, list):
        return ",".join(str(int(v)) for v in value)
    return value


def _depth(point: dict) -> int:
    from harness.models import MODEL_NAME, lookup_size

    m = MODEL_NAME.fullmatch(str(point["model"]))
    return lookup_size(m.group(1)).depth if m else 0


def base_point(study: Study) -> dict[str, Any]:
    """Axis defaults, then ``fixed:``, then the first value of each grid axis."""
    return {**AXES, **study.fixed, **{axis: values[0] for axis, values in study.grid.items()
                                      if values}}


def _apply(values: dict[str, Any], base: dict, study: Study) -> dict[str, Any]:
    """Axis values from sampled values: a per-block placement dict becomes block indices."""
    out = dict(values)
    blocks = out.get("moe_layers")
    if isinstance(blocks, dict):
        on = sorted(b for b, v in blocks.items() if v)
        if on:
            out["moe_layers"] = ",".join(map(str, on))
        else:  # no block gets an MoE: the dense backbone
            out["moe_layers"], out["router"] = "last_half", "dense"
    return out


def point_from_params(study: Study, cfg: TuneConfig, params: dict[str, Any]) -> dict[str, Any]:
    """The axis values of a trial's Optuna parameters (per-block flags folded back)."""
    base = base_point(study)
    values: dict[str, Any] = {}
    for axis, p in cfg.space.items():
        if p.type == "per_block":
            blocks = p.blocks if p.blocks is not None else list(range(_depth({**base, **values,
                                                                          **params})))
            values[axis] = {b: bool(params.get(BLOCK_PARAM.format(b), False)) for b in blocks}
        elif axis in params:
            values[axis] = params[axis]
    return {**base, **_apply(values, base, study)}


def trial_spec(study: Study, cfg: TuneConfig, params: dict[str, Any]) -> RunSpec:
    point = point_from_params(study, cfg, params)
    try:
        return study._spec(point)
    except HarnessError as err:
        shown = ", ".join(f"{k}={v}" for k, v in params.items())
        raise HarnessError(f"trial parameters {shown}: {str(err).split(': ', 2)[-1]}") from None


def suggest(trial, study: Study, cfg: TuneConfig) -> dict[str, Any]:
    """Ask Optuna for each axis; returns the trial's Optuna parameters."""
    base = base_point(study)
    params: dict[str, Any] = {}
    for axis, p in cfg.space.items():
        if p.type == "int":
            params[axis] = trial.suggest_int(axis, int(p.low), int(p.high),
                                             step=int(p.step or 1), log=p.log)
        elif p.type == "float":
            params[axis] = trial.suggest_float(axis, p.low, p.high, step=p.step, log=p.log)
        elif p.type == "categorical":
            params[axis] = trial.suggest_categorical(axis, [_choice(c) for c in p.choices])
        else:
            blocks = p.blocks if p.blocks is not None else list(range(_depth({**base,
                                                                              **params})))
            for b in blocks:
                name = BLOCK_PARAM.format(b)
                params[name] = trial.suggest_categorical(name, [False, True])
    return params


# --- storage ---------------------------------------------------------------------------------
def storage_kind(url: str, where: str = "--storage") -> str:
    """``journal`` or ``rdb``; anything else is a clear error."""
    if url.startswith("journal:") or url.endswith(".journal"):
        return "journal"
    if "://" in url:
        return "rdb"
    raise HarnessError(f"{where}: {url!r}: expected an SQLAlchemy URL (sqlite:///PATH, "
                       f"postgresql+psycopg2://USER@HOST:PORT/DB) or journal:PATH")


def dashboard_command(url: str) -> list[str]:
    """The ``optuna-dashboard`` command line that opens the storage ``url``."""
    if storage_kind(url) == "journal":
        return ["optuna-dashboard", "--storage-class", "JournalFileStorage", _journal_path(url)]
    return ["optuna-dashboard", _without_password(url)]


def _journal_path(url: str) -> str:
    return url.removeprefix("journal:")


def default_storages(root: Path) -> dict[str, str]:
    return {"rdb": f"sqlite:///{root / 'tune' / 'optuna.db'}",
            "journal": f"journal:{root / 'tune' / 'optuna.journal'}"}


def _pointer(store_dir: Path) -> Path:
    return store_dir / "tune" / "storage.json"


def resolve_storage(study: Study, cfg: TuneConfig, store_dir: Path, given: str | None,
                    executor: str) -> str:
    """--storage, else tune.storage, else the storage used last time, else a default file:
    SQLite for local workers, a journal file for SLURM workers (SQLite's locks are unsafe on
    network file systems)."""
    if given or cfg.storage:
        url = given or cfg.storage
        storage_kind(url)
        return url
    last = recorded_storage(store_dir)
    if last:
        return last
    defaults = default_storages(store_dir)
    for kind in ("rdb", "journal"):
        path = Path(defaults[kind].split(":", 1)[1].removeprefix("///"))
        if path.exists():
            return defaults[kind]
    return defaults["journal" if executor == "slurm" else "rdb"]


def recorded_storage(store_dir: Path) -> str | None:
    try:
        return json.loads(_pointer(store_dir).read_text())["storage"]
    except (FileNotFoundError, KeyError, json.JSONDecodeError):
        return None


def record_storage(store_dir: Path, url: str) -> None:
    """Remember the storage for ``--show`` and the report; a password is never written (libpq
    finds it in ~/.pgpass or $PGPASSWORD)."""
    from harness.store import atomic_write_json

    atomic_write_json(_pointer(store_dir), {"storage": _without_password(url)})


def _without_password(url: str) -> str:
    if storage_kind(url) != "rdb":
        return url
    from sqlalchemy.engine import URL, make_url

    p = make_url(url)
    if p.password is None:
        return url
    return URL.create(p.drivername, p.username, None, p.host, p.port, p.database,
                      p.query).render_as_string(hide_password=False)


def open_storage(url: str, cfg: TuneConfig, *, heartbeats: bool = True):
    import optuna

    if storage_kind(url) == "journal":
        from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

        path = _journal_path(url)
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
            heartbeat_stale_trial_callback=_retry_callback(cfg))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        try:
            return optuna.storages.RDBStorage(url, **kwargs)
        except Exception as err:  # noqa: BLE001 - bad URL, server down, driver missing
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise HarnessError(f"--storage {_without_password(url)}: cannot open: {first}") \
                from None


def _retry_callback(cfg: TuneConfig):
    import warnings

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
    import warnings

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


def open_study(study: Study, cfg: TuneConfig, url: str, *, worker: int = 0,
               resumed_at: int = 0, create: bool = False, heartbeats: bool = True):
    """The Optuna study named after the study, in ``url``; created if ``create``."""
    import optuna

    storage = open_storage(url, cfg, heartbeats=heartbeats)
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
                           f"{_without_password(url)}; run 'moe-harness tune' first") from None
    have = [d.name.lower() for d in ostudy.directions]
    if have != cfg.directions:
        raise HarnessError(
            f"{study.source or study.name}: tune.objectives: the storage "
            f"{_without_password(url)} holds study {study.name!r} with directions {have}, but "
            f"the file now asks {cfg.directions}; use another --storage or study name")
    if create:
        ostudy.set_user_attr("metrics", cfg.metrics)
        with warnings.catch_warnings():  # experimental in Optuna, and what the dashboard reads
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            ostudy.set_metric_names(cfg.metrics)  # the objectives' names in optuna-dashboard
    return ostudy


# --- trial bookkeeping -----------------------------------------------------------------------
def _states():
    from optuna.trial import TrialState

    return TrialState


def counts(trials) -> dict[str, int]:
    """complete / pruned / failed (ran and failed) / stale / running / waiting / finished."""
    S = _states()
    out = dict.fromkeys(("complete", "pruned", "failed", "stale", "running", "waiting"), 0)
    for t in trials:
        if t.state == S.COMPLETE:
            out["complete"] += 1
        elif t.state == S.PRUNED:
            out["pruned"] += 1
        elif t.state == S.FAIL:
            out["failed" if _ran(t) else "stale"] += 1
        elif t.state == S.RUNNING:
            out["running"] += 1
        elif t.state == S.WAITING:
            out["waiting"] += 1
    out["finished"] = out["complete"] + out["pruned"] + out["failed"]
    return out


def _ran(trial) -> bool:
    """A FAIL trial that ran to an outcome (its worker set one), not a stale or surplus one."""
    return trial.user_attrs.get("outcome") in ("failed", "invalid")


def _counted(trial) -> bool:
    S = _states()
    return trial.state in (S.COMPLETE, S.PRUNED) or (trial.state == S.FAIL and _ran(trial))


def _pid_alive(pid: int, started: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    if started is None:
        return True
    return _proc_start(pid) in (None, started)  # the same process, not a reused pid


def _proc_start(pid: int) -> str | None:
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


def recover_stale(ostudy, cfg: TuneConfig, kind: str) -> list[tuple[int, str]]:
    """Mark RUNNING trials of dead workers FAIL and queue their parameters again.

    RDB: Optuna's heartbeats (``fail_stale_trials``, whose callback re-queues). Journal: our
    own heartbeat attributes and pid check. Returns (trial number, reason) of those failed.
    """
    import warnings

    import optuna

    S = _states()
    if kind == "rdb":
        before = {t.number for t in ostudy.get_trials(deepcopy=False, states=(S.RUNNING,))}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(ostudy)
        after = {t.number for t in ostudy.get_trials(deepcopy=False, states=(S.RUNNING,))}
        return [(n, "heartbeat older than the grace period") for n in sorted(before - after)]
    failed = []
    storage = ostudy._storage
    retry = _retry_callback(cfg)
    for trial in ostudy.get_trials(deepcopy=True, states=(S.RUNNING,)):
        reason = stale_reason(trial, cfg.heartbeat.grace_s)
        if reason is None:
            continue
        try:
            storage.set_trial_user_attr(trial._trial_id, "stale", reason)
            storage.set_trial_state_values(trial._trial_id, state=S.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # finished, or another process got there first
        failed.append((trial.number, reason))
        if retry is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                retry(ostudy, storage.get_trial(trial._trial_id))
    return failed


class _Heartbeat:
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


class _Surplus(Exception):
    """Two workers started the last trial at the same moment: this one is not needed."""


class _TrialFailed(Exception):
    """The run failed (its record says why) or its parameters make no valid run."""


# --- the worker --------------------------------------------------------------------------------
def run_worker(study: Study, cfg: TuneConfig, url: str, trials: int, worker: int,
               results_root: str, resumed_at: int = 0, poll_s: float = 2.0) -> dict[str, int]:
    """One worker: take trials from the shared storage until ``trials`` are finished.

    While the finished plus the running trials make ``trials``, the worker waits instead of
    leaving: a running trial whose worker died turns stale (heartbeat or pid), is failed and
    queued again, and this worker then runs it. So the study always reaches ``trials``.
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    kind = storage_kind(url)
    ostudy = open_study(study, cfg, url, worker=worker, resumed_at=resumed_at)
    objective = functools.partial(_objective, study=study, cfg=cfg, kind=kind, trials=trials,
                                  results_root=results_root, worker=worker)
    ran = 0
    while True:
        recover_stale(ostudy, cfg, kind)
        c = counts(ostudy.get_trials(deepcopy=False))
        if c["finished"] >= trials:
            break
        if c["finished"] + c["running"] >= trials:
            time.sleep(poll_s)  # others are on the last trials: wait for them (or their death)
            continue
        ostudy.optimize(objective, n_trials=1, catch=(_TrialFailed, _Surplus),
                        gc_after_trial=True)
        ran += 1
    return {"worker": worker, "trials_run": ran}


def _objective(trial, *, study: Study, cfg: TuneConfig, kind: str, trials: int,
               results_root: str, worker: int):
    import optuna

    from harness.run import execute
    from harness.store import Store

    storage = trial.study._storage
    trial.set_user_attr("worker_host", socket.gethostname())
    trial.set_user_attr("worker_pid", os.getpid())
    trial.set_user_attr("worker_started", _proc_start(os.getpid()))
    trial.set_user_attr("worker", worker)
    trial.set_user_attr("heartbeat_at", time.time())
    trial.set_user_attr("slurm_job_id", _slurm_job_id())
    if trial.user_attrs.get("stale"):  # a retry inherits its stale predecessor's attributes
        trial.set_user_attr("stale", None)
    _check_surplus(trial, trials)
    params = suggest(trial, study, cfg)
    try:
        spec = trial_spec(study, cfg, params)
    except HarnessError as err:
        trial.set_user_attr("outcome", "invalid")
        trial.set_user_attr("error", str(err))
        raise _TrialFailed(str(err)) from None
    trial.set_user_attr("run_id", spec.run_id)
    trial.set_user_attr("spec", spec.model_config_().spec)
    store = Store(results_root, study.name)
    beat = _Heartbeat(storage, trial._trial_id, cfg.heartbeat.interval_s) \
        if kind == "journal" else None
    try:
        if beat:
            beat.__enter__()
        _wait_for_twin(trial, spec.run_id, cfg, kind)
        record = store.read(spec.run_id)
        if record and record.get("status") in ("ok", "diverged") and _values(record, cfg):
            trial.set_user_attr("reused_record", record.get("tune_trial", "grid"))
        else:
            record = execute(spec, results_root, on_progress=_reporter(trial, cfg),
                             tags={"tune_trial": trial.number, "tune_study": study.name})
    finally:
        if beat:
            beat.__exit__()
    trial.set_user_attr("status", record.get("status"))
    for name, value in _constraint_values(record, cfg).items():
        trial.set_constraint(name, value)
    if record.get("status") == "pruned":
        trial.set_user_attr("outcome", "pruned")
        raise optuna.TrialPruned(f"pruned at step {record.get('pruned_step')}")
    values = _values(record, cfg) if record.get("status") in ("ok", "diverged") else None
    if values is None:
        trial.set_user_attr("outcome", "failed")
        error = record.get("error") or f"no {', '.join(cfg.metrics)} in the record"
        trial.set_user_attr("error", str(error)[:500])
        raise _TrialFailed(error)
    trial.set_user_attr("outcome", "complete")
    return values if cfg.multi else values[0]


def _slurm_job_id() -> str | None:
    """As the record names it (``harness.run``: ``ARRAY_TASK`` for an array task)."""
    import harness.run

    named = getattr(harness.run, "slurm_job_id", None)
    return named() if named else os.environ.get("SLURM_JOB_ID")


def _check_surplus(trial, trials: int) -> None:
    """Exactly ``trials`` finished: a trial beyond them (a start race) fails as surplus."""
    S = _states()
    active = sorted(t.number for t in trial.study.get_trials(deepcopy=False)
                    if _counted(t) or t.state == S.RUNNING)
    if trial.number in active and active.index(trial.number) >= trials:
        trial.set_user_attr("outcome", "surplus")
        raise _Surplus(f"trial {trial.number}: {trials} trials are already finished or running")


def _wait_for_twin(trial, run_id: str, cfg: TuneConfig, kind: str) -> None:
    """Let an earlier RUNNING trial of the same run finish first (same work folder), or die:
    a twin whose worker died is failed here (nobody else may be free to notice)."""
    S = _states()
    while True:
        recover_stale(trial.study, cfg, kind)
        twins = [t for t in trial.study.get_trials(deepcopy=False, states=(S.RUNNING,))
                 if t.user_attrs.get("run_id") == run_id and t.number < trial.number]
        if not twins:
            return
        time.sleep(min(2.0, cfg.heartbeat.interval_s))


def _values(record: dict, cfg: TuneConfig) -> list[float] | None:
    values = []
    for metric in cfg.metrics:
        v = record.get(metric)
        if v is None or not isinstance(v, (int, float)) or math.isnan(v):
            return None
        values.append(float(v))
    return values


def _constraint_values(record: dict, cfg: TuneConfig) -> dict[str, float]:
    """Optuna's convention: a constraint holds when its value is <= 0 (unmeasured: inf)."""
    out = {}
    for c in cfg.constraints:
        v = record.get(c.metric)
        if c.max is not None:
            out[f"{c.metric}<={c.max:g}"] = math.inf if v is None else float(v) - c.max
        if c.min is not None:
            out[f"{c.metric}>={c.min:g}"] = math.inf if v is None else c.min - float(v)
    return out


def _reporter(trial, cfg: TuneConfig):
    """``on_progress`` for ``execute``: report the pruner's metric (a running mean) at each
    progress step and raise ``harness.run.Pruned`` when the pruner says so. Single objective
    only (Optuna prunes nothing else); the value is negated when its direction is not the
    objective's, e.g. the training loss of a study that maximises accuracy."""
    if cfg.multi or cfg.pruner.name == "none":
        return None
    from harness.run import Pruned

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


# --- the driver --------------------------------------------------------------------------------
def _executor(name: str, study: Study, folder: Path, workers: int, timeout_min: int,
              results_root: Path):
    import submitit

    if name == "debug":
        return submitit.DebugExecutor(folder=folder)
    if name == "local":
        ex = submitit.LocalExecutor(folder=folder)
        ex.update_parameters(timeout_min=timeout_min)
        return ex
    if name == "slurm":
        from harness.store import Store
        from runners.slurm import SlurmRunner

        # the study's executor.slurm settings, as for `run`; one task (one worker) per job
        ex = SlurmRunner(study, Store(results_root, study.name)).executor()
        ex.update_parameters(name=f"tune-{study.name}", tasks_per_node=1,
                             slurm_array_parallelism=min(workers,
                                                         study.executor.slurm.array_parallelism))
        return ex
    raise HarnessError(f"--executor {name!r}: allowed: debug, local, slurm")


def tune(study: Study, *, results_root: Path, trials: int | None = None,
         workers: int | None = None, executor: str | None = None, storage: str | None = None,
         wait: bool | None = None, show_progress: bool = True, console=None,
         timeout_min: int = 24 * 60) -> dict[str, Any]:
    """Run (or continue) the study's tuning until ``trials`` trials are finished.

    Returns a summary: storage, counts before and after, stale trials recovered, job ids and
    worker errors. Local workers are always waited for; SLURM workers only with ``wait``.
    """
    import optuna
    from rich.console import Console

    from harness.lifeline import Tethered
    from harness.store import Store
    from runners.local import sigint_ignored, stop_local_jobs, thread_env

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    console = console or Console(stderr=True)
    cfg = parse(study)
    where = study.source or study.name
    trials = trials or cfg.trials
    if not trials:
        raise HarnessError(f"{where}: --trials: missing; give --trials N (or tune.trials)")
    workers = workers or cfg.workers
    executor = executor or study.executor.name
    if executor not in ("debug", "local", "slurm"):
        raise HarnessError(f"--executor {executor!r}: allowed: debug, local, slurm")
    store = Store(results_root, study.name)
    url = resolve_storage(study, cfg, store.dir, storage, executor)
    kind = storage_kind(url)
    if executor == "slurm" and url.startswith("sqlite:"):
        console.print("[yellow]warning[/]: SQLite on a shared file system is unsafe with "
                      "workers on several nodes; prefer journal:PATH or a PostgreSQL URL")
    ostudy = open_study(study, cfg, url, create=True)
    record_storage(store.dir, url)
    summary: dict[str, Any] = {"storage": _without_password(url), "kind": kind,
                               "trials": trials, "workers": workers, "executor": executor,
                               "stale": recover_stale(ostudy, cfg, kind), "job_ids": [],
                               "worker_errors": []}
    before = counts(ostudy.get_trials(deepcopy=False))
    summary["before"] = before
    for number, reason in summary["stale"]:
        console.print(f"[yellow]trial {number}[/] was left RUNNING ({reason}): marked failed"
                      + (", its parameters queued again" if cfg.heartbeat.retries else ""))
    if before["finished"] >= trials:
        summary["after"] = before
        console.print(f"{study.name}: {before['finished']} of {trials} trials already finished "
                      f"({_without_password(url)}); nothing to do")
        return summary
    workers = max(1, min(workers, trials - before["finished"]))
    folder = store.dir / "tune" / "submitit" / "%j"
    ex = _executor(executor, study, folder, workers, timeout_min, store.root)
    console.print(f"{study.name}: {before['finished']} of {trials} trials finished; "
                  f"{workers} {executor} worker{'s' if workers > 1 else ''} on "
                  f"{_without_password(url)}")
    threads = max(1, (os.cpu_count() or 1) // workers)
    worker_fn = functools.partial(run_worker, study, cfg, url, trials,
                                  results_root=str(store.root),
                                  resumed_at=len(ostudy.get_trials(deepcopy=False)))
    if executor == "local":  # workers die with this process; Ctrl-C reaches this one alone
        worker_fn = Tethered(worker_fn)
    with thread_env(threads), sigint_ignored():
        jobs = ex.map_array(worker_fn, list(range(workers)))
    summary["job_ids"] = [str(j.job_id) for j in jobs]
    if executor == "slurm" and not wait:
        console.print(f"submitted SLURM job{'s' if len(jobs) > 1 else ''} "
                      f"{', '.join(summary['job_ids'])}; follow with "
                      f"'moe-harness tune {where} --show'")
        summary["after"] = before
        return summary
    try:
        _follow(ostudy, jobs, trials, before, console, show_progress, executor == "debug")
    except KeyboardInterrupt:
        if executor == "local":
            stop_local_jobs(jobs)
        for job in jobs:
            job.cancel(check=False)
        console.print("interrupted: workers cancelled; their running trials end FAILED; "
                      "'moe-harness tune' again continues the study")
        raise
    for i, job in enumerate(jobs):
        try:
            job.result()
        except Exception as err:  # noqa: BLE001 - killed, timed out, crashed: say so, go on
            line = _job_error(err)
            summary["worker_errors"].append(f"worker {i} (job {job.job_id}): {line}")
            console.print(f"[red]worker {i}[/] (job {job.job_id}) ended early: {line[:300]} "
                          f"(log: {job.paths.stderr})")
    del jobs, job  # submitit's LocalJob.__del__ must run now, not at interpreter exit
    gc.collect()
    late = recover_stale(ostudy, cfg, kind)
    for number, reason in late:
        console.print(f"[yellow]trial {number}[/] was left RUNNING ({reason}): marked failed"
                      + (", its parameters queued again" if cfg.heartbeat.retries else ""))
    summary["stale"] += late
    after = counts(ostudy.get_trials(deepcopy=False))
    summary["after"] = after
    console.print(f"{study.name}: {after['finished']} of {trials} trials finished "
                  f"({after['complete']} complete, {after['pruned']} pruned, {after['failed']} "
                  f"failed; {after['stale']} stale, {after['waiting']} queued, "
                  f"{after['running']} running) -> records in {store.runs_dir}")
    return summary


def _job_error(err: Exception) -> str:
    """One line for a worker job that raised or died."""
    text = [t.strip() for t in str(err).splitlines() if t.strip()]
    if "has not produced any output" in str(err):
        state = str(err).split("(state: ", 1)[-1].split(")", 1)[0]
        return f"the worker process ended without a result ({state.lower()}): killed?"
    return text[-1] if text else type(err).__name__


def _follow(ostudy, jobs, trials: int, before: dict, console, enabled: bool,
            debug: bool) -> None:
    """Show trials finished / running while the workers run (debug workers run in here)."""
    from rich import progress as rp

    if debug:
        for job in jobs:
            try:
                job.result()
            except Exception:  # noqa: BLE001 - reported by the caller
                pass
        return
    progress = rp.Progress(rp.TextColumn("trials"), rp.BarColumn(), rp.MofNCompleteColumn(),
                           rp.TextColumn("{task.fields[info]}"), rp.TimeElapsedColumn(),
                           console=console, disable=not enabled)
    with progress:
        task = progress.add_task("trials", total=trials, completed=before["finished"], info="")
        all_done_at = None
        while True:
            running = [j for j in jobs if not j.done()]
            c = counts(ostudy.get_trials(deepcopy=False))
            progress.update(task, completed=min(c["finished"], trials),
                            info=f"complete {c['complete']}  pruned {c['pruned']}  "
                                 f"failed {c['failed']}  running {c['running']}")
            if not running:
                return
            if c["finished"] >= trials and not c["running"]:
                # the workers leave now; SLURM without accounting may never say "done"
                all_done_at = all_done_at or time.monotonic()
                if time.monotonic() - all_done_at > 120:
                    return
            time.sleep(2.0)


# --- results -------------------------------------------------------------------------------------
def load_tuning(study: Study, results_root: Path, storage: str | None = None):
    """(config, Optuna study) of an existing tuning, or None when no storage exists yet."""
    from harness.store import Store

    cfg = parse(study)
    store = Store(results_root, study.name)
    url = storage or cfg.storage or recorded_storage(store.dir)
    if url is None:
        for candidate in default_storages(store.dir).values():
            path = Path(candidate.split(":", 1)[1].removeprefix("///"))
            if path.exists():
                url = candidate
                break
    if url is None:
        return None
    if storage_kind(url) == "journal" and not Path(_journal_path(url)).exists():
        return None
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        return None
    try:
        return cfg, open_study(study, cfg, url, heartbeats=False), url
    except HarnessError:
        if storage:
            raise
        return None


def best_trials(ostudy, cfg: TuneConfig) -> list:
    """The best trial (one objective) or the Pareto set (several), feasible ones only."""
    S = _states()
    done = [t for t in ostudy.get_trials(deepcopy=False, states=(S.COMPLETE,))]
    if not done:
        return []
    if cfg.constraints:
        done = [t for t in done if all(v <= 0 for v in t.constraints.values())]
    if not cfg.multi:
        sign = 1 if cfg.directions[0] == "maximize" else -1
        return [max(done, key=lambda t: sign * t.values[0])] if done else []
    return _pareto(done, cfg.directions)


def _pareto(trials: list, directions: list[str]) -> list:
    signs = [1 if d == "maximize" else -1 for d in directions]

    def dominates(a, b) -> bool:
        va = [s * v for s, v in zip(signs, a.values, strict=True)]
        vb = [s * v for s, v in zip(signs, b.values, strict=True)]
        return all(x >= y for x, y in zip(va, vb, strict=True)) and any(
            x > y for x, y in zip(va, vb, strict=True))

    front = [t for t in trials if not any(dominates(o, t) for o in trials if o is not t)]
    return sorted(front, key=lambda t: [-s * v for s, v in zip(signs, t.values, strict=True)])


def importances(ostudy, cfg: TuneConfig) -> dict[str, dict[str, float]]:
    """Parameter importances (fANOVA) per objective; empty when too few trials."""
    import warnings

    import optuna

    S = _states()
    done = ostudy.get_trials(deepcopy=False, states=(S.COMPLETE,))
    if len(done) < 2:
        return {}
    out = {}
    for i, metric in enumerate(cfg.metrics):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out[metric] = optuna.importance.get_param_importances(
                    ostudy, target=lambda t, i=i: t.values[i],
                    evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
        except (ValueError, RuntimeError):
            continue  # e.g. every parameter constant so far
    return out


def describe_params(study: Study, cfg: TuneConfig, params: dict[str, Any]) -> str:
    """A trial's values of the tuned axes, as its run uses them ('-': unused by its router)."""
    try:
        spec = trial_spec(study, cfg, params)
    except HarnessError:
        return " ".join(f"{k}={_fmt(v)}" for k, v in params.items())
    shown = []
    for axis in cfg.space:
        value = getattr(spec.train, axis) if axis in TRAIN_AXES else getattr(spec, axis)
        if axis == "moe_layers" and spec.router == "dense":
            value = "none (dense)"
        shown.append(f"{axis}={'-' if value is None else _fmt(value)}")
    return " ".join(shown)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return format(value, ".3g")
    return str(value)


def show(study: Study, results_root: Path, storage: str | None = None, console=None) -> None:
    """Print the best trial or the Pareto set, and parameter importances (rich tables)."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    loaded = load_tuning(study, results_root, storage)
    if loaded is None:
        raise HarnessError(f"{study.source or study.name}: no tuning storage yet for "
                           f"{study.name!r}; run 'moe-harness tune {study.source} --trials N'")
    cfg, ostudy, url = loaded
    c = counts(ostudy.get_trials(deepcopy=False))
    console.print(f"[bold]{study.name}[/]: {c['finished']} trials finished ({c['complete']} "
                  f"complete, {c['pruned']} pruned, {c['failed']} failed), {c['stale']} stale "
                  f"(re-queued), {c['running']} running, {c['waiting']} queued; storage "
                  f"{_without_password(url)}")
    console.print(f"Browse it: {shlex.join(dashboard_command(url))}", soft_wrap=True)
    best = best_trials(ostudy, cfg)
    title = ("Best trial" if not cfg.multi else
             f"Pareto set ({len(best)} trial{'s' if len(best) != 1 else ''}): " + ", ".join(
                 f"{o.direction[:3]} {o.metric}" for o in cfg.objectives))
    if cfg.constraints:
        title += " (feasible: " + ", ".join(
            f"{k.metric} {'<= ' + _fmt(k.max) if k.max is not None else ''}"
            f"{' >= ' + _fmt(k.min) if k.min is not None else ''}" for k in cfg.constraints) + ")"
    table = Table(title=title, title_justify="left")
    for col in ("trial", *cfg.metrics, "parameters", "run_id"):
        table.add_column(col, justify="right" if col in cfg.metrics else "left")
    for t in best:
        table.add_row(str(t.number), *[format(v, ".4g") for v in t.values],
                      describe_params(study, cfg, t.params), str(t.user_attrs.get("run_id")))
    if best:
        console.print(table)
    else:
        console.print("No complete" + (" feasible" if cfg.constraints else "") + " trial yet.")
    imp = importances(ostudy, cfg)
    if imp:
        names = sorted({p for d in imp.values() for p in d},
                       key=lambda p: -max(d.get(p, 0.0) for d in imp.values()))
        itable = Table(title="Parameter importances (fANOVA, share of each objective's "
                             "variance)", title_justify="left")
        itable.add_column("parameter")
        for metric in imp:
            itable.add_column(metric, justify="right")
        for name in names:
            itable.add_row(name, *[format(imp[m].get(name, 0.0), ".3f") for m in imp])
        console.print(itable)
    else:
        console.print("Parameter importances need at least 2 complete trials.")
