"""Planned against measured (reports.analyses.planned) on records built like the quickstart's: what
harness.runtime.run writes (the memory plan, the measured peaks, the counted FLOPs, the
training time), with known measured values."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from harness.cost.estimate import calibrate, study_costs
from harness.cost.memory import GB, estimate, plan_for, record_fields
from harness.spec.study import EstimateConfig, load
from reports.analyses.planned import (
    CUDA_METHOD,
    PLANNED_COLUMNS,
    planned_frame,
    planned_row,
    planned_rows,
    planned_summary,
)
from reports.analyses.specs import model_config

ROOT = Path(__file__).parents[2]
MIB = 2**20
STEP_MEMORY, FLOPS, SECONDS_PER_STEP = 1.1, 1.02, 0.05


def quickstart_records(gpu: bool = False) -> list[dict]:
    """One record per quickstart run, with the fields ``harness.runtime.run`` writes: the
    memory plan; a measured training peak (a CPU's resident set, or the CUDA allocator's at
    1.3x the plan); the measurement step's peak at 1.1x its plan; fvcore's FLOPs at 1.02x
    the closed form; 50 ms per training step."""
    study = load(ROOT / "studies" / "quickstart.yaml", [], None)
    out = []
    for spec, cost in zip(study.expand(), study_costs(study), strict=True):
        record = {**spec.flat(), "spec_json": spec.canonical_json(), "status": "ok",
                  "device": "NVIDIA H100 80GB HBM3" if gpu else "cpu (x86_64, 2 threads)",
                  "device_type": "cuda" if gpu else "cpu", "steps_done": spec.train.steps,
                  "timing_batch_size": spec.measure.batch_size, "timing_precision": "fp32",
                  "flops_counter": "fvcore", "gflops_per_image": cost.gflops_per_image * FLOPS,
                  "train_time_s": SECONDS_PER_STEP * spec.train.steps,
                  **record_fields(plan_for(spec, gpu=gpu, ranks=1, limit_gb=80 if gpu else None))}
        step = estimate(model_config(record), "ddp", batch_size=spec.measure.batch_size,
                        precision="fp32", gpu=gpu)
        record["peak_memory_mb"] = step.peak_gb * GB / MIB * STEP_MEMORY
        record["peak_memory_rank_mb"] = (record["estimated_peak_memory_gb"] * 1.3 * GB / MIB
                                         if gpu else 380.0)
        record["peak_memory_rank_method"] = (CUDA_METHOD if gpu else
                                             "peak resident set size (getrusage)")
        out.append(record)
    return out


def test_rows_compare_memory_flops_and_time_on_cpu_records():
    records = quickstart_records()
    settings = EstimateConfig(peak_tflops=1.0, utilization=0.5)
    rows = planned_rows(records + [{"status": "failed", "run_id": "x"}], settings)
    assert len(rows) == 18 and [r["run_id"] for r in rows] == [r["run_id"] for r in records]
    for row, record in zip(rows, records, strict=True):
        assert set(PLANNED_COLUMNS) <= set(row)
        assert row["flops_ratio"] == pytest.approx(FLOPS, rel=1e-4)  # head classes: 50, known
        assert row["step_memory_ratio"] == pytest.approx(STEP_MEMORY, rel=1e-6)
        assert row["memory_comparable"] is False
        assert row["planned_peak_memory_gb"] == record["estimated_peak_memory_gb"]
        flops = 3 * row["planned_gflops_per_image"] * 1e9 * 128 * 400
        assert row["planned_train_s"] == pytest.approx(flops / 0.5e12)
        assert row["measured_utilization"] == pytest.approx(flops / 20.0 / 1e12)
        assert row["time_ratio"] == pytest.approx(20.0 / row["planned_train_s"])
        assert row["assumed_utilization"] == 0.5 and row["calibrated_train_s"] is None
    summary = {s["quantity"]: s for s in planned_summary(rows)}
    memory = summary["training peak memory (GB per rank)"]
    assert memory["runs"] == 18 and "not comparable" in memory["note"]
    assert summary["GFLOP per image"]["median_ratio"] == pytest.approx(FLOPS, rel=1e-4)
    json.dumps(rows)


def test_gpu_records_compare_the_memory_plan_and_calibrated_time():
    records = quickstart_records(gpu=True)
    rows = planned_rows(records, calibration=calibrate(records))
    assert all(r["memory_comparable"] for r in rows)
    assert all(r["memory_ratio"] == pytest.approx(1.3, rel=1e-2) for r in rows)
    assert all(r["calibrated_ratio"] == pytest.approx(1.0, rel=0.25) for r in rows)
    summary = {s["quantity"]: s for s in planned_summary(rows)}
    assert summary["training time (s), calibrated"]["runs"] == 18
    assert summary["training peak memory (GB per rank)"]["note"] == ""


def test_missing_sides_stay_empty_and_the_frame_joins_on_run_id():
    records = quickstart_records()
    bare = [{**r, "flops_counter": "analytic", "peak_memory_mb": None,
             "peak_memory_rank_mb": None, "train_time_s": None} for r in records[:2]]
    assert planned_rows(bare) == []  # nothing measured to compare
    row = planned_row(bare[0])
    assert row["planned_gflops_per_image"] > 0 and row["planned_train_s"] > 0
    assert all(row[k] is None for k in ("flops_ratio", "measured_gflops_per_image",
                                        "step_memory_ratio", "memory_ratio", "time_ratio"))
    flat = planned_rows([{**r, "spec_json": None} for r in records[:2]])
    assert [r["flops_ratio"] for r in flat] == pytest.approx([FLOPS] * 2, rel=1e-4)
    frame = planned_frame(records)
    assert frame.height == 18 and frame.schema["memory_comparable"] == pl.Boolean
    runs = pl.DataFrame({"run_id": [r["run_id"] for r in records]})
    assert runs.join(frame, on="run_id", how="left").height == 18
    assert planned_frame([]).columns[:3] == ["run_id", "spec", "device"]


def test_the_summary_as_table_rows():
    from reports.analyses.law_tables import PLANNED_HEADERS, planned_table_rows

    rows = planned_table_rows(planned_summary(planned_rows(quickstart_records())))
    assert [r[0] for r in rows][:3] == ["training peak memory (GB per rank)",
                                        "measurement-step memory (GB)", "GFLOP per image"]
    assert all(len(r) == len(PLANNED_HEADERS) and r[1] == "18" for r in rows)
