"""The search space: Optuna parameters of a trial <-> the study's axis values and RunSpec.

A trial's point is the study's base point (axis defaults, then ``fixed:``, then the first
value of each grid axis) with the sampled values on top; ``Study.run_spec`` validates it as
it validates a grid point. A per-block placement is one on/off parameter per block
(``moe_block_N``); no block on means the dense backbone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from harness.errors import HarnessError
from harness.spec.study import AXES, TRAIN_AXES, RunSpec, Study

if TYPE_CHECKING:
    from runners.tune.schema import TuneConfig

BLOCK_PARAM = "moe_block_{}"  # Optuna parameter names of a per-block placement


def choice(value: Any) -> Any:
    """Optuna stores None, bool, int, float and str; a placement list becomes '2,3'."""
    if isinstance(value, list):
        return ",".join(str(int(v)) for v in value)
    return value


def depth(point: dict) -> int:
    """The number of blocks of the point's model (0 for a name that is not a ViT)."""
    from harness.spec.model import MODEL_NAME, lookup_size

    m = MODEL_NAME.fullmatch(str(point["model"]))
    return lookup_size(m.group(1)).depth if m else 0


def base_point(study: Study) -> dict[str, Any]:
    """Axis defaults, then ``fixed:``, then the first value of each grid axis."""
    return {**AXES, **study.fixed, **{axis: values[0] for axis, values in study.grid.items()
                                      if values}}


def apply_values(values: dict[str, Any]) -> dict[str, Any]:
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
            blocks = p.blocks if p.blocks is not None else list(range(depth({**base, **values,
                                                                         **params})))
            values[axis] = {b: bool(params.get(BLOCK_PARAM.format(b), False)) for b in blocks}
        elif axis in params:
            values[axis] = params[axis]
    return {**base, **apply_values(values)}


def trial_spec(study: Study, cfg: TuneConfig, params: dict[str, Any]) -> RunSpec:
    point = point_from_params(study, cfg, params)
    try:
        return study.run_spec(point)
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
            params[axis] = trial.suggest_categorical(axis, [choice(c) for c in p.choices])
        else:
            blocks = p.blocks if p.blocks is not None else list(range(depth({**base,
                                                                             **params})))
            for b in blocks:
                name = BLOCK_PARAM.format(b)
                params[name] = trial.suggest_categorical(name, [False, True])
    return params


def describe_params(study: Study, cfg: TuneConfig, params: dict[str, Any]) -> str:
    """A trial's values of the tuned axes, as its run uses them ('-': unused by its router)."""
    try:
        spec = trial_spec(study, cfg, params)
    except HarnessError:
        return " ".join(f"{k}={short(v)}" for k, v in params.items())
    shown = []
    for axis in cfg.space:
        value = getattr(spec.train, axis) if axis in TRAIN_AXES else getattr(spec, axis)
        if axis == "moe_layers" and spec.router == "dense":
            value = "none (dense)"
        shown.append(f"{axis}={'-' if value is None else short(value)}")
    return " ".join(shown)


def short(value: Any) -> str:
    """A value for a table: floats with 3 significant digits."""
    if isinstance(value, float):
        return format(value, ".3g")
    return str(value)
