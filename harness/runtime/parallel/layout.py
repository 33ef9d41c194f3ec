"""Apply a run's layout to its model: expert shards, FSDP2 or DDP, activation checkpointing,
micro-batches, and the gradient-norm clipping that sees every shard."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.checkpoint import checkpoint

from harness.cost.memory import GRAD_BUCKET_BYTES
from harness.errors import HarnessError
from harness.runtime import distributed
from harness.runtime.parallel.experts import ShardedExperts, shard_experts
from harness.spec.config import TrainConfig

LAYOUTS = ("ddp", "fsdp", "experts", "experts+fsdp")


@dataclass(frozen=True)
class Layout:
    """What a run uses at run time (the record's layout columns)."""

    name: str  # ddp | fsdp | experts | experts+fsdp
    ranks: int
    micro_batch_size: int  # images per forward and backward on one rank
    accumulation: int  # micro-batches per optimizer step
    activation_checkpointing: bool
    grouped: bool = False  # a process group is up (of one rank or more): shards apply

    @property
    def experts_sharded(self) -> bool:
        return "experts" in self.name and self.grouped

    @property
    def fsdp(self) -> bool:
        return "fsdp" in self.name and self.grouped

    @property
    def collective(self) -> bool:
        """Whether a forward needs every rank (evaluations then run on all of them)."""
        return self.experts_sharded or self.fsdp

    def record(self) -> dict:
        return {"layout": self.name, "ranks": self.ranks,
                "micro_batch_size": self.micro_batch_size,
                "accumulation_steps": self.accumulation,
                "activation_checkpointing": self.activation_checkpointing}


def resolve_layout(cfg: TrainConfig, ranks: int, name: str | None = None,
                   grouped: bool | None = None) -> Layout:
    """The layout of a run with ``ranks`` processes (``grouped``: in a process group; default:
    whether one is up). ``harness.runtime.run`` resolves ``auto`` with the memory plan
    (``harness.cost.memory``) before training; an ``auto`` left here is ``ddp``."""
    name = name or cfg.layout
    if name == "auto":
        name = "ddp"
    if name not in LAYOUTS:
        raise HarnessError(f"train.layout: {name!r} is not one of auto, {', '.join(LAYOUTS)}")
    per_rank = cfg.batch_size // ranks
    micro = cfg.micro_batch_size or per_rank
    if per_rank % micro:
        raise HarnessError(f"train.micro_batch_size: {micro} does not divide the "
                           f"{per_rank} images per rank (batch_size {cfg.batch_size} over "
                           f"{ranks} ranks)")
    if grouped is None:
        grouped = dist.is_available() and dist.is_initialized()
    return Layout(name, ranks, micro, per_rank // micro, cfg.activation_checkpointing, grouped)


def world_mesh(device_type: str):
    """The one-dimensional mesh of all ranks: one per process group and device type, so that
    DTensor's caches (keyed by mesh) serve every model of the process."""
    from torch.distributed.device_mesh import DeviceMesh

    key = (id(dist.group.WORLD), device_type)
    if key not in _MESHES:
        _MESHES.clear()  # a new process group: the old meshes are dead
        _MESHES[key] = DeviceMesh(device_type, list(range(dist.get_world_size())))
    return _MESHES[key]


_MESHES: dict = {}


def checkpoint_blocks(model: nn.Module) -> None:
    """Recompute each block's activations in the backward instead of keeping them."""
    for block in getattr(model, "blocks", ()):
        block.forward = functools.partial(checkpoint, block.forward, use_reentrant=False)


def prepare(model: nn.Module, layout: Layout) -> nn.Module:
    """Shard, wrap and checkpoint ``model`` (in place) for ``layout``; returns the module the
    training loop calls (a DDP wrapper for ``ddp``, else ``model`` itself: under ``experts``
    :func:`micro_batches` averages the replicated gradients, DDP's job, itself)."""
    if layout.activation_checkpointing:
        checkpoint_blocks(model)
    if not layout.grouped:
        return model
    experts = shard_experts(model) if layout.experts_sharded else []
    if layout.fsdp:
        from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

        mesh = world_mesh(next(model.parameters()).device.type)
        # FSDP2 shards no scalar (e.g. Soft MoE's scale): those stay replicated, averaged here
        scalars = {p for p in model.parameters() if p.dim() == 0}
        for p in scalars:
            p.register_hook(_averaged)
        ignored = {p for e in experts for p in e.parameters()} | scalars or None
        for block in getattr(model, "blocks", ()):
            fully_shard(block, mesh=mesh, ignored_params=ignored)
        fully_shard(model, mesh=mesh, ignored_params=ignored)
        if hasattr(model, "pre_logits"):  # features for the few-shot probe
            register_fsdp_forward_method(model, "pre_logits")
        return model
    if experts:  # the expert shards differ per rank: only the rest is replicated
        _broadcast_replicated(model)
        return model
    return distributed.wrap(model)


def _replicated(model: nn.Module) -> list[nn.Parameter]:
    """The parameters every rank holds in full: all but the expert shards."""
    experts = {id(p) for m in model.modules() if isinstance(m, ShardedExperts)
               for p in m.parameters()}
    return [p for p in model.parameters() if id(p) not in experts]


@torch.no_grad()
def _broadcast_replicated(model: nn.Module) -> None:
    """Rank 0's replicated parameters and buffers to every rank (what DDP does at wrap)."""
    for t in [*_replicated(model), *model.buffers()]:
        dist.broadcast(t, src=0)


@torch.no_grad()
def average_replicated_gradients(model: nn.Module) -> None:
    """Average the gradients of the replicated parameters over the ranks, in flat buckets of
    at most ``GRAD_BUCKET_BYTES`` (one all-reduce each): DDP's job, for a model whose expert
    shards DDP must not touch. Expert gradients are left alone (their hook scaled them)."""
    world = dist.get_world_size()
    for bucket in _buckets([p.grad for p in _replicated(model) if p.grad is not None]):
        flat = torch.cat([g.reshape(-1) for g in bucket])
        dist.all_reduce(flat)
        flat.div_(world)
        for g, part in zip(bucket, flat.split([g.numel() for g in bucket]), strict=True):
            g.copy_(part.view_as(g))


def _buckets(grads: list[torch.Tensor]) -> Iterator[list[torch.Tensor]]:
    """Consecutive runs of ``grads`` of one dtype and device, each up to ``GRAD_BUCKET_BYTES``
    (or one larger tensor)."""
    bucket: list[torch.Tensor] = []
    size = 0
    for grad in grads:
        if bucket and (size + grad.nbytes > GRAD_BUCKET_BYTES or grad.dtype != bucket[0].dtype
                       or grad.device != bucket[0].device):
            yield bucket
            bucket, size = [], 0
        bucket.append(grad)
        size += grad.nbytes
    if bucket:
        yield bucket


def _averaged(grad: torch.Tensor) -> torch.Tensor:
    grad = grad.clone()
    dist.all_reduce(grad)
    return grad / dist.get_world_size()


def micro_batches(model: nn.Module, x: torch.Tensor, y: torch.Tensor, layout: Layout
                  ) -> Iterator[tuple[torch.Tensor, torch.Tensor, float]]:
    """(images, labels, weight) per micro-batch, weight = its share of the rank's batch; the
    gradients are synchronised over the ranks in the last micro-batch's backward only (DDP,
    FSDP2), or, with experts sharded and the rest replicated, once the caller asks for the
    next micro-batch after the last one's backward (the loop's end)."""
    chunks = list(zip(x.split(layout.micro_batch_size), y.split(layout.micro_batch_size),
                      strict=True))
    for i, (xc, yc) in enumerate(chunks):
        last = i == len(chunks) - 1
        if hasattr(model, "set_requires_gradient_sync"):  # FSDP2
            model.set_requires_gradient_sync(last)
            yield xc, yc, len(yc) / len(y)
        elif isinstance(model, nn.parallel.DistributedDataParallel) and not last:
            with model.no_sync():
                yield xc, yc, len(yc) / len(y)
        else:
            yield xc, yc, len(yc) / len(y)
    if _averages_itself(model, layout):
        average_replicated_gradients(model)


def _averages_itself(model: nn.Module, layout: Layout) -> bool:
    """Whether ``prepare`` left the replicated gradients' averaging to the training loop:
    experts sharded, the rest neither in DDP nor in FSDP, over several ranks."""
    return (layout.experts_sharded and not layout.fsdp and dist.get_world_size() > 1
            and not isinstance(model, nn.parallel.DistributedDataParallel))


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if hasattr(t, "to_local") else t


def clip_grad_norm(model: nn.Module, max_norm: float) -> torch.Tensor:
    """Clip the global gradient norm over every parameter of the run, wherever it is held:
    replicated (counted once), FSDP-sharded (DTensors) or in expert shards (summed over the
    ranks). Returns the norm."""
    experts = [p for m in model.modules() if isinstance(m, ShardedExperts)
               for p in m.parameters() if p.grad is not None]
    expert_ids = {id(p) for p in experts}
    others = [p for p in model.parameters() if p.grad is not None and id(p) not in expert_ids]
    fsdp = [p for p in others if hasattr(p.grad, "to_local")]
    replicated = [p for p in others if not hasattr(p.grad, "to_local")]
    if not experts and not fsdp:
        return nn.utils.clip_grad_norm_(replicated, max_norm)
    squares = torch.zeros((), dtype=torch.float32, device=others[0].grad.device)
    if fsdp:
        squares = squares + nn.utils.get_total_norm([p.grad for p in fsdp]).full_tensor() ** 2
    if replicated:
        squares = squares + nn.utils.get_total_norm([p.grad for p in replicated]) ** 2
    if experts:
        local = nn.utils.get_total_norm([p.grad for p in experts]) ** 2
        dist.all_reduce(local)
        squares = squares + local
    total = squares.sqrt()
    coef = min(1.0, max_norm / (float(total) + 1e-6))
    if coef < 1.0:
        for p in others + experts:
            _local(p.grad).mul_(coef)
    return total


def peak_memory_mb(device: torch.device) -> tuple[float, str]:
    """The largest peak memory of any rank of the run so far, in MiB, and how it was taken:
    ``torch.cuda.max_memory_allocated`` on CUDA; on CPU the process's peak resident set
    (``getrusage``), which also counts the interpreter, libraries and data."""
    if device.type == "cuda":
        peak = torch.tensor(float(torch.cuda.max_memory_allocated(device)), device=device)
        method = "torch.cuda.max_memory_allocated"
    else:
        import resource

        peak = torch.tensor(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024.0)
        method = "peak resident set size (getrusage)"
    if distributed.current().enabled:
        dist.all_reduce(peak, op=dist.ReduceOp.MAX)
    return float(peak) / 2**20, method
