"""The all-to-all overhead of a sharded Soft MoE layer: ``moe-harness bench all-to-all``.

``ranks`` processes on this machine (gloo on CPU, NCCL on CUDA) each hold ``batch`` images
and ``experts / ranks`` experts of one Soft MoE layer (:class:`ShardedExperts`); every repeat
times a forward and backward of the layer and, inside it, the four all-to-all calls (two in
the forward, their reverses in the backward). The share is the median over repeats of
all-to-all time / layer time on rank 0.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from harness.runtime.distributed import pick_device
from harness.runtime.lifeline import tether, this_process
from harness.runtime.parallel.all_to_all import CommTimer
from harness.runtime.parallel.experts import shard_experts


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Layer(torch.nn.Module):
    """One Soft MoE layer in the shape ``shard_experts`` walks (``moe_layers``)."""

    def __init__(self, layer: torch.nn.Module):
        super().__init__()
        self.layer = layer

    def moe_layers(self) -> list[torch.nn.Module]:
        return [self.layer]


def _worker(rank: int, ranks: int, port: int, out: str, shape: dict, repeats: int,
            warmup: int, device: str, threads: int, submitter: tuple[int, str | None]) -> None:
    from harness.nn.moe import SoftMoE

    tether(submitter)  # a rank dies with the command, even killed, never waits for ever
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(threads)
    dev = torch.device(device if device == "cpu" else f"cuda:{rank}")
    dist.init_process_group("gloo" if dev.type == "cpu" else "nccl", rank=rank,
                            world_size=ranks)
    try:
        torch.manual_seed(0)
        layer = SoftMoE(shape["dim"], shape["experts"], shape["slots"], 4 * shape["dim"]).to(dev)
        shard_experts(_Layer(layer))
        x = torch.randn(shape["batch"], shape["tokens"], shape["dim"], device=dev,
                        requires_grad=True)
        layer_s, comm_s = [], []
        for i in range(warmup + repeats):
            CommTimer.reset(enabled=True)
            dist.barrier()
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            tic = time.perf_counter()
            layer(x).sum().backward()
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            if i >= warmup:
                layer_s.append(time.perf_counter() - tic)
                comm_s.append(CommTimer.seconds)
        CommTimer.reset(enabled=False)
        if rank == 0:
            shares = [c / t for c, t in zip(comm_s, layer_s, strict=True)]
            Path(out).write_text(json.dumps({
                "layer_ms": 1e3 * statistics.median(layer_s),
                "all_to_all_ms": 1e3 * statistics.median(comm_s),
                "share": statistics.median(shares), "shares": shares}))
    finally:
        dist.destroy_process_group()


def bench_all_to_all(*, ranks: int = 2, dim: int = 384, tokens: int = 196, batch: int = 8,
                     experts: int = 32, slots: int = 1, repeats: int = 10, warmup: int = 2,
                     device: str = "cpu", threads: int = 1) -> dict[str, Any]:
    """Time a sharded Soft MoE layer's forward+backward over ``ranks`` local processes."""
    from harness.errors import HarnessError

    if experts % ranks:
        raise HarnessError(f"--experts: {experts} does not split over {ranks} ranks")
    if pick_device(device, "--device").type == "cuda" and torch.cuda.device_count() < ranks:
        raise HarnessError(f"--ranks: {ranks} ranks need a GPU each and torch sees "
                           f"{torch.cuda.device_count()}; allowed: 1 to "
                           f"{torch.cuda.device_count()}")
    shape = {"dim": dim, "tokens": tokens, "batch": batch, "experts": experts, "slots": slots}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        mp.spawn(_worker, args=(ranks, _free_port(), str(out), shape, repeats, warmup, device,
                                threads, this_process()), nprocs=ranks)
        result = json.loads(out.read_text())
    return {"ranks": ranks, "device": device, "threads_per_rank": threads, "repeats": repeats,
            **shape, **result}


