"""Multi-process (DistributedDataParallel) runs: one process per GPU, rank 0 speaks for the run.

Where the processes come from is not this module's business; it only reads the environment:

- ``WORLD_SIZE``/``RANK``/``MASTER_ADDR``/``MASTER_PORT`` already set (``torchrun``, a test that
  spawns processes): used as they are;
- inside a submitit SLURM job with several tasks (``executor.slurm.gpus_per_run: N`` makes
  ``tasks_per_node = N``, one task per GPU): ``submitit.helpers.TorchDistributedEnvironment``
  exports them (the master is the job's first node, the port a function of the job id);
- otherwise the run is a single process and nothing here does anything.

``session(device)`` initialises the default process group (NCCL on CUDA, gloo on CPU) and
destroys it on the way out; inside, ``is_main()`` is true on rank 0 only. The training loop
(``harness.runtime.train``) wraps the model in DDP, gives each rank its own shard of every global
batch, and averages the logged loss over the ranks; only rank 0 writes checkpoints, progress
and the record (``harness.runtime.run``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from harness.errors import HarnessError


@dataclass(frozen=True)
class Context:
    """This process's place in the run: ``rank`` of ``world_size``, on GPU ``local_rank``."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _submitit_tasks() -> int:
    """Tasks of the submitit SLURM job running this process (1 outside one)."""
    if os.environ.get("SUBMITIT_EXECUTOR") != "slurm":
        return 1
    return int(os.environ.get("SLURM_NTASKS", "1"))


def env_context() -> Context:
    """The process's rank and world size as the environment states them, before any init."""
    if "WORLD_SIZE" in os.environ:
        return Context(int(os.environ.get("RANK", "0")), int(os.environ["WORLD_SIZE"]),
                       int(os.environ.get("LOCAL_RANK", "0")))
    if _submitit_tasks() > 1:
        return Context(int(os.environ.get("SLURM_PROCID", "0")), _submitit_tasks(),
                       int(os.environ.get("SLURM_LOCALID", "0")))
    return Context()


def current() -> Context:
    """The live process group's context (a single process when there is none)."""
    if dist.is_available() and dist.is_initialized():
        return Context(dist.get_rank(), dist.get_world_size(),
                       int(os.environ.get("LOCAL_RANK", "0")))
    return Context()


def is_main() -> bool:
    """True on rank 0, or when torch.distributed is not in use."""
    return current().is_main


def setup(device_type: str) -> Context:
    """Join the run's process group if the environment describes one (see the module doc).

    ``device_type`` picks the backend: ``nccl`` for ``cuda``, ``gloo`` otherwise. A group that
    is already initialised (by the caller) is used as it is.
    """
    if dist.is_available() and dist.is_initialized():
        return current()
    if "WORLD_SIZE" not in os.environ and _submitit_tasks() > 1:
        from submitit.helpers import TorchDistributedEnvironment

        # CUDA_VISIBLE_DEVICES is left alone: each task sees the job's GPUs, uses cuda:LOCAL_RANK
        TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    ctx = env_context()
    if not ctx.enabled:
        return ctx
    if not dist.is_available():
        raise HarnessError(f"this run has {ctx.world_size} processes but this torch build has "
                           "no torch.distributed")
    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        torch.cuda.set_device(ctx.local_rank)
    dist.init_process_group(backend=backend, init_method="env://", rank=ctx.rank,
                            world_size=ctx.world_size)
    return ctx


def teardown(ctx: Context) -> None:
    if ctx.enabled and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextmanager
def session(device_type: str) -> Iterator[Context]:
    """``setup`` on entry, ``teardown`` on exit (also on errors) for groups it created."""
    created = not (dist.is_available() and dist.is_initialized())
    ctx = setup(device_type)
    try:
        yield ctx
    finally:
        if created:
            teardown(ctx)


def pick_device(name: str, where: str = "train.device") -> torch.device:
    """The device ``name`` asks for: ``auto`` (CUDA when torch sees one, else the CPU), ``cpu``,
    ``cuda`` or ``cuda:N``; anything else, or CUDA where there is none, is an error naming
    ``where`` (the field or option that gave ``name``)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise HarnessError(f"{where}: {name!r} but torch sees no CUDA device (torch "
                           f"{torch.__version__}); use 'cpu' or 'auto'")
    if name != "cpu" and not name.startswith("cuda"):
        raise HarnessError(f"{where}: {name!r}; allowed: auto, cpu, cuda, cuda:N")
    return torch.device(name)


def device_for(device: torch.device, ctx: Context | None = None) -> torch.device:
    """The rank's device: ``cuda:LOCAL_RANK`` for a multi-process CUDA run, else ``device``."""
    ctx = ctx or current()
    if ctx.enabled and device.type == "cuda":
        return torch.device("cuda", ctx.local_rank)
    return device


# --- training helpers ---------------------------------------------------------------------------
def wrap(model: nn.Module) -> nn.Module:
    """``model`` in DistributedDataParallel when there are several processes, else itself."""
    ctx = current()
    if not ctx.enabled:
        return model
    device = next(model.parameters()).device
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids, output_device=None
                                               if ids is None else ids[0])


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DDP wrapper (its ``aux_loss``, metrics and state dict), or itself."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def check_batch(batch_size: int) -> None:
    """Every rank takes an equal slice of the global batch: it must divide evenly."""
    ctx = current()
    if batch_size % ctx.world_size:
        raise HarnessError(f"train.batch_size: {batch_size} does not split evenly over the "
                           f"run's {ctx.world_size} processes (one per GPU)")


def shard(indices: torch.Tensor) -> torch.Tensor:
    """This rank's contiguous slice of a global batch's indices (all of them when alone).

    Every rank draws the same global batch from the same seeded generator, so the generator's
    state is the same on all ranks and rank 0's checkpoint resumes every rank exactly.
    """
    ctx = current()
    if not ctx.enabled:
        return indices
    per = len(indices) // ctx.world_size
    return indices[ctx.rank * per:(ctx.rank + 1) * per]


def mean(values: torch.Tensor) -> torch.Tensor:
    """``values`` averaged over the ranks (an all-reduce), or unchanged when alone."""
    ctx = current()
    if not ctx.enabled:
        return values
    values = values.clone()
    dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values / ctx.world_size


def barrier() -> None:
    """Wait for every rank (nothing when alone)."""
    if current().enabled:
        dist.barrier()


__all__ = ["Context", "barrier", "check_batch", "current", "device_for", "env_context",
           "is_main", "mean", "pick_device", "session", "setup", "shard", "teardown", "unwrap",
           "wrap"]
