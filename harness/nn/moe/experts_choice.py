"""Experts Choice (Zhou et al., 2022): each expert takes its top-C tokens of the group.

Axes: G groups, S tokens per group, E experts, C capacity, D dim.
"""

from __future__ import annotations

import torch

from harness.nn.moe.routing import SparseRouted, to_groups


class ExpertsChoice(SparseRouted):
    """gates = softmax over experts of ``router(x)``, plus Gaussian noise of std ``noise_std``
    on the logits in training only (None: 1/E, as the paper's Experts Choice config; 0: none,
    as Zhou et al.); expert e takes the C tokens with the largest gate in column e,
    C = ``capacity_rounding`` of capacity_factor · S / E (see ``compute_capacity``). A token's
    output is the gate-weighted sum over the experts that took it (zero if none did). No
    auxiliary loss.
    """

    def __init__(
        self,
        dim: int,
        num_experts: int,
        hidden_dim: int,
        capacity_factor: float = 1.0,
        group_size: int | None = None,
        noise_std: float | None = None,
        capacity_rounding: str = "ceil",
        gelu: str = "erf",
    ):
        super().__init__(dim, num_experts, hidden_dim, capacity_factor, group_size,
                         noise_std=noise_std, capacity_rounding=capacity_rounding, gelu=gelu)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xg = to_groups(x, self.group_size)
        g, s, d = xg.shape
        e = self.num_experts
        capacity = self.capacity(s)

        gates = torch.softmax(self.noisy(self.router(xg)), dim=-1)  # (G, S, E)
        top_gate, top_token = gates.transpose(1, 2).topk(capacity, dim=-1)  # (G, E, C)

        token = (top_token + torch.arange(g, device=x.device).view(g, 1, 1) * s).reshape(-1)
        expert_in = xg.reshape(g * s, d)[token].view(g, e, capacity, d)
        expert_in = expert_in.transpose(0, 1).reshape(e, g * capacity, d)
        out = self.experts(expert_in).view(e, g, capacity, d).transpose(0, 1)  # (G, E, C, D)
        weighted = (out * top_gate.unsqueeze(-1)).reshape(-1, d)
        # in the experts' dtype: under autocast that is bfloat16, not x's float32
        y = xg.new_zeros(g * s, d, dtype=weighted.dtype).index_add(0, token, weighted)

        self.aux_loss = x.new_zeros(())
        if self.track_metrics:
            self.metric_tensors = self._metrics(token, g * s)
        return y.reshape(x.shape)

    @torch.no_grad()
    def _metrics(self, token: torch.Tensor, num_tokens: int) -> dict[str, torch.Tensor]:
        taken = torch.bincount(token, minlength=num_tokens)
        coverage = (taken > 0).float().mean()
        return {
            "dropped_fraction": 1.0 - coverage,
            "token_coverage": coverage,
            "experts_per_token": taken.float().mean(),
        }

    def extra_repr(self) -> str:
        return (
            f"num_experts={self.num_experts}, capacity_factor={self.capacity_factor}, "
            f"group_size={self.group_size}, noise_std={self.noise_std:g}, "
            f"capacity_rounding={self.capacity_rounding!r}"
        )
