"""Planned against measured: what the closed forms said a run would cost, beside what it did.

For every record that has both sides (one row per record; ``None`` where a side is missing):

* **Training memory**: the memory plan written into the record when it started
  (``estimated_peak_memory_gb``, :mod:`harness.cost.memory`, per rank, its layout and
  micro-batch) against the measured peak of training (``peak_memory_rank_mb``). On a GPU that
  is ``torch.cuda.max_memory_allocated``, what the plan models; on a CPU it is the process's
  peak resident set (interpreter, libraries and data included), so ``memory_comparable`` is
  False and the ratio says little.
* **Measurement-step memory**: the same plan for the cost measurement's one training step
  (``measure.batch_size`` images, its precision, one process), against ``peak_memory_mb``
  (live tensors plus the allocator's peak; comparable on a CPU as well).
* **FLOPs**: the closed form (:func:`harness.cost.flops.analytic_flops`) against the count of
  the built model (``gflops_per_image`` when ``flops_counter`` is ``fvcore``, ``torch`` or
  ``meta``; an analytic record has nothing to compare).
* **Training time**: the dry run's estimate (training FLOPs at the study's
  ``estimate.peak_tflops`` x ``estimate.utilization``, :func:`harness.cost.estimate.gpu_hours`,
  divided over the run's GPUs) against ``train_time_s`` (training steps only, as the estimate),
  with the utilisation the measurement implies; and, given a calibration
  (:func:`harness.cost.estimate.calibrate`), the calibrated prediction.

Ratios are measured / planned (1: the plan was right; 2: it took twice what was planned).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

import polars as pl

from harness.cost.estimate import Calibration, gpu_hours, pick_calibration
from harness.cost.flops import analytic_flops
from harness.cost.memory import GB, estimate
from harness.spec.study import EstimateConfig
from reports.analyses.specs import model_config

MIB = 2**20
CUDA_METHOD = "torch.cuda.max_memory_allocated"
PLANNED_COLUMNS = (
    "planned_peak_memory_gb", "measured_peak_memory_gb", "memory_ratio", "memory_comparable",
    "planned_step_memory_gb", "measured_step_memory_gb", "step_memory_ratio",
    "planned_gflops_per_image", "measured_gflops_per_image", "flops_ratio", "flops_counter",
    "planned_train_s", "measured_train_s", "time_ratio", "assumed_utilization",
    "measured_utilization", "calibrated_train_s", "calibrated_ratio",
)
"""The columns :func:`planned_rows` adds to ``run_id``, ``spec`` and ``device`` (for the
report's section and the exported tables)."""
#: (label, planned column, measured column, ratio column) of :func:`planned_summary`.
QUANTITIES = (
    ("training peak memory (GB per rank)", "planned_peak_memory_gb", "measured_peak_memory_gb",
     "memory_ratio"),
    ("measurement-step memory (GB)", "planned_step_memory_gb", "measured_step_memory_gb",
     "step_memory_ratio"),
    ("GFLOP per image", "planned_gflops_per_image", "measured_gflops_per_image", "flops_ratio"),
    ("training time (s), from the assumed utilisation", "planned_train_s", "measured_train_s",
     "time_ratio"),
    ("training time (s), calibrated", "calibrated_train_s", "measured_train_s",
     "calibrated_ratio"),
)


def _num(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _ratio(measured: float | None, planned: float | None) -> float | None:
    return measured / planned if measured is not None and planned else None


def _step_memory(record: Mapping[str, Any], cfg) -> float | None:
    batch = _num(record.get("timing_batch_size"))
    if cfg is None or batch is None:
        return None
    precision = "bf16" if record.get("timing_precision") == "bf16" else "fp32"
    try:
        plan = estimate(cfg, "ddp", batch_size=int(batch), precision=precision,
                        gpu=record.get("device_type") == "cuda")
    except (ValueError, ArithmeticError):
        return None
    return plan.peak_gb


def planned_row(record: Mapping[str, Any], settings: EstimateConfig | None = None,
                calibration: Calibration | Mapping[str, Calibration] | None = None
                ) -> dict[str, Any]:
    """One record's planned and measured costs (:data:`PLANNED_COLUMNS`, with ``run_id``,
    ``spec`` and ``device``). ``settings``: the study's ``estimate:`` section (default: its
    defaults); ``calibration``: one, or device -> calibration (the record's device's)."""
    settings = settings or EstimateConfig()
    cfg = model_config(record)
    row: dict[str, Any] = {"run_id": record.get("run_id"), "spec": record.get("spec"),
                           "device": record.get("device"), **dict.fromkeys(PLANNED_COLUMNS)}
    planned_mem = _num(record.get("estimated_peak_memory_gb"))
    rank_mb = _num(record.get("peak_memory_rank_mb"))
    measured_mem = rank_mb * MIB / GB if rank_mb is not None else None
    row.update(planned_peak_memory_gb=planned_mem, measured_peak_memory_gb=measured_mem,
               memory_ratio=_ratio(measured_mem, planned_mem),
               memory_comparable=(record.get("peak_memory_rank_method") == CUDA_METHOD
                                  if measured_mem is not None else None))
    step_mb = _num(record.get("peak_memory_mb"))
    if step_mb is not None:
        planned_step = _step_memory(record, cfg)
        measured_step = step_mb * MIB / GB
        row.update(planned_step_memory_gb=planned_step, measured_step_memory_gb=measured_step,
                   step_memory_ratio=_ratio(measured_step, planned_step))
    planned_gflops = analytic_flops(cfg).gflops if cfg is not None else None
    counter = record.get("flops_counter")
    measured_gflops = _num(record.get("gflops_per_image")) if counter not in (
        None, "analytic") else None
    row.update(planned_gflops_per_image=planned_gflops, measured_gflops_per_image=measured_gflops,
               flops_ratio=_ratio(measured_gflops, planned_gflops), flops_counter=counter)
    _time(row, record, planned_gflops, settings, calibration)
    return row


def _time(row: dict[str, Any], record: Mapping[str, Any], planned_gflops: float | None,
          settings: EstimateConfig, calibration) -> None:
    steps = _num(record.get("steps_done")) or _num(record.get("steps"))
    batch = _num(record.get("batch_size"))
    gpus = _num(record.get("ranks")) or _num(record.get("world_size")) or 1.0
    measured = _num(record.get("train_time_s"))
    if planned_gflops is None or not steps or not batch:
        return
    train_flops = 3.0 * planned_gflops * 1e9 * batch * steps
    planned = gpu_hours(train_flops, settings) * 3600.0 / gpus
    row.update(planned_train_s=planned, measured_train_s=measured,
               time_ratio=_ratio(measured, planned), assumed_utilization=settings.utilization,
               measured_utilization=(train_flops / (measured * gpus * settings.peak_tflops * 1e12)
                                     if measured else None))
    if isinstance(calibration, Mapping):
        calibration = (calibration.get(str(record.get("device")))
                       or pick_calibration(dict(calibration)))
    if calibration is not None:
        predicted = calibration.seconds(planned_gflops, batch * steps, steps, int(gpus))
        row.update(calibrated_train_s=predicted, calibrated_ratio=_ratio(measured, predicted))


def planned_rows(records: Sequence[Mapping[str, Any]], settings: EstimateConfig | None = None,
                 calibration: Calibration | Mapping[str, Calibration] | None = None,
                 ) -> list[dict[str, Any]]:
    """:func:`planned_row` of every finished (``ok``) record with at least one comparison."""
    rows = []
    for record in records:
        if record.get("status") != "ok":
            continue
        row = planned_row(record, settings, calibration)
        if any(row[ratio] is not None for *_, ratio in QUANTITIES):
            rows.append(row)
    return rows


def planned_frame(records: Sequence[Mapping[str, Any]], **kw: Any) -> pl.DataFrame:
    """:func:`planned_rows` as a frame keyed by ``run_id`` (to join onto the runs table)."""
    rows = planned_rows(records, **kw)
    schema = {"run_id": pl.String, "spec": pl.String, "device": pl.String,
              **{c: pl.Boolean if c == "memory_comparable" else
                 pl.String if c == "flops_counter" else pl.Float64 for c in PLANNED_COLUMNS}}
    return pl.DataFrame(rows, schema=schema)


def planned_summary(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per quantity of :data:`QUANTITIES`: the runs compared, and the median, lowest and
    highest measured / planned ratio (the section's table)."""
    out = []
    for name, planned, measured, ratio in QUANTITIES:
        values = [r[ratio] for r in rows if r.get(ratio) is not None]
        if not values:
            continue
        note = ""
        if ratio == "memory_ratio" and not all(r.get("memory_comparable") for r in rows
                                               if r.get(ratio) is not None):
            note = "CPU runs: the measured peak is the process's resident set, not comparable"
        out.append({"quantity": name, "planned": planned, "measured": measured, "runs":
                    len(values), "median_ratio": statistics.median(values),
                    "min_ratio": min(values), "max_ratio": max(values), "note": note})
    return out


__all__ = ["PLANNED_COLUMNS", "QUANTITIES", "planned_frame", "planned_row", "planned_rows",
           "planned_summary"]
