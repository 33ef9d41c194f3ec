"""Attention backends behind one function.

All backends take q, k, v in the layout (batch, tokens, heads, head_dim) (xformers' layout) and
return the same layout:

- ``sdpa``: ``torch.nn.functional.scaled_dot_product_attention`` (default everywhere).
- ``xformers``: ``xformers.ops.memory_efficient_attention``; CUDA only.
- ``math``: the plain reference, softmax(q kᵀ / sqrt(d)) v, written out.
- ``auto``: xformers on CUDA when installed, else sdpa.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from harness.errors import ConfigError
from harness.spec.rules import check_backend


@functools.cache
def xformers_available() -> bool:
    try:
        import xformers.ops  # noqa: F401
    except Exception:  # ImportError, or a build that fails to load its kernels
        return False
    return True


def resolve_backend(backend: str, device: torch.device | str) -> str:
    """The concrete backend that ``backend`` runs as on ``device``; a clear error if it cannot."""
    check_backend(backend)
    is_cuda = torch.device(device).type == "cuda"
    if backend == "auto":
        return "xformers" if is_cuda and xformers_available() else "sdpa"
    if backend == "xformers":
        if not is_cuda:
            raise ConfigError(
                f"attention: backend 'xformers' needs a CUDA device, but the model runs on "
                f"{torch.device(device).type}; use 'sdpa', 'math' or 'auto'"
            )
        if not xformers_available():
            raise ConfigError(
                "attention: backend 'xformers' needs the xformers package "
                "(pip install 'moe-harness[xformers]'); use 'sdpa', 'math' or 'auto'"
            )
    return backend


def math_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(q.shape[-1])
    return torch.einsum("bhqk,bkhd->bqhd", scores.softmax(dim=-1), v)


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)


def xformers_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    import xformers.ops as xops

    return xops.memory_efficient_attention(q, k, v)


KERNELS = {"sdpa": sdpa_attention, "xformers": xformers_attention, "math": math_attention}


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
           backend: str = "auto") -> torch.Tensor:
    """Multi-head attention without masking; returns (batch, tokens_q, heads, head_dim)."""
    return KERNELS[resolve_backend(backend, q.device)](q, k, v)
