"""Soft MoE (Puigcerver et al., 2024): every slot is a softmax-weighted mix of all tokens."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from harness.errors import ConfigError
from harness.moe.experts import BatchedExperts
from harness.moe.routing import check_positive, normalized_entropy

Weights = Literal["soft", "uniform", "identity"]
WEIGHT_KINDS = ("soft", "uniform", "identity")


def l2_normalize(x: torch.Tensor, dim: int) -> torch.Tensor:
    """x / (||x|| + 1e-6), as the paper writes it."""
    return x / (x.pow(2).sum(dim=dim, keepdim=True).sqrt() + 1e-6)


class SoftMoE(nn.Module):
    """Soft MoE layer mapping (batch, m tokens, dim) -> (batch, m, dim); one image per group.

    logits = X·Φ over n·p slots; dispatch D = softmax over tokens (per slot), slot inputs
    X̃ = Dᵀ·X; combine C = softmax over all slots (per token), Y = C·Ỹ. Slot i belongs to expert
    i // slots_per_expert. ``dispatch``/``combine`` = "uniform" or "identity" give the paper's
    fixed-routing ablations (identity needs m == n·p).
    """

    def __init__(
        self,
        dim: int,
        num_experts: int,
        slots_per_expert: int,
        hidden_dim: int,
        normalize: bool = True,
        dispatch: Weights = "soft",
        combine: Weights = "soft",
    ):
        super().__init__()
        check_positive("num_experts", num_experts)
        check_positive("slots_per_expert", slots_per_expert)
        for name, value in (("dispatch", dispatch), ("combine", combine)):
            if value not in WEIGHT_KINDS:
                raise ConfigError(f"SoftMoE {name} must be one of {WEIGHT_KINDS}, got {value!r}")
        self.num_experts, self.slots_per_expert = num_experts, slots_per_expert
        self.normalize, self.dispatch_kind, self.combine_kind = normalize, dispatch, combine
        self.phi = nn.Parameter(torch.empty(dim, num_experts, slots_per_expert))
        nn.init.normal_(self.phi, std=dim**-0.5)
        self.scale = nn.Parameter(torch.ones(()))
        self.experts = BatchedExperts(num_experts, dim, hidden_dim)
        self.aux_loss = torch.zeros(())
        self.metrics: dict[str, float] = {}
        self.track_metrics = True

    @property
    def num_slots(self) -> int:
        return self.num_experts * self.slots_per_expert

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, m, n·p) token-slot logits."""
        phi = self.phi.reshape(self.phi.shape[0], self.num_slots)
        if self.normalize:
            return l2_normalize(x, -1) @ (self.scale * l2_normalize(phi, 0))
        return x @ phi

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, m, dim = x.shape
        n, e, p = self.num_slots, self.num_experts, self.slots_per_expert
        if "identity" in (self.dispatch_kind, self.combine_kind) and m != n:
            raise ConfigError(
                f"SoftMoE identity routing needs as many tokens as slots: {m} tokens, "
                f"{e} experts x {p} slots = {n} slots"
            )
        needs_logits = "soft" in (self.dispatch_kind, self.combine_kind)
        logits = self.logits(x) if needs_logits else None

        slots = self._dispatch(x, logits)  # (batch, n, dim)
        # Expert-major layout for one batched matmul per layer: (E, batch*p, dim).
        expert_in = slots.view(batch, e, p, dim).transpose(0, 1).reshape(e, batch * p, dim)
        expert_out = self.experts(expert_in)
        slot_out = expert_out.view(e, batch, p, dim).transpose(0, 1).reshape(batch, n, dim)
        y = self._combine(slot_out, logits, m)

        self.aux_loss = x.new_zeros(())
        if self.track_metrics and logits is not None:
            self._record_metrics(logits)
        return y

    def _dispatch(self, x: torch.Tensor, logits: torch.Tensor | None) -> torch.Tensor:
        if self.dispatch_kind == "soft":
            weights = torch.softmax(logits, dim=1)  # over tokens, per slot
            return weights.transpose(1, 2) @ x
        if self.dispatch_kind == "uniform":
            return x.mean(dim=1, keepdim=True).expand(-1, self.num_slots, -1)
        return x  # identity: token i is slot i

    def _combine(
        self, slot_out: torch.Tensor, logits: torch.Tensor | None, m: int
    ) -> torch.Tensor:
        if self.combine_kind == "soft":
            return torch.softmax(logits, dim=2) @ slot_out  # over all slots, per token
        if self.combine_kind == "uniform":
            return slot_out.mean(dim=1, keepdim=True).expand(-1, m, -1)
        return slot_out  # identity: output i is slot output i

    @torch.no_grad()
    def _record_metrics(self, logits: torch.Tensor) -> None:
        dispatch = torch.softmax(logits.float(), dim=1)
        combine = torch.softmax(logits.float(), dim=2)
        self.metrics = {
            "dropped_fraction": 0.0,
            "slot_entropy": normalized_entropy(dispatch, dim=1).item(),
            "combine_entropy": normalized_entropy(combine, dim=2).item(),
        }

    def extra_repr(self) -> str:
        return (
            f"num_experts={self.num_experts}, slots_per_expert={self.slots_per_expert}, "
            f"normalize={self.normalize}, dispatch={self.dispatch_kind!r}, "
            f"combine={self.combine_kind!r}"
        )
