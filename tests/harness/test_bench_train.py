"""`bench train`: throughput, achieved FLOP rate and its share of a reference; the peak
table; a saved result as a study's GPU-hour estimate."""

import json

import pytest
import torch
import yaml
from helpers import cli

from harness.bench.train import bench_train
from harness.cost import peaks
from harness.cost.estimate import study_costs
from harness.cost.flops import analytic_flops
from harness.errors import HarnessError
from harness.spec.model import parse_model_spec
from harness.spec.study import load

TINY = "vit-w32d2h2m64/8@16"
QUICK = dict(batch_size=4, repeats=2, warmup=1, rounds=1, threads=1, num_classes=10,
             matmul_size=(256, 256, 256))


@pytest.fixture(scope="module")
def result():
    return bench_train([TINY, TINY + ":soft:e4"], **QUICK)


def test_rates_follow_from_the_step_time_and_the_flop_count(result):
    machine, rows = result["machine"], result["rows"]
    assert machine["device_type"] == "cpu" and machine["precision"] == "fp32"
    assert machine["threads"] == 1 and machine["reference"] == "measured matmul"
    assert machine["peak_tflops"] is None and machine["matmul_tflops"] > 0
    assert [r["spec"] for r in rows] == [TINY, TINY + ":soft:e4:s1"]
    for row in rows:
        gflops = analytic_flops(parse_model_spec(row["spec"], num_classes=10)).gflops
        assert row["gflops_per_image"] == pytest.approx(gflops)
        step_s = row["step_ms"] / 1e3
        assert row["steps_per_s"] == pytest.approx(1 / step_s)
        assert row["images_per_s"] == pytest.approx(4 / step_s)
        assert row["achieved_tflops"] == pytest.approx(3 * gflops * 1e9 * 4 / step_s / 1e12)
        assert row["share_of_matmul"] == pytest.approx(
            row["achieved_tflops"] / machine["matmul_tflops"])
        assert row["mfu"] is None  # no peak on a CPU
        assert row["timing_method"] == "time.perf_counter" and row["timing_rounds"] == 1
        assert isinstance(row["timing_flagged"], bool)
        assert 0 <= row["timing_others_cpu"] <= 1
    assert rows[0]["step_vs_first"] == 1.0
    assert rows[1]["step_vs_first"] == pytest.approx(rows[1]["step_ms"] / rows[0]["step_ms"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error where CUDA is absent")
def test_cuda_without_a_gpu_is_one_clear_error():
    with pytest.raises(HarnessError, match="--device: 'cuda' but torch sees no CUDA device"):
        bench_train([TINY], device="cuda", **QUICK)


def test_a_given_peak_gives_an_mfu_and_bf16_runs_under_autocast():
    out = bench_train([TINY], precision="bf16", peak_tflops=2.0, **QUICK)
    row = out["rows"][0]
    assert out["machine"]["precision"] == row["precision"] == "bf16"
    assert out["machine"]["peak_source"] == "given (--peak-tflops)"
    assert row["mfu"] == pytest.approx(row["achieved_tflops"] / 2.0)


@pytest.mark.parametrize("name,model,bf16,fp32", [
    ("NVIDIA H100 80GB HBM3", "H100 SXM", 989.5, 67.0),
    ("NVIDIA H100 PCIe", "H100 PCIe", 756.5, 51.2),
    ("NVIDIA H100 NVL", "H100 NVL", 835.5, 60.0),
    ("NVIDIA H200", "H200 SXM", 989.5, 67.0),
    ("NVIDIA A100-SXM4-80GB", "A100", 312.0, 19.5),
    ("NVIDIA A100 80GB PCIe", "A100", 312.0, 19.5),
    ("NVIDIA L40S", "L40S", 362.05, 91.6),
    ("NVIDIA L4", "L4", 121.0, 30.3),
    ("NVIDIA A10", "A10", 125.0, 31.2),
    ("AMD Instinct MI300X", "MI300X", 1307.4, 163.4),
])
def test_peak_table_finds_each_device(name, model, bf16, fp32):
    assert peaks.lookup(name).name == model
    assert peaks.peak_tflops(name, "bf16")[0] == bf16
    assert peaks.peak_tflops(name, "fp32")[0] == fp32
    assert "datasheet" in peaks.peak_tflops(name, "bf16")[1]


def test_peak_table_unknown_device_and_tf32():
    assert peaks.lookup("NVIDIA GeForce GTX 1080") is None
    assert peaks.peak_tflops("NVIDIA GeForce GTX 1080", "bf16") is None
    assert peaks.peak_tflops("NVIDIA H100 80GB HBM3", "fp32", tf32=True)[0] == 494.5


def _study(tmp_path, estimate):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({
        "name": "s", "data": {"name": "synthetic", "image_size": 16},
        "train": {"steps": 1000, "batch_size": 64},
        "grid": {"model": ["vit-w32d2h2m64/8"]}, "estimate": estimate}))
    return path


def test_study_estimate_from_a_saved_bench_result(tmp_path):
    saved = tmp_path / "bench.json"
    saved.write_text(json.dumps({
        "machine": {"device": "NVIDIA H100 80GB HBM3", "precision": "bf16",
                    "peak_tflops": 989.5},
        "rows": [{"spec": "vit-s/16", "mfu": 0.30}, {"spec": "vit-s/16:soft:e128:s1",
                                                     "mfu": 0.20}, {"spec": "x", "mfu": 0.5}]}))
    study = load(_study(tmp_path, {"from_bench": str(saved)}))
    assert study.estimate.utilization == pytest.approx(0.30)  # the median
    assert study.estimate.peak_tflops == 989.5
    assert "NVIDIA H100" in study.estimate.device and "measured" in study.estimate.device
    cost = study_costs(study)[0]
    assert cost.gpu_hours == pytest.approx(
        cost.train_exaflops * 1e18 / (989.5e12 * 0.30) / 3600)


def test_estimate_from_bench_errors_name_the_file_and_field(tmp_path):
    with pytest.raises(HarnessError, match=r"s\.yaml: estimate: from_bench: .*nope\.json: no "
                                           r"such file"):
        load(_study(tmp_path, {"from_bench": str(tmp_path / "nope.json")}))
    cpu_only = tmp_path / "cpu.json"
    cpu_only.write_text(json.dumps({"machine": {"device": "cpu", "precision": "fp32",
                                                "peak_tflops": None},
                                    "rows": [{"spec": TINY, "mfu": None}]}))
    with pytest.raises(HarnessError, match="has no measured MFU"):
        load(_study(tmp_path, {"from_bench": str(cpu_only)}))
    with pytest.raises(HarnessError, match="from_bench sets utilization: give one or the other"):
        load(_study(tmp_path, {"from_bench": str(cpu_only), "utilization": 0.3}))


@pytest.mark.slow
def test_cli_prints_rates_and_writes_json(tmp_path):
    out = tmp_path / "train.json"
    proc = cli("bench", "train", TINY, "--batch-size", "4", "--repeats", "2", "--warmup", "1",
               "--rounds", "1", "--threads", "1", "--out", out)
    for text in ("steps/s", "images/s", "TFLOP/s", "% of matmul", "large matmul"):
        assert text in proc.stdout, text
    saved = json.loads(out.read_text())
    assert saved["rows"][0]["spec"] == TINY and saved["machine"]["threads"] == 1


def test_gpu_targets_read_from_the_saved_benchmarks(tmp_path):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parents[1] / "gpu" / "targets.py"
    spec = importlib.util.spec_from_file_location("gpu_targets", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    (tmp_path / "train.json").write_text(json.dumps({
        "machine": {"device": "NVIDIA H200"},
        "rows": [{"spec": "vit-s/16", "mfu": 0.45, "step_ms": 100.0, "batch_size": 256},
                 {"spec": "vit-s/16:soft:e128:s1", "mfu": 0.3, "step_ms": 140.0}]}))
    (tmp_path / "layers.json").write_text(json.dumps({"rows": [
        {"kind": "soft", "experts": 128, "slots_per_expert": 1, "speedup_fwd_bwd_median": 2.5}]}))
    lines = module.targets(tmp_path)
    assert lines[0].startswith("Soft MoE layer") and "x2.50 (goal >= x3): NOT met" in lines[0]
    assert "45.0% (goal >= 40%): met" in lines[1] and "NVIDIA H200" in lines[1]
    assert "x1.40 (goal <= x1.3): NOT met" in lines[2]


def test_bench_layers_in_bf16_times_every_kind_under_autocast():
    from harness.bench.layers import bench_layers

    out = bench_layers(dim=16, tokens=4, batch=2, experts=(2,), slots=(1,), repeats=1,
                       warmup=1, precision="bf16", compare_reference=False,
                       plain_matmul_size=(64, 64, 64))
    assert out["machine"]["precision"] == "bf16" and not out["machine"]["onednn_inference"]
    assert [r["kind"] for r in out["rows"]] == ["soft", "dense", "tokens_choice",
                                                "experts_choice"]
    assert all(r["fwd_bwd_ms"] > 0 and "experts_fwd_ms" not in r for r in out["rows"])
