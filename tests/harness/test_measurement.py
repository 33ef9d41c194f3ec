"""Timing you can trust on a shared machine: the thread count fixed and recorded, the
machine's contention measured during the timed calls, wide timings retimed then flagged;
and `inspect` answering from the closed forms without loading torch."""

import subprocess
import sys

import pytest
import torch

from harness.runtime import timing
from harness.runtime.measure import inspect_model, measure
from harness.spec.model import parse_model_spec


def fake_round(median, spread, others=0.0):
    return {"median_ms": median, "p10_ms": median, "p90_ms": median * (1 + spread),
            "min_ms": median, "max_ms": median, "n": 5, "spread": spread,
            "others_cpu": others, "method": "time.perf_counter"}


def scripted(monkeypatch, rounds):
    calls = []
    script = iter(rounds)

    def fake_time_call(fn, **kw):
        calls.append(kw)
        return next(script)

    monkeypatch.setattr(timing, "time_call", fake_time_call)
    return calls


def test_a_wide_round_is_timed_again_and_a_clean_one_kept(monkeypatch):
    calls = scripted(monkeypatch, [fake_round(10, 0.9), fake_round(8, 0.05)])
    out = timing.time_stable(lambda: None, repeats=5, warmup=3, rounds=3)
    assert out["rounds"] == 2 and not out["flagged"] and out["median_ms"] == 8
    assert [c["warmup"] for c in calls] == [3, 1]  # warm already after the first round


def test_a_busy_machine_is_timed_again_then_flagged(monkeypatch):
    scripted(monkeypatch, [fake_round(12, 0.1, others=0.9), fake_round(9, 0.4),
                           fake_round(11, 0.1, others=0.5)])
    out = timing.time_stable(lambda: None, rounds=3)
    assert out["rounds"] == 3 and out["flagged"]
    assert out["median_ms"] == 9  # the least disturbed round: contention only adds time


def test_time_call_measures_contention_and_spread():
    out = timing.time_call(lambda: sum(range(20000)), repeats=5, warmup=1)
    assert out["method"] == "time.perf_counter"
    assert 0.0 <= out["others_cpu"] <= 1.0
    assert out["spread"] == pytest.approx((out["p90_ms"] - out["p10_ms"]) / out["median_ms"])


def test_measure_fixes_and_records_the_thread_count(small):
    cfg, model = small
    before = torch.get_num_threads()
    out = measure(model, cfg, batch_size=4, repeats=2, warmup=1, rounds=1, memory=False,
                  flops_counter="analytic", threads=1)
    assert torch.get_num_threads() == before  # restored
    assert out["timing_threads"] == 1 and out["timing_method"] == "time.perf_counter"
    assert out["timing_rounds"] == 1 and isinstance(out["timing_flagged"], bool)
    assert 0.0 <= out["timing_others_cpu"] <= 1.0 and out["timing_spread"] >= 0
    assert out["timing_precision"] == "fp32"


def test_measure_times_training_in_bf16_when_asked(small):
    cfg, model = small
    out = measure(model, cfg, batch_size=2, repeats=1, warmup=1, rounds=1, memory=False,
                  latency_batch_size=None, flops_counter="analytic", precision="bf16")
    assert out["timing_precision"] == "bf16" and out["train_step_ms"] > 0


def test_inspect_counts_without_loading_torch():
    code = ("import sys; from harness.runtime.measure import inspect_model; "
            "from harness.spec.model import parse_model_spec; "
            "row = inspect_model(parse_model_spec('vit-s/16:soft:e128')); "
            "print(row['counted_by'], row['params_total'], 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.split() == ["analytic", "922699630", "False"], out.stderr


def test_fvcore_on_request_agrees_with_the_default():
    cfg = parse_model_spec("vit-w32d2h2m64/8@16:soft:e4")
    fast, traced = inspect_model(cfg), inspect_model(cfg, counter="fvcore")
    assert (fast["counted_by"], traced["counted_by"]) == ("analytic", "fvcore")
    assert traced["gflops_per_image"] == pytest.approx(fast["gflops_per_image"])
    assert traced["params_total"] == fast["params_total"]


def test_a_runs_record_carries_the_timing_columns(tmp_path):
    from harness.runtime.run import execute
    from harness.spec.config import DataConfig, MeasureConfig, TrainConfig
    from harness.spec.study import RunSpec

    spec = RunSpec(
        study="timing", model="vit-w32d2h2m64/8", router="soft", num_experts=4,
        data=DataConfig(num_classes=4, train_size=64, test_size=32, image_size=16),
        train=TrainConfig(steps=2, batch_size=16, eval_every=0, checkpoint_every=0,
                          fewshot_shots=0, threads=1, device="cpu"),
        measure=MeasureConfig(batch_size=4, repeats=2, warmup=1, flops=False, memory=False))
    record = execute(spec, tmp_path)
    assert record["status"] == "ok", record.get("error")
    assert record["timing_threads"] == 1 and record["timing_method"] == "time.perf_counter"
    assert record["timing_precision"] == "fp32"
    assert isinstance(record["timing_flagged"], bool) and record["timing_rounds"] >= 1
