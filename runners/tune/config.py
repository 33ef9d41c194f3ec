"""The ``tune:`` section of a study: its schema (``runners.tune.schema``) and the checks that
need the study itself.

``parse(study)`` returns the validated :class:`TuneConfig`, or raises one HarnessError line
naming the file and the field (``tune.space.lr.low: ...``).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ValidationError

import harness.spec.study as study_axes
<<<<<<< HEAD
from harness.errors import HarnessError
from harness.spec import routers
from harness.spec.study import AXES, TRAIN_AXES, Study
=======
from harness.spec import routers
from harness.errors import HarnessError
from harness.spec.study import AXES, TRAIN_AXES, Study
from runners.tune.schema import (
    METRICS,
    Constraint,
    Objective,
    Param,
    TuneConfig,
    num,
)
>>>>>>> runners
from runners.tune.space import apply_values, base_point, choice, depth
from runners.tune.storage import storage_kind

# Axes whose values are whole numbers, or names (low/high make no sense for them).
INT_AXES = (*study_axes.INT_AXES, "steps", "batch_size", "warmup_steps")
STR_AXES = (*study_axes.STR_AXES, "moe_layers")
SPACE_AXES = (*AXES, *TRAIN_AXES)

<<<<<<< HEAD
# Record columns an objective or constraint may name, with the measurement each needs.
METRICS: dict[str, str | None] = {
    "test_accuracy": None, "test_loss": None, "fewshot_accuracy": None,
    "params_total": None, "params_active": None,
    "gflops_per_image": "flops", "train_exaflops": "flops",
    "train_images_per_s": "time", "infer_images_per_s": "time", "infer_latency_ms": "time",
    "train_step_ms": "time", "peak_memory_mb": "memory", "train_time_s": None,
}
# What a trial can report while it trains, for pruning: name -> (key in the progress dicts of
# harness.runtime.train.fit, higher is better). fit reports the training loss every few steps; the
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

=======
>>>>>>> runners

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
                               f"(e.g. low: 1, high: 8), got {num(p.low)}..{num(p.high)}")
        if "router" not in cfg.space and (axis in routers.FIELDS or axis == "moe_layers"):
            if not routers.get(str(base["router"])).uses(axis):
                raise HarnessError(f"{at}: router {base['router']!r} ignores {axis}; fix the "
                                   f"router (fixed.router) or tune it too (space.router)")
        for label, value in _probes(p, base):
            try:
                study.run_spec({**base, **apply_values({axis: value})})
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


def _probes(p: Param, base: dict) -> list[tuple[str, Any]]:
    if p.type == "int":
        return [("low", int(p.low)), ("high", int(p.high))]
    if p.type == "float":
        return [("low", float(p.low)), ("high", float(p.high))]
    if p.type == "categorical":
        return [(f"choices.{i}", choice(c)) for i, c in enumerate(p.choices)]
    blocks = p.blocks if p.blocks is not None else list(range(depth(base)))
    return [("blocks", {b: True for b in blocks})]
