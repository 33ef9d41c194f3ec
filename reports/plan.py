"""``moe-harness plan STUDY --target-quality Q``: which configuration of each router the fitted
curves predict reaches Q at the least training compute.

For each router, the curve of quality against training compute (``train_exaflops``, ours:
3 x forward FLOPs x images) is fitted over the study's finished runs
(:mod:`reports.analyses.scaling`). The candidates are the study's own grid points (with
``--set`` overrides: raise ``train.steps`` to plan a bigger budget), each costed by the dry
run's closed form (:mod:`harness.cost.estimate`: GFLOP/img, training exaFLOPs, estimated
GPU-hours). The answer is the cheapest candidate whose predicted quality reaches Q, with the
prediction's 95% interval, and the training compute the curve needs to reach Q. Everything
here is a PREDICTION from a fit; a candidate outside the costs the curve was fitted on is
marked as an extrapolation. Every curve is also refitted without its costliest configuration
(:mod:`reports.analyses.heldout`): a curve that mispredicts it gets a warning on its row
("held-out check FAILED"). Memory: the memory plan's estimated peak of the chosen run.

:func:`plan_rows` returns the plan as data (:class:`PlanRow`); :func:`print_plan` and
:func:`plan_json` are its console table and its JSON.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import polars as pl

from harness.cost.estimate import RunCost, gpu_hours, study_costs
from harness.cost.memory import on_gpu
from harness.errors import HarnessError
from harness.spec.study import Study
from reports.aggregate import aggregate, primary_quality
from reports.analyses.fits import row_names
from reports.analyses.heldout import curve_checks, warnings_by_router
from reports.analyses.scaling import Curve, analyse, quality_of
from reports.labels import router_name
from reports.metrics import METRICS, QUALITY_AXES

COST = "train_exaflops"


@dataclass(frozen=True)
class PlanRow:
    router: str
    quality: str
    target: float
    fit: str  # the curve's kind, or why there is none
    needed_exaflops: float | None = None  # where the curve reaches the target
    needed_interval: tuple[float, float] | None = None
    needed_gpu_hours: float | None = None
    spec: str | None = None  # the cheapest candidate predicted to reach the target
    run_id: str | None = None
    predicted: float | None = None
    predicted_interval: tuple[float, float] | None = None
    extrapolated: bool = False
    gflops_per_image: float | None = None
    train_exaflops: float | None = None
    gpu_hours: float | None = None
    memory: str = "-"
    note: str = ""
    heldout: str = ""  # the curve's held-out check, when it flags the fit (else empty)


def _check_target(quality: str, target: float, source: str) -> None:
    metric = quality_of(quality)
    if not math.isfinite(target):
        raise HarnessError(f"{source}: --target-quality {target:g}: give a finite number")
    if metric.ceiling is not None and not 0 < target < metric.ceiling:
        raise HarnessError(f"{source}: --target-quality {target:g} is outside "
                           f"{metric.label}'s range: give a value between 0 and "
                           f"{metric.ceiling:g} (exclusive)")
    if metric.ceiling is None and target <= 0:
        raise HarnessError(f"{source}: --target-quality {target:g}: {metric.label} must be > 0")


def _candidate_key(cost: RunCost, spec) -> tuple:
    t = spec.train
    return (cost.spec, t.steps, t.batch_size, t.lr)  # the seed does not change a prediction


def _best_candidate(curve: Curve, target: float, costs: list[tuple[RunCost, object]]):
    """The cheapest (by training compute) candidate predicted to reach ``target``."""
    reaching = []
    for cost, spec in costs:
        point, lo, hi = curve.quality_at(cost.train_exaflops)
        value = float(point[0])
        better = value <= target if curve.quality.lower_is_better else value >= target
        if better:
            reaching.append((cost.train_exaflops, cost, spec, value, float(lo[0]),
                             float(hi[0])))
    return min(reaching, key=lambda r: r[0]) if reaching else None


def plan_rows(study: Study, frame: pl.DataFrame, target: float, quality: str | None = None,
              source: str = "plan") -> list[PlanRow]:
    """One :class:`PlanRow` per router of the study's finished runs."""
    agg = aggregate(frame)
    quality = quality or primary_quality(agg)
    if quality is None:
        raise HarnessError(f"{source}: no finished run with a quality ({', '.join(QUALITY_AXES)})"
                           " yet: run the study first")
    if quality not in METRICS or METRICS[quality].kind != "quality":
        raise HarnessError(f"{source}: --quality {quality!r} is not a quality metric; "
                           f"choose one of {', '.join(QUALITY_AXES)}")
    if f"{COST}_mean" not in agg.columns or "router" not in agg.columns:
        raise HarnessError(f"{source}: no finished run with {COST} yet: run the study first")
    _check_target(quality, target, source)
    analysis = analyse(agg, quality_of(quality), costs=(COST,), names=row_names(agg),
                       with_matches=False)
    warn = warnings_by_router(curve_checks(analysis))
    specs = study.expand()
    gpu = {s.run_id for s in specs if on_gpu(study, s)}  # GPU-hours of GPU runs only
    candidates: dict[str, dict[tuple, tuple[RunCost, object]]] = {}
    for cost, spec in zip(study_costs(study, specs), specs, strict=True):
        candidates.setdefault(spec.router, {}).setdefault(_candidate_key(cost, spec),
                                                          (cost, spec))
    rows = []
    for curve in analysis.curves:
        base = {"router": curve.group, "quality": quality, "target": target,
                "heldout": warn.get(curve.group, "")}
        if not curve.fitted or curve.params[2] <= 0:
            rows.append(PlanRow(**base, fit="none", note=curve.note or ""))
            continue
        needed, lo, hi = curve.cost_for(target)
        finite = math.isfinite(needed)
        row = {**base, "fit": curve.kind,
               "needed_exaflops": needed if finite else None,
               "needed_interval": (lo, hi),
               "needed_gpu_hours": gpu_hours(needed * 1e18, study.estimate)
               if finite and gpu else None}
        best = _best_candidate(curve, target, list(candidates.get(curve.group, {}).values()))
        if best is None:
            n = len(candidates.get(curve.group, {}))
            rows.append(PlanRow(**row, note=(
                f"none of the study's {n} {router_name(curve.group)} configurations is "
                "predicted to reach the target" if finite else
                f"the curve levels off before the target (floor "
                f"{curve.quality.value(curve.params[0]):.4g})")))
            continue
        exa, cost, spec, value, vlo, vhi = best
        c_lo, c_hi = curve.cost_range
        rows.append(PlanRow(
            **row, spec=cost.spec, run_id=spec.run_id, predicted=value,
            predicted_interval=(vlo, vhi), extrapolated=not c_lo <= exa <= c_hi,
            gflops_per_image=cost.gflops_per_image, train_exaflops=cost.train_exaflops,
            gpu_hours=cost.gpu_hours if spec.run_id in gpu else None,
            memory=_memory(study, spec),
            note=f"steps {spec.train.steps:,}, batch {spec.train.batch_size:,}, "
                 f"lr {spec.train.lr:g}"))
    return rows


