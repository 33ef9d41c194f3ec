"""How a run is spread over its ranks at run time (``train.layout``).

- ``ddp``: every parameter replicated, gradients averaged by DistributedDataParallel;
- ``experts``: each MoE layer's experts sharded over the ranks (rank r holds experts
  ``[r·E/R, (r+1)·E/R)``; :class:`ShardedExperts` moves the expert buffers to their expert's
  rank and back with all-to-all), every other parameter replicated as in ``ddp``;
- ``fsdp``: every parameter, gradient and optimizer state sharded by FSDP2 (``fully_shard``
  per block, then the model);
- ``experts+fsdp``: experts sharded as in ``experts``, the rest sharded by FSDP2.

Every layout computes the same update as one process on the same global batch: each rank's
loss is the mean over its own images, dense gradients are averaged over the ranks (DDP or
FSDP's reduce-scatter), and expert gradients, which already hold every rank's tokens after
the reverse all-to-all, are divided by the number of ranks instead of being all-reduced.

Micro-batches (``train.micro_batch_size``) and activation checkpointing
(``train.activation_checkpointing``) are set up by :func:`prepare` too, for any layout.
"""

from __future__ import annotations

from harness.runtime.parallel import checkpoint
from harness.runtime.parallel.all_to_all import CommTimer, all_to_all
from harness.runtime.parallel.experts import ShardedExperts, shard_experts, shard_layer
from harness.runtime.parallel.layout import (
    Layout,
    clip_grad_norm,
    micro_batches,
    peak_memory_mb,
    prepare,
    resolve_layout,
)

__all__ = ["CommTimer", "Layout", "ShardedExperts", "all_to_all", "checkpoint",
           "clip_grad_norm", "micro_batches", "peak_memory_mb", "prepare", "resolve_layout",
           "shard_experts", "shard_layer"]
