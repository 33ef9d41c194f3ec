"""The dry run calibrated from a finished study (harness.cost.estimate.calibrate): fitted to a
store's records, it predicts those runs' training time within 25%."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from harness.cost.estimate import (
    calibrate,
    calibrated_seconds,
    describe_calibration,
    pick_calibration,
    study_costs,
)
from harness.spec.study import load

ROOT = Path(__file__).parents[2]
PER_STEP, PER_GFLOP = 0.02, 1 / 40e3  # 20 ms a step, 40 TFLOP/s


def timed_records(noise: float = 0.05, seed: int = 0, device: str = "gpu-x") -> list[dict]:
    """The quickstart's grid with steps 100 to 800 and batches of 12,800 to 38,400 images,
    timed by a known law plus relative noise."""
    study = load(ROOT / "studies" / "quickstart.yaml", [], None)
    rng = np.random.default_rng(seed)
    out = []
    for i, (spec, cost) in enumerate(zip(study.expand(), study_costs(study), strict=True)):
        steps, batch = 100 * 2 ** (i % 4), 12_800 * (1 + i % 3)
        law = PER_STEP * steps + PER_GFLOP * 3 * cost.gflops_per_image * batch * steps
        out.append({**spec.flat(), "status": "ok", "device": device, "steps": steps,
                    "steps_done": steps, "batch_size": batch,
                    "gflops_per_image": cost.gflops_per_image,
                    "train_time_s": law * (1 + rng.normal(0, noise))})
    return out


def test_calibrated_from_a_store_it_predicts_its_own_runs_within_25_percent():
    records = timed_records()
    calibration = calibrate(records)["gpu-x"]
    assert calibration.runs == len(records) and calibration.form == "steps + FLOPs"
    assert calibration.per_step_s == pytest.approx(PER_STEP, rel=0.1)
    assert calibration.per_gflop_s == pytest.approx(PER_GFLOP, rel=0.1)
    for r in records:
        predicted = calibration.seconds(r["gflops_per_image"], r["batch_size"] * r["steps"],
                                        r["steps"])
        assert predicted == pytest.approx(r["train_time_s"], rel=0.25)
    assert calibration.rms_error < 0.1
    assert calibration.utilization(989.0) == pytest.approx(40 / 989, rel=0.1)
    assert "CALIBRATED on 18 finished runs on gpu-x" in describe_calibration(calibration)


def test_calibration_per_device_and_what_it_skips():
    records = (timed_records(device="NVIDIA H100 80GB HBM3")
               + timed_records(seed=1, device="cpu (x86_64, 2 threads)")[:5]
               + [{"status": "failed", "device": "gpu-x", "train_time_s": 1.0},
                  {"status": "ok", "device": "gpu-x", "train_time_s": None}])
    found = calibrate(records)
    assert set(found) == {"NVIDIA H100 80GB HBM3", "cpu (x86_64, 2 threads)"}
    assert pick_calibration(found).runs == 18
    assert pick_calibration(found, "h100").device.startswith("NVIDIA")
    assert pick_calibration(found, "a100") is None and pick_calibration({}) is None
    two = calibrate(timed_records(noise=0.0)[:2])["gpu-x"]  # too few runs for two terms
    assert two.form in ("FLOPs only", "steps only")


def test_a_dry_run_cost_becomes_calibrated_seconds():
    study = load(ROOT / "studies" / "quickstart.yaml", [], None)
    calibration = calibrate(timed_records(noise=0.0))["gpu-x"]
    spec, cost = study.expand()[0], study_costs(study)[0]
    seconds = calibrated_seconds(cost, spec.train.steps, calibration)
    law = PER_STEP * spec.train.steps + PER_GFLOP * 3 * cost.gflops_per_image * cost.images
    assert seconds == pytest.approx(law, rel=1e-6)
