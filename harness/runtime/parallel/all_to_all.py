"""All-to-all over the ranks with autograd, and a timer of the time spent in it."""

from __future__ import annotations

import time

import torch
import torch.distributed as dist


class CommTimer:
    """Seconds spent inside :func:`all_to_all` (forward and backward) while ``enabled``.

    On CUDA the collective is waited for (``synchronize``) so that the time is its own; on
    CPU (gloo) the call returns when the exchange is done.
    """

    enabled = False
    seconds = 0.0
    calls = 0

    @classmethod
    def reset(cls, enabled: bool = True) -> None:
        cls.enabled, cls.seconds, cls.calls = enabled, 0.0, 0


def _exchange(x: torch.Tensor, group) -> torch.Tensor:
    """Split ``x`` in equal blocks along dim 0; block q goes to rank q, and block q of the
    result comes from rank q."""
    x = x.contiguous()
    out = torch.empty_like(x)
    if not CommTimer.enabled:
        dist.all_to_all_single(out, x, group=group)
        return out
    if x.is_cuda:
        torch.cuda.synchronize(x.device)
    tic = time.perf_counter()
    dist.all_to_all_single(out, x, group=group)
    if x.is_cuda:
        torch.cuda.synchronize(x.device)
    CommTimer.seconds += time.perf_counter() - tic
    CommTimer.calls += 1
    return out


class _AllToAll(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return _exchange(x, group)

    @staticmethod
    def backward(ctx, grad):
        # the reverse exchange: equal blocks make it the same call
        return _exchange(grad, ctx.group), None


def all_to_all(x: torch.Tensor, group=None) -> torch.Tensor:
    """Block q (of R equal blocks along dim 0) of ``x`` to rank q; differentiable."""
    return _AllToAll.apply(x, group)
