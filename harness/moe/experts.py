"""All experts of one MoE layer as one module, run as batched matmuls."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class BatchedExperts(nn.Module):
    """``num_experts`` two-layer MLPs (dim -> hidden -> dim, exact GELU) with stacked weights.

    ``forward`` takes (E, n, dim), row block e going to expert e, and runs two ``baddbmm``
    calls: no Python loop over experts.
    """

    def __init__(self, num_experts: int, dim: int, hidden_dim: int):
        super().__init__()
        self.num_experts, self.dim, self.hidden_dim = num_experts, dim, hidden_dim
        self.w1 = nn.Parameter(torch.empty(num_experts, dim, hidden_dim))
        self.b1 = nn.Parameter(torch.zeros(num_experts, hidden_dim))
        self.w2 = nn.Parameter(torch.empty(num_experts, hidden_dim, dim))
        self.b2 = nn.Parameter(torch.zeros(num_experts, dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Xavier-uniform per expert, the same init as the dense MLP's nn.Linear layers get.
        bound = math.sqrt(6.0 / (self.dim + self.hidden_dim))
        nn.init.uniform_(self.w1, -bound, bound)
        nn.init.uniform_(self.w2, -bound, bound)
        nn.init.zeros_(self.b1)
        nn.init.zeros_(self.b2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3 or x.shape[0] != self.num_experts or x.shape[2] != self.dim:
            raise ValueError(
                f"BatchedExperts expects (num_experts={self.num_experts}, n, dim={self.dim}), "
                f"got {tuple(x.shape)}"
            )
        h = F.gelu(torch.baddbmm(self.b1.unsqueeze(1), x, self.w1))
        return torch.baddbmm(self.b2.unsqueeze(1), h, self.w2)

    def extra_repr(self) -> str:
        return f"num_experts={self.num_experts}, dim={self.dim}, hidden_dim={self.hidden_dim}"
