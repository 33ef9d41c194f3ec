"""Every layout on one CUDA rank (NCCL) equals the plain run: expert shards (the all-to-all
over NCCL), FSDP2, both, micro-batches and activation checkpointing through ``fit``."""

import socket

import pytest
import torch
import torch.distributed as dist

from harness.data import load_data
from harness.nn.vit import build
from harness.runtime.parallel.checkpoint import full_model_state
from harness.runtime.train import fit, seed_everything
from tests.harness.test_layouts import CASES, assert_equal_runs, spec_of


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(case, workdir):
    spec = spec_of(*case)
    spec = spec.model_copy(update={"train": spec.train.model_copy(
        update={"device": "cuda", "precision": "fp32"})})
    data = load_data(spec.data)
    seed_everything(spec.seed)
    model = build(spec.model_config_(data.num_classes))
    losses = []
    fit(model, spec, data, workdir=workdir, device="cuda",
        log=lambda step, s: losses.append(s["train/loss"]) if "train/loss" in s else None)
    return losses, {k: v.cpu() for k, v in full_model_state(model).items()}


def test_layouts_on_one_nccl_rank_equal_a_plain_run(tmp_path, record_numbers):
    if not dist.is_nccl_available():
        pytest.fail("this CUDA build of torch has no NCCL")
    plain = {case: _run(case, tmp_path / f"plain-{i}") for i, case in enumerate(CASES)}
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0,
                            world_size=1, device_id=torch.device("cuda", 0))
    try:
        laid_out = {case: _run(case, tmp_path / f"rank-{i}") for i, case in enumerate(CASES)}
    finally:
        dist.destroy_process_group()
    worst = {}
    for case in CASES:
        (want_losses, want), (got_losses, got) = plain[case], laid_out[case]
        assert_equal_runs({"losses": got_losses, "params": got},
                          {"losses": want_losses, "params": want}, f"1 NCCL rank, {case}")
        worst["/".join(map(str, case))] = max((got[k] - v).abs().max().item()
                                              for k, v in want.items())
    record_numbers(layouts_max_param_diff=worst)
