"""The ``tune:`` section of a study: its schema (``runners.tune.schema``) and the checks that
need the study itself.

``parse(study)`` returns the validated :class:`TuneConfig`, or raises one HarnessError line
naming the file and the field (``tune.space.lr.low: ...``).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ValidationError

import harness.spec.study as study_axes
from harness.errors import HarnessError
from harness.spec import routers
from harness.spec.study import AXES, TRAIN_AXES, Study
from runners.tune.schema import (
    METRICS,
    Constraint,
    Objective,
    Param,
    TuneConfig,
    num,
)
from runners.tune.space import apply_values, base_point, choice, depth
from runners.tune.storage import storage_kind

# Axes whose values are whole numbers, or names (low/high make no sense for them).
INT_AXES = (*study_axes.INT_AXES, "steps", "batch_size", "warmup_steps")
STR_AXES = (*study_axes.STR_AXES, "moe_layers")
SPACE_AXES = (*AXES, *TRAIN_AXES)


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
