"""A tiny study end to end on CUDA through the CLI (run -> records; the report from records
is device-independent and tested on the CPU), and a one-rank NCCL DDP run that equals a
plain run."""

import socket

import pytest
import torch
import torch.distributed as dist
import yaml
from helpers import cli

from harness.nn.vit import build
from harness.results.store import Store
from harness.spec.model import parse_model_spec

STUDY = {
    "name": "gpu-tiny",
    "data": {"name": "synthetic", "image_size": 16, "num_classes": 10, "train_size": 512,
             "test_size": 256},
    "train": {"steps": 20, "batch_size": 64, "eval_every": 10, "checkpoint_every": 10,
              "fewshot_shots": 2, "device": "cuda"},
    "measure": {"batch_size": 32, "repeats": 5},
    "fixed": {"moe_layers": "last:2"},
    "grid": {"model": ["vit-w64d4h4m256/4"], "router": ["dense", "soft"], "num_experts": [8]},
    "executor": {"name": "local", "max_parallel": 1},
}


@pytest.mark.slow
def test_tiny_study_end_to_end_on_cuda(tmp_path, record_numbers):
    study = tmp_path / "gpu-tiny.yaml"
    study.write_text(yaml.safe_dump(STUDY))
    cli("run", study, "--results", tmp_path / "results", "--quiet", timeout=600)
    records = Store(tmp_path / "results", "gpu-tiny").records()
    assert len(records) == 2
    name = torch.cuda.get_device_name(0)
    for r in records:
        assert r["status"] == "ok", r.get("error")
        assert r["device"] == name and r["device_type"] == "cuda"
        assert r["timing_method"] == "CUDA events"
        assert r["peak_memory_method"] == "torch.cuda.max_memory_allocated"
        assert r["peak_memory_mb"] > 0 and r["train_step_ms"] > 0
        assert r["timing_precision"] == "bf16"  # precision auto: bf16 autocast on a GPU
        assert r["flops_counter"] == "fvcore" and r["gflops_per_image"] > 0
        assert 0.0 <= r["test_accuracy"] <= 1.0
        record_numbers(**{k: r.get(k) for k in (
            "spec", "device", "train_step_ms", "train_images_per_s", "infer_images_per_s",
            "peak_memory_mb", "timing_spread", "timing_flagged", "test_accuracy",
            "attention_backend")})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train(model, steps=4, seed=0):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(steps):
        images = torch.randn(16, 3, 16, 16, device="cuda", generator=gen)
        labels = torch.randint(0, 10, (16,), device="cuda", generator=gen)
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def test_one_rank_nccl_ddp_equals_a_plain_run(record_numbers):
    if not dist.is_nccl_available():
        pytest.fail("this CUDA build of torch has no NCCL")
    cfg = parse_model_spec("vit-w64d4h4m256/4@16:soft:e8:last2", num_classes=10)
    torch.manual_seed(0)
    plain = build(cfg).cuda()
    torch.manual_seed(0)
    wrapped = build(cfg).cuda()
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0,
                            world_size=1)
    try:
        assert dist.get_backend() == "nccl"
        ddp = torch.nn.parallel.DistributedDataParallel(wrapped, device_ids=[0])
        losses_ddp = _train(ddp)
    finally:
        dist.destroy_process_group()
    losses_plain = _train(plain)
    worst = max((a - b).abs().max().item() for a, b in zip(
        plain.state_dict().values(), wrapped.state_dict().values(), strict=True))
    record_numbers(losses_plain=losses_plain, losses_ddp=losses_ddp, max_param_diff=worst)
    assert losses_ddp == pytest.approx(losses_plain, rel=1e-6)
    assert worst < 1e-6
