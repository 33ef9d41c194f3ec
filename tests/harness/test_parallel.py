"""Layouts without processes: the checks a user meets first, and the bench command."""

from __future__ import annotations

import json

import pytest
from helpers import cli

from harness.config import TrainConfig
from harness.errors import HarnessError
from harness.moe import BatchedExperts
from harness.parallel import ShardedExperts, resolve_layout


def test_layout_resolution_and_micro_batches():
    cfg = TrainConfig(batch_size=32, layout="experts+fsdp", micro_batch_size=4)
    layout = resolve_layout(cfg, 4, grouped=True)
    assert (layout.name, layout.micro_batch_size, layout.accumulation) == ("experts+fsdp", 4, 2)
    assert layout.experts_sharded and layout.fsdp and layout.collective
    alone = resolve_layout(TrainConfig(batch_size=32), 1)
    assert (alone.name, alone.micro_batch_size, alone.accumulation) == ("ddp", 32, 1)
    assert not alone.collective
    assert not resolve_layout(TrainConfig(layout="experts"), 1).experts_sharded
    with pytest.raises(HarnessError, match=r"train.micro_batch_size: 3 does not divide the 8 "
                                           r"images per rank"):
        resolve_layout(TrainConfig(batch_size=32, micro_batch_size=3), 4)


def test_sharded_experts_hold_their_block_and_refuse_uneven_splits():
    import torch

    full = BatchedExperts(6, 8, 16)
    shard = ShardedExperts(full, rank=1, world_size=3)
    assert (shard.num_experts, shard.total_experts) == (2, 6)
    assert torch.equal(shard.w1, full.w1[2:4]) and torch.equal(shard.b2, full.b2[2:4])
    with pytest.raises(HarnessError, match="divisible by 4, got 6"):
        ShardedExperts(full, rank=0, world_size=4)


@pytest.mark.slow
def test_bench_all_to_all_reports_the_share(tmp_path):
    out = tmp_path / "a2a.json"
    text = cli("bench", "all-to-all", "--dim", "32", "--tokens", "16", "--batch", "2",
               "--experts", "4", "--repeats", "3", "--out", str(out)).stdout
    result = json.loads(out.read_text())
    assert result["ranks"] == 2 and len(result["shares"]) == 3
    assert 0 < result["all_to_all_ms"] < result["layer_ms"]
    assert 0 < result["share"] < 1
    assert f"{100 * result['share']:.1f}% of the layer's time" in text
    refused = cli("bench", "all-to-all", "--experts", "5", check=False)
    assert refused.returncode == 2
    assert "--experts: 5 does not split over 2 ranks" in refused.stderr + refused.stdout
