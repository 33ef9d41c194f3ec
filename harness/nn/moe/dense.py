"""The dense MLP block: what a block without MoE runs (the MoE layers' contract is
``harness.nn.moe.base.MoELayer``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from harness.nn.moe.experts import GELUS, check_gelu


class Mlp(nn.Module):
    """dim -> hidden -> dim with GELU (``gelu``: "erf" exact, or "tanh" approximation)."""

    def __init__(self, dim: int, hidden_dim: int, gelu: str = "erf"):
        super().__init__()
        self.gelu = check_gelu(gelu)
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, dim)
        for layer in (self.fc1, self.fc2):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate=GELUS[self.gelu]))
