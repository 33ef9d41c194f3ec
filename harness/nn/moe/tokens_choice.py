"""Tokens Choice (V-MoE): each token picks its top-k experts; full buffers drop tokens.

Axes: G groups, S tokens per group, E experts, K choices per token, C capacity, D dim.
"""

from __future__ import annotations

import torch

from harness.errors import ConfigError
from harness.nn.moe.routing import (
    SparseRouted,
    check_positive,
    coefficient_of_variation_sq,
    to_groups,
)


def buffer_positions(expert_idx: torch.Tensor, num_experts: int) -> torch.Tensor:
    """Position of each (group, choice, token) in its expert's buffer.

    ``expert_idx`` is (G, K, S), tokens already in priority order. All first choices are
    served before any second choice, as in V-MoE; within a choice, tokens in order.
    """
    g, k, s = expert_idx.shape
    onehot = torch.nn.functional.one_hot(expert_idx.reshape(g, k * s), num_experts)
    positions = onehot.cumsum(dim=1) - 1
    return (positions * onehot).sum(-1).reshape(g, k, s)


class TokensChoice(SparseRouted):
    """Top-k token routing with capacity, Batch Priority Routing and V-MoE's auxiliary losses.

    gates = softmax over experts of ``router(x)`` (plus Gaussian noise of std ``noise_std`` in
    training only). A kept token's output is the sum over its kept choices of gate × expert
    output; a dropped choice adds zero (the token still passes through the block's residual).
    ``aux_loss`` = (importance loss + load loss) / 2, both the squared coefficient of variation
    over experts. As in V-MoE, importance sums the noise-free gates (the routing uses the
    noisy ones); the load loss needs the noise, so it is zero when no noise is applied.
    Capacity: ``capacity_rounding`` of k·C·S/E (see ``compute_capacity``).
    """

    def __init__(
        self,
        dim: int,
        num_experts: int,
        hidden_dim: int,
        k: int = 1,
        capacity_factor: float = 1.0,
        bpr: bool = True,
        noise_std: float | None = None,
        group_size: int | None = None,
        capacity_rounding: str = "ceil",
        gelu: str = "erf",
    ):
        super().__init__(dim, num_experts, hidden_dim, capacity_factor, group_size,
                         noise_std=noise_std, capacity_rounding=capacity_rounding, gelu=gelu)
        check_positive("k", k)
        if k > num_experts:
            raise ConfigError(f"k must be <= num_experts, got k={k}, num_experts={num_experts}")
        self.k, self.bpr = k, bpr

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xg = to_groups(x, self.group_size)
        g, s, d = xg.shape
        e, k = self.num_experts, self.k
        capacity = self.capacity(s, k)

        logits = self.router(xg)  # (G, S, E)
        noisy = self.noisy(logits)
        gates = torch.softmax(noisy, dim=-1)
        top_gate, top_expert = gates.topk(k, dim=-1)  # (G, S, K)

        # Batch Priority Routing: serve tokens by their top gate, highest first.
        if self.bpr:
            order = top_gate[..., 0].argsort(dim=1, descending=True, stable=True)
        else:
            order = torch.arange(s, device=x.device).expand(g, s)
        expert_sorted = top_expert.gather(1, order.unsqueeze(-1).expand(-1, -1, k))
        pos_sorted = buffer_positions(expert_sorted.transpose(1, 2), e).transpose(1, 2)
        position = torch.empty_like(pos_sorted).scatter_(
            1, order.unsqueeze(-1).expand(-1, -1, k), pos_sorted
        )  # (G, S, K), back in token order
        kept = position < capacity

        # Scatter kept (token, choice) pairs into one (E * G * C, D) buffer.
        group = torch.arange(g, device=x.device).view(g, 1, 1)
        slot = (top_expert * g + group) * capacity + position.clamp(max=capacity - 1)
        token = (group * s + torch.arange(s, device=x.device).view(1, s, 1)).expand(g, s, k)
        buffer = xg.new_zeros(e * g * capacity, d)
        buffer = buffer.index_copy(0, slot[kept], xg.reshape(g * s, d)[token[kept]])
        out = self.experts(buffer.view(e, g * capacity, d)).reshape(e * g * capacity, d)

        weight = (top_gate * kept).unsqueeze(-1)  # dropped choices weigh zero
        y = (out[slot.reshape(-1)].view(g, s, k, d) * weight).sum(dim=2)

        self.aux_loss = self._aux_loss(logits, noisy, gates)
        if self.track_metrics:
            self.metric_tensors = self._metrics(gates, kept, top_expert)
        return y.reshape(x.shape)

    def _aux_loss(self, logits, noisy, gates) -> torch.Tensor:
        # Importance on the noise-free gates, as V-MoE defines it (the routing used the noisy).
        clean = gates if noisy is logits else torch.softmax(logits, dim=-1)
        importance = coefficient_of_variation_sq(clean.sum(dim=1))
        if not (self.training and self.noise_std > 0):
            return importance / 2
        # Load: probability that expert e is among a token's top-k under fresh noise.
        threshold = noisy.topk(self.k, dim=-1).values[..., -1:]
        normal = torch.distributions.Normal(0.0, self.noise_std, validate_args=False)
        p_selected = 1.0 - normal.cdf(threshold - logits)
        load = coefficient_of_variation_sq(p_selected.sum(dim=1))
        return (importance + load) / 2

    @torch.no_grad()
    def _metrics(self, gates, kept, top_expert) -> dict[str, torch.Tensor]:
        counts = torch.zeros(self.num_experts, device=gates.device)
        chosen = top_expert[kept]
        counts.index_add_(0, chosen, torch.ones_like(chosen, dtype=counts.dtype))
        return {
            "dropped_fraction": 1.0 - kept.float().mean(),
            "expert_load_cv": counts.std(unbiased=False) / counts.mean().clamp_min(1e-9),
            "gate_top1": gates.max(dim=-1).values.float().mean(),
        }

    def extra_repr(self) -> str:
        return (
            f"num_experts={self.num_experts}, k={self.k}, capacity_factor={self.capacity_factor}, "
            f"bpr={self.bpr}, noise_std={self.noise_std:g}, group_size={self.group_size}, "
            f"capacity_rounding={self.capacity_rounding!r}"
        )
