"""Expert parallelism: the experts of an MoE layer sharded over the ranks.

:class:`ShardedExperts` replaces a layer's ``experts`` (a ``BatchedExperts``) and takes the
same input, the layer's (E, n, D) buffer of this rank's tokens (Soft MoE's slots, the sparse
routers' dispatch buffers). It sends rows ``[q·E/R, (q+1)·E/R)`` to rank q with one
all-to-all, runs its own E/R experts on (E/R, R·n, D) rows, and returns each rank its rows
with a second all-to-all: the layer around it does not know the experts are elsewhere.
Every rank must call it with the same n (equal per-rank batches make it so).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from harness.errors import HarnessError
from harness.nn.moe.experts import BatchedExperts
from harness.runtime.parallel.all_to_all import all_to_all


class ShardedExperts(BatchedExperts):
    """This rank's ``num_experts`` of ``total_experts`` experts (a contiguous block), with the
    same parameter names as ``BatchedExperts``: the state dict holds the local rows of each
    stacked weight (:mod:`harness.runtime.parallel.checkpoint` saves them as one sharded tensor)."""

    def __init__(self, full: BatchedExperts, rank: int, world_size: int, group=None):
        total = full.num_experts
        if total % world_size:
            raise HarnessError(f"train.layout: experts sharded over {world_size} ranks need a "
                               f"number of experts divisible by {world_size}, got {total}")
        local = total // world_size
        with torch.random.fork_rng(devices=[]):  # the init is overwritten: draw nothing
            super().__init__(local, full.dim, full.hidden_dim, gelu=full.gelu)
        self.total_experts, self.rank, self.world_size, self.group = total, rank, world_size, group
        rows = slice(rank * local, (rank + 1) * local)
        with torch.no_grad():
            for name in ("w1", "b1", "w2", "b2"):
                getattr(self, name).copy_(getattr(full, name)[rows])
        self.to(full.w1.device)
        # each rank's loss is the mean over its own images; the reverse all-to-all sums every
        # rank's contribution here, so the mean over ranks is this sum / R
        self.grad_scaling = [p.register_hook(lambda grad: grad / world_size)
                             for p in self.parameters()]  # handles: .remove() undoes it

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e, n, d = x.shape
        if e != self.total_experts:
            raise ValueError(f"ShardedExperts expects ({self.total_experts}, n, {self.dim}), "
                             f"got {tuple(x.shape)}")
        r, local = self.world_size, self.num_experts
        # row block q of x (experts of rank q) to rank q; block q of received came from rank q
        received = all_to_all(x, self.group).view(r, local, n, d)
        out = super().forward(received.transpose(0, 1).reshape(local, r * n, d))
        back = out.view(local, r, n, d).transpose(0, 1).reshape(e, n, d)
        return all_to_all(back, self.group)

    def extra_repr(self) -> str:
        return (f"experts {self.rank * self.num_experts}..{(self.rank + 1) * self.num_experts - 1}"
                f" of {self.total_experts} on rank {self.rank}/{self.world_size}, "
                f"{super().extra_repr()}")


def expert_layers(model: nn.Module) -> list[nn.Module]:
    """The MoE layers of ``model`` that hold experts (an ``experts`` BatchedExperts)."""
    layers = model.moe_layers() if hasattr(model, "moe_layers") else []
    return [layer for layer in layers if isinstance(getattr(layer, "experts", None),
                                                    BatchedExperts)]


def shard_layer(layer: nn.Module, rank: int | None = None, world_size: int | None = None,
                group=None) -> None:
    """Replace ``layer``'s experts (if it has a ``BatchedExperts``) by the shard of ``rank`` of
    ``world_size`` (default: this process's in ``group``), in place; the full experts are
    freed. As ``harness.nn.vit.build``'s ``on_moe_layer`` it shards each layer as soon as it
    is built, so a rank never holds more than its shards plus one layer's experts."""
    experts = getattr(layer, "experts", None)
    if isinstance(experts, BatchedExperts) and not isinstance(experts, ShardedExperts):
        rank = dist.get_rank(group) if rank is None else rank
        world_size = dist.get_world_size(group) if world_size is None else world_size
        layer.experts = ShardedExperts(experts, rank, world_size, group)


def shard_experts(model: nn.Module, group=None) -> list[ShardedExperts]:
    """Replace every MoE layer's experts by this rank's shard (in place; layers already
    sharded are kept); returns the shards."""
    layers = expert_layers(model)
    for layer in layers:
        shard_layer(layer, group=group)
    return [layer.experts for layer in layers]

