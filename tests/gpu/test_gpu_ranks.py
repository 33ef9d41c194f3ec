"""``train.gpus: 2`` on the local executor with the GPUs torch finds: two NCCL ranks, one per
GPU, rank 0's record saying 2 ranks; with one GPU visible, two ranks are refused in one line
that says how many GPUs there are."""

import os
import subprocess
import sys

import pytest
import torch
import yaml

from harness.results.store import Store

STUDY = {
    "name": "gpu-ranks",
    "data": {"name": "synthetic", "image_size": 16, "num_classes": 10, "train_size": 256,
             "test_size": 64},
    "train": {"steps": 10, "batch_size": 32, "eval_every": 0, "checkpoint_every": 5,
              "fewshot_shots": 0, "device": "cuda", "gpus": 2, "layout": "experts"},
    "measure": {"enabled": False},
    "fixed": {"model": "vit-w64d4h4m256/4", "router": "soft", "num_experts": 8,
              "moe_layers": "last:2"},
    "executor": {"name": "local", "max_parallel": 2},
}


def run(tmp_path, visible: str | None = None) -> subprocess.CompletedProcess:
    study = tmp_path / "gpu-ranks.yaml"
    study.write_text(yaml.safe_dump(STUDY))
    env = dict(os.environ)
    if visible is not None:
        env["CUDA_VISIBLE_DEVICES"] = visible
    return subprocess.run([sys.executable, "-m", "harness.cli", "run", str(study), "--results",
                           str(tmp_path / "results"), "--quiet"], capture_output=True,
                          text=True, timeout=300, env=env)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="fewer than 2 GPUs")
def test_a_two_rank_local_run_on_two_gpus(tmp_path):
    proc = run(tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [record] = Store(tmp_path / "results", "gpu-ranks").records()
    assert record["status"] == "ok" and record["ranks"] == 2 and record["world_size"] == 2


def test_two_ranks_on_one_gpu_are_refused_in_one_line(tmp_path):
    proc = run(tmp_path, visible="0")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    [line] = proc.stderr.strip().splitlines()
    assert "train.gpus: 2 ranks, one per GPU, but this machine has 1 GPU" in line
