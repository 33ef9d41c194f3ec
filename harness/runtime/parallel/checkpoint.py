"""Sharded checkpoints of a run's model and optimizer with ``torch.distributed.checkpoint``.

Every rank writes the pieces it holds: FSDP2's parameter shards are DTensors already, and an
expert-parallel rank's block of experts (and of their AdamW moments) is saved as its rows of
one tensor sharded along the experts axis. Loading reshards: a run checkpointed on 4 ranks
resumes on 2 (or on one process, or under another layout); each rank reads the rows it holds
now. The files of one checkpoint sit in one folder, written by every rank at once.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from harness.runtime.parallel.experts import ShardedExperts
from harness.runtime.parallel.layout import world_mesh


def _expert_shards(model: nn.Module) -> dict[str, nn.Parameter]:
    """FQN -> parameter of every expert shard (FQNs as the state dicts name them)."""
    return {f"{name}.{p_name}": p for name, mod in model.named_modules()
            if isinstance(mod, ShardedExperts) for p_name, p in mod.named_parameters()}


def _as_sharded(local: torch.Tensor):
    """This rank's rows of a tensor split evenly along dim 0 over all ranks."""
    from torch.distributed.tensor import DTensor, Shard

    return DTensor.from_local(local, world_mesh(local.device.type), [Shard(0)], run_check=False)


def _states(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """{"model", "optimizer"} state dicts of this rank, expert shards as sharded tensors."""
    inner = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    model_sd, optim_sd = get_state_dict(model, optimizer)
    # the optimizer's entries may be its live dicts: replaced, never changed in place
    optim_sd = {**optim_sd, "state": dict(optim_sd["state"])}
    for fqn, param in _expert_shards(inner).items():
        model_sd[fqn] = _as_sharded(model_sd[fqn])
        optim_sd["state"][fqn] = {
            key: _as_sharded(value) if torch.is_tensor(value) and value.shape == param.shape
            else value for key, value in optim_sd["state"].get(fqn, {}).items()}
    return {"model": model_sd, "optimizer": optim_sd}


@contextmanager
def _single_process_quiet():
    """Without a process group, DCP warns that it assumes one process: that is the intent."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def _alone() -> bool:
    return not (torch.distributed.is_available() and torch.distributed.is_initialized())


def save(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Write this rank's part of the model and optimizer states into ``folder`` (every rank
    calls it; the folder is complete when all have returned)."""
    with _single_process_quiet():
        dcp.save(_states(model, optimizer), checkpoint_id=str(folder), no_dist=_alone())


def load(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Read the model and optimizer states from ``folder`` into this rank's shards (every rank
    calls it), whatever number of ranks and layout wrote it.

    All or nothing: when the folder cannot be read (missing, truncated or corrupt files; DCP
    raises ``CheckpointException``, a ``BaseException``, on every rank), the model's weights
    are put back as they were, the optimizer is left without state (as new), and
    ``UnreadableShards`` is raised, so that the caller can try an older checkpoint or start
    afresh."""
    if not (folder / ".metadata").is_file():
        raise UnreadableShards(f"{folder}: no .metadata (not a complete sharded checkpoint)")
    with torch.no_grad():
        before = [t.to("cpu", copy=True) for t in _locals(model)]
    try:
        _load(folder, model, optimizer)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as err:  # noqa: BLE001 - CheckpointException is a BaseException
        with torch.no_grad():
            for tensor, saved in zip(_locals(model), before, strict=True):
                tensor.copy_(saved)
        optimizer.state.clear()  # get_state_dict gave it zero moments at step 1
        from harness.runtime.checkpoint import first_line

        raise UnreadableShards(f"{folder}: {first_line(err)}") from err


class UnreadableShards(Exception):
    """A sharded checkpoint folder that could not be read; nothing was changed."""


def _locals(model: nn.Module) -> list[torch.Tensor]:
    """This rank's own storage of every parameter and buffer (a DTensor's local shard)."""
    inner = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    return [t.to_local() if hasattr(t, "to_local") else t
            for t in (*inner.parameters(), *inner.buffers())]


def _load(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    states = _states(model, optimizer)
    with _single_process_quiet():
        dcp.load(states, checkpoint_id=str(folder), no_dist=_alone())
    inner = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    shards = _expert_shards(inner)
    for fqn in shards:
        states["model"][fqn] = states["model"][fqn].to_local()
        states["optimizer"]["state"][fqn] = {
            key: value.to_local() if hasattr(value, "to_local") else value
            for key, value in states["optimizer"]["state"].get(fqn, {}).items()}
    set_state_dict(model, optimizer, model_state_dict=states["model"],
                   optim_state_dict=states["optimizer"])


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole model's state dict, every tensor complete, on every rank (a collective):
    FSDP shards and expert shards are gathered."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    inner = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    state = get_model_state_dict(model)
    for fqn in _expert_shards(inner):
        state[fqn] = _as_sharded(state[fqn])
    return {k: v.full_tensor() if hasattr(v, "full_tensor") else v for k, v in state.items()}
