"""The ``tune:`` section's schema: the search space, objectives, constraints, sampler,
pruner and heartbeats, as pydantic models; and the record columns an objective may name.

The checks that need the study itself (axis names, values it accepts) are ``config.parse``'s.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

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
                raise ValueError(f"low: must be <= high ({num(self.high)}), got {num(self.low)}")
            if self.log and self.low <= 0:
                raise ValueError(f"low: a log axis needs low > 0, got {num(self.low)}")
            if self.log and self.step is not None:
                raise ValueError("step: Optuna does not combine step with log: true")
            if self.step is not None and self.step <= 0:
                raise ValueError(f"step: must be > 0, got {num(self.step)}")
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


def num(value: float | None) -> str:
    return "None" if value is None else format(value, "g")