def print_plan(rows: list[PlanRow], study: Study, console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    from harness.cost.estimate import describe

    console = console or Console()
    if not rows:
        console.print("No router with finished runs.")
        return
    q = rows[0]
    table = Table(title=f"{study.name}: PREDICTED cheapest configuration per router to reach "
                        f"{METRICS[q.quality].label} {q.target:g} (fits of quality against "
                        f"training compute; 95% intervals)", title_justify="left")
    for col in ("router", "fit", "train EF needed [95%]", "configuration", "predicted [95%]",
                "GFLOP/img", "train EF", "GPU-h est.", "memory", "note"):
        table.add_column(col, justify="right" if col in ("GFLOP/img", "train EF",
                                                         "GPU-h est.") else "left")

    def num(v: float | None) -> str:
        return "-" if v is None else f"{v:.3g}"

    for r in rows:
        needed = "-"
        if r.needed_interval is not None:
            lo, hi = r.needed_interval
            needed = f"{num(r.needed_exaflops)} [{num(lo)}, {num(hi)}]"
            if r.needed_gpu_hours is not None:
                needed += f" ~{num(r.needed_gpu_hours)} GPU-h"
        predicted = "-"
        if r.predicted is not None:
            lo, hi = r.predicted_interval
            predicted = f"{r.predicted:.4g} [{lo:.4g}, {hi:.4g}]"
            if r.extrapolated:
                predicted += " (extrapolated)"
        table.add_row(router_name(r.router), r.fit, needed, r.spec or "-", predicted,
                      num(r.gflops_per_image), num(r.train_exaflops), num(r.gpu_hours),
                      r.memory, r.note)
    console.print(table)
    for r in rows:
        if r.heldout:
            console.print(f"{router_name(r.router)}: held-out check FAILED: {r.heldout}",
                          style="bold red")
    console.print("Predictions from fitted curves, not measurements. " + describe(study.estimate)
                  + " Memory: the memory plan's estimated peak per GPU (per process on "
                  "CPU) of the chosen configuration (docs/memory.md).")


def _memory(study: Study, spec) -> str:
    """The chosen run's estimated peak memory per GPU (per process on CPU), from the memory
    plan (``harness.cost.memory``, docs/memory.md)."""
    from harness.cost.memory import on_gpu, run_plan

    where = "GPU" if on_gpu(study, spec) else "process"
    return f"{run_plan(study, spec).peak_gb:.3g} GB/{where}"


def plan_json(rows: list[PlanRow]) -> list[dict]:
    """Rows as JSON types (an infinite cost, "never reached", becomes null)."""
    def clean(v):
        if isinstance(v, float):
            return v if math.isfinite(v) else None
        if isinstance(v, (tuple, list)):
            return [clean(x) for x in v]
        return v

    return [{**{k: clean(v) for k, v in asdict(r).items()}, "prediction": True} for r in rows]
