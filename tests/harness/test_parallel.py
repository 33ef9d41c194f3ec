"""Layouts without processes: the checks a user meets first, and the bench command."""

from __future__ import annotations

import json

import pytest
from helpers import cli

from harness.errors import HarnessError
from harness.nn.moe import BatchedExperts
from harness.runtime.parallel import ShardedExperts, resolve_layout
from harness.spec.config import TrainConfig


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


def test_a_rank_builds_only_its_experts_with_the_weights_of_one_process():
    """Built with each MoE layer sharded as it is made (what ``harness.runtime.run`` does when the
    experts are sharded), a rank holds its block of every layer's experts, equal to the
    one-process model's rows, the rest equal too; building peaks at its share plus one
    layer's experts, not at the whole model."""
    import functools

    import torch

    from harness.nn.vit import build
    from harness.runtime.parallel import shard_layer
    from harness.runtime.timing import _allocator_peak_growth

    spec, ranks = "vit-w64d8h4m256/4@16:soft:e64:every1", 4
    torch.manual_seed(0)
    full_bytes = _allocator_peak_growth(lambda: build(spec, num_classes=10))
    torch.manual_seed(0)
    full = build(spec, num_classes=10).state_dict()
    layer_bytes = sum(t.nbytes for k, t in full.items() if k.startswith("blocks.0.mlp.experts."))
    for rank in range(ranks):
        hook = functools.partial(shard_layer, rank=rank, world_size=ranks)
        torch.manual_seed(0)
        peak = _allocator_peak_growth(lambda hook=hook: build(spec, num_classes=10,
                                                              on_moe_layer=hook))
        torch.manual_seed(0)
        model = build(spec, num_classes=10, on_moe_layer=hook)
        experts = [layer.experts for layer in model.moe_layers()]
        assert len(experts) == 8 and all(isinstance(e, ShardedExperts) for e in experts)
        assert all((e.rank, e.num_experts, e.total_experts) == (rank, 16, 64) for e in experts)
        state = model.state_dict()
        assert state.keys() == full.keys()
        rows = slice(16 * rank, 16 * (rank + 1))
        for key, value in full.items():
            want = value[rows] if ".mlp.experts." in key else value
            assert torch.equal(state[key], want), key
        held = sum(t.nbytes for t in state.values())
        assert held < 0.3 * sum(t.nbytes for t in full.values())  # 1/4 of the experts
        # the peak: what the rank keeps, plus one layer's full experts while it is sharded
        assert peak < held + 1.2 * layer_bytes
        assert peak < 0.45 * full_bytes  # 8 layers: 1/4 of them, plus one
