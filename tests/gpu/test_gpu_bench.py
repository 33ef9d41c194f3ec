"""The benchmarks' GPU paths: CUDA-event timing, the allocator's peak, the peak table and
bf16 layer timing (the numbers themselves are targets, measured by tests/gpu/run.sh)."""

import torch

from harness.bench.layers import bench_layers
from harness.bench.train import bench_train
from harness.cost import peaks


def test_bench_train_on_cuda_reports_an_mfu(record_numbers):
    out = bench_train(["vit-w64d4h4m256/4@16", "vit-w64d4h4m256/4@16:soft:e8:last2"],
                      batch_size=64, repeats=5, warmup=2, rounds=2, num_classes=10)
    machine = out["machine"]
    assert machine["device_type"] == "cuda" and machine["precision"] == "bf16"
    assert machine["matmul_tflops"] > 1.0  # any datacenter GPU does more than 1 TFLOP/s
    known = peaks.lookup(torch.cuda.get_device_name(0))
    assert (machine["peak_tflops"] is not None) == (known is not None)
    for row in out["rows"]:
        assert row["timing_method"] == "CUDA events" and row["timing_others_cpu"] is None
        assert row["peak_memory_mb"] > 0
        if known is not None:
            assert 0 < row["mfu"] < 1
        record_numbers(**row, matmul_tflops=machine["matmul_tflops"])


def test_bench_layers_on_cuda_in_bf16(record_numbers):
    out = bench_layers(dim=128, tokens=64, batch=8, experts=(16,), slots=(1,), repeats=3,
                       warmup=1, device="cuda", precision="bf16", compare_reference=True)
    kinds = [r["kind"] for r in out["rows"]]
    assert kinds == ["soft", "dense", "tokens_choice", "experts_choice"]
    for row in out["rows"]:
        assert row["fwd_ms"] > 0 and row["fwd_bwd_ms"] > 0
        record_numbers(**row)
