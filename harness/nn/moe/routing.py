"""Helpers shared by the routers: capacity, grouping, metric math."""

from __future__ import annotations

import math

import torch
from torch import nn

from harness.errors import ConfigError
from harness.nn.moe.base import MoELayer
from harness.nn.moe.experts import BatchedExperts, check_gelu
from harness.spec.rules import (
    check_capacity_rule,
    compute_capacity,
)


def to_groups(x: torch.Tensor, group_size: int | None) -> torch.Tensor:
    """(batch, tokens, dim) -> (groups, group_size, dim); one image per group by default."""
    batch, tokens, dim = x.shape
    if group_size is None or group_size == tokens:
        return x
    if (batch * tokens) % group_size:
        raise ConfigError(
            f"group_size {group_size} must divide batch*tokens = {batch}*{tokens} "
            f"= {batch * tokens}"
        )
    return x.reshape(-1, group_size, dim)


def normalized_entropy(p: torch.Tensor, dim: int) -> torch.Tensor:
    """Mean entropy of the distributions ``p`` along ``dim``, divided by its maximum (log n)."""
    n = p.shape[dim]
    if n <= 1:
        return p.new_zeros(())
    ent = -(p * torch.log(p.clamp_min(1e-30))).sum(dim)
    return ent.mean() / math.log(n)


def coefficient_of_variation_sq(x: torch.Tensor) -> torch.Tensor:
    """(std / mean)² over the last axis, averaged over the others (V-MoE's balance losses)."""
    return (x.std(dim=-1, unbiased=False) / (x.mean(dim=-1) + 1e-9)).pow(2).mean()


def check_positive(name: str, value: int) -> None:
    if not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")


class SparseRouted(MoELayer):
    """What Tokens Choice and Experts Choice share: a linear router (dim -> E, no bias,
    normal init with std dim^-1/2), the experts, the capacity factor and rule, the routing
    group size and the router noise.

    ``noise_std``: std of the Gaussian noise added to the router logits in training only
    (None: 1/E, vmoe's default for both sparse routers; 0: none).
    """

    router_parameter_names = ("router.weight",)

    def __init__(self, dim: int, num_experts: int, hidden_dim: int, capacity_factor: float,
                 group_size: int | None, noise_std: float | None = None,
                 capacity_rounding: str = "ceil", gelu: str = "erf"):
        check_positive("num_experts", num_experts)
        super().__init__(num_experts)
        self.capacity_factor = capacity_factor
        self.group_size = group_size
        self.capacity_rounding = check_capacity_rule(capacity_rounding)
        self.noise_std = 1.0 / num_experts if noise_std is None else float(noise_std)
        if self.noise_std < 0:
            raise ConfigError(f"noise_std must be >= 0, got {noise_std}")
        self.router = nn.Linear(dim, num_experts, bias=False)
        nn.init.normal_(self.router.weight, std=dim**-0.5)
        self.experts = BatchedExperts(num_experts, dim, hidden_dim, gelu=check_gelu(gelu))

    def capacity(self, group_tokens: int, k: int = 1) -> int:
        """Buffer rows per expert for a group of ``group_tokens`` tokens, K choices each."""
        return compute_capacity(group_tokens, self.num_experts, self.capacity_factor,
                                self.capacity_rounding, k)

    def noisy(self, logits: torch.Tensor) -> torch.Tensor:
        """The logits the routing decision uses: with noise in training, else as they are."""
        if self.training and self.noise_std > 0:
            return logits + self.noise_std * torch.randn_like(logits)
        return logits
