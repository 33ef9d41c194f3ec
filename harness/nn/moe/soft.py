"""Soft MoE (Puigcerver et al., 2024): every slot is a softmax-weighted mix of all tokens."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from harness.errors import ConfigError
from harness.nn.moe.base import MoELayer
from harness.nn.moe.experts import (
    BatchedExperts,
    check_gelu,
    fast_path_ok,
    mm_nt,
    needs_grad,
    new_buffer,
)
from harness.nn.moe.routing import check_positive, normalized_entropy

Weights = Literal["soft", "uniform", "identity"]
WEIGHT_KINDS = ("soft", "uniform", "identity")


EPS = 1e-6


def inv_norm(x: torch.Tensor, dim: int) -> torch.Tensor:
    """1 / sqrt(||x||² + 1e-6) along ``dim`` (kept): the paper's code normalises with this
    (its text writes x / (||x|| + 1e-6): the same at ordinary norms, not near zero)."""
    return torch.linalg.vector_norm(x, dim=dim, keepdim=True).pow(2).add(EPS).rsqrt()


def l2_normalize(x: torch.Tensor, dim: int) -> torch.Tensor:
    """x · rsqrt(||x||² + 1e-6), as the paper's code computes it."""
    return x * inv_norm(x, dim)


# --- the soft/soft path as two autograd functions with hand-written backwards -------------
# Layouts (B images, m tokens, D dim, n = E·p slots). Every matmul writes a fresh contiguous
# buffer (MKL's batched path; a strided output would make torch loop over the batch) and
# reads the others' buffers through strided views instead of transposed copies: the slots
# (B, n, D) from the dispatch matmul are, read with strides (D, n·D, 1), the experts' input
# (E, B, D) when p = 1; the experts' output (E, p·B, D), its rows ordered (slot j, image b),
# is read by the combine matmul as (B, n, D) with strides (D, B·D, 1). Only p > 1 copies
# the slots once into that row order (B·n·D floats, small next to the experts). Logits are
# (B, m, n); x is normalised by scaling the logits' rows (never writing a normalised copy of
# x), and both softmaxes are computed once and kept for the backward.
def _expert_major(slots: torch.Tensor, num_experts: int) -> torch.Tensor:
    """(B, n, D) slots -> (E, p·B, D) expert inputs, rows ordered (j, b); a view if p = 1."""
    batch, n, dim = slots.shape
    p = n // num_experts
    if p == 1:
        return slots.transpose(0, 1)
    return slots.view(batch, num_experts, p, dim).permute(1, 2, 0, 3).reshape(
        num_experts, p * batch, dim)


def _batch_major(expert_rows: torch.Tensor, batch: int) -> torch.Tensor:
    """(E, p·B, D) with rows ordered (j, b) -> (B, n, D) view (strides D, B·D, 1)."""
    e, rows, dim = expert_rows.shape
    p = rows // batch
    if p == 1:
        return expert_rows.transpose(0, 1)
    return expert_rows.reshape(e, p, batch, dim).permute(2, 0, 1, 3).reshape(batch, e * p, dim)


class _SoftDispatch(torch.autograd.Function):
    """x (B, m, D), phi_t (n, D) -> expert inputs (E, p·B, D) and combine weights (B, m, n)."""

    @staticmethod
    def forward(ctx, x, phi_t, num_experts: int, normalize: bool, keep: bool):
        batch, m, dim = x.shape
        n = phi_t.shape[0]
        x2 = x.reshape(batch * m, dim)
        logits = mm_nt(x2, phi_t).view(batch, m, n)
        inv = None
        if normalize:  # l2_normalize(x) @ phi == (x @ phi) * inv_norm(x), row by row
            inv = inv_norm(x, 2)
            logits.mul_(inv)
        dispatch = torch.softmax(logits, dim=1)  # over tokens, per slot
        combine = torch.softmax(logits, dim=2)  # over all slots, per token
        slots = torch.bmm(dispatch.transpose(1, 2), x, out=new_buffer((batch, n, dim), x))
        if keep:
            ctx.save_for_backward(x, phi_t, logits, dispatch, combine, inv)
            ctx.normalize, ctx.num_experts = normalize, num_experts
        return _expert_major(slots, num_experts), combine

    @staticmethod
    @once_differentiable
    def backward(ctx, d_expert_in, d_combine):
        x, phi_t, logits, dispatch, combine, inv = ctx.saved_tensors
        batch, m, dim = x.shape
        n = phi_t.shape[0]
        d_slots = _batch_major(d_expert_in, batch)  # (B, n, D) view
        d_dispatch = torch.bmm(x, d_slots.transpose(1, 2))  # (B, m, n)
        d_x = torch.bmm(dispatch, d_slots, out=new_buffer(x.shape, x))
        # softmax backward: p * (g - sum(p * g)) along each softmax's axis
        d_logits = d_dispatch.mul_(dispatch)
        d_logits.addcmul_(dispatch, d_logits.sum(dim=1, keepdim=True), value=-1.0)
        if d_combine is not None:
            d_comb = d_combine * combine
            d_comb.addcmul_(combine, d_comb.sum(dim=2, keepdim=True), value=-1.0)
            d_logits.add_(d_comb)
            del d_comb
        x2, d_x2 = x.reshape(batch * m, dim), d_x.view(batch * m, dim)
        if ctx.normalize:
            # logits = raw * r with raw = x @ phi, r = (|x|² + eps)^(-1/2): d raw = d_logits * r,
            # and through r (dr/dx = -r³ x): d x -= sum_n(d_logits * logits) * r² * x.
            coef = (d_logits * logits).sum(dim=2, keepdim=True).mul_(inv.square()).neg_()
            d_logits.mul_(inv)
            d_x.addcmul_(x, coef)
        d_l2 = d_logits.view(batch * m, n)
        d_x2.addmm_(d_l2, phi_t)
        d_phi_t = torch.mm(d_l2.t(), x2) if ctx.needs_input_grad[1] else None
        return d_x, d_phi_t, None, None, None


class _SoftCombine(torch.autograd.Function):
    """combine (B, m, n), expert outputs (E, p·B, D) -> y (B, m, D) = combine · slots."""

    @staticmethod
    def forward(ctx, combine, slot_out, keep: bool):
        batch, m, _ = combine.shape
        slots = _batch_major(slot_out, batch)  # (B, n, D) view
        y = torch.bmm(combine, slots, out=new_buffer((batch, m, slots.shape[2]), slot_out))
        if keep:
            ctx.save_for_backward(combine, slot_out)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, d_y):
        combine, slot_out = ctx.saved_tensors
        batch = combine.shape[0]
        slots = _batch_major(slot_out, batch)
        d_combine = torch.bmm(d_y, slots.transpose(1, 2)) if ctx.needs_input_grad[0] else None
        d_slot_out = None
        if ctx.needs_input_grad[1]:
            d_slots = torch.bmm(combine.transpose(1, 2), d_y, out=new_buffer(slots.shape, d_y))
            d_slot_out = _expert_major(d_slots, slot_out.shape[0])
        return d_combine, d_slot_out, None


class SoftMoE(MoELayer):
    """Soft MoE layer mapping (batch, m tokens, dim) -> (batch, m, dim); one image per group.

    logits = X·Φ over n·p slots; dispatch D = softmax over tokens (per slot), slot inputs
    X̃ = Dᵀ·X; combine C = softmax over all slots (per token), Y = C·Ỹ. Slot i belongs to expert
    i // slots_per_expert. ``dispatch``/``combine`` = "uniform" or "identity" give the paper's
    fixed-routing ablations (identity needs m == n·p).
    """

    router_parameter_names = ("phi", "scale")

    def __init__(
        self,
        dim: int,
        num_experts: int,
        slots_per_expert: int,
        hidden_dim: int,
        normalize: bool = True,
        dispatch: Weights = "soft",
        combine: Weights = "soft",
        gelu: str = "erf",
    ):
        check_positive("num_experts", num_experts)
        check_positive("slots_per_expert", slots_per_expert)
        for name, value in (("dispatch", dispatch), ("combine", combine)):
            if value not in WEIGHT_KINDS:
                raise ConfigError(f"SoftMoE {name} must be one of {WEIGHT_KINDS}, got {value!r}")
        super().__init__(num_experts)
        self.slots_per_expert = slots_per_expert
        self.normalize, self.dispatch_kind, self.combine_kind = normalize, dispatch, combine
        if "soft" in (dispatch, combine):  # fixed routing on both sides needs no logits
            self.phi = nn.Parameter(torch.empty(dim, num_experts, slots_per_expert))
            nn.init.normal_(self.phi, std=dim**-0.5)
            self.scale = nn.Parameter(torch.ones(()))
        else:
            self.register_parameter("phi", None)
            self.register_parameter("scale", None)
        self.experts = BatchedExperts(num_experts, dim, hidden_dim, gelu=check_gelu(gelu))

    @property
    def num_slots(self) -> int:
        return self.num_experts * self.slots_per_expert

    def slot_params(self) -> torch.Tensor:
        """(n·p, dim) slot parameters as the logits use them: Φᵀ, L2-normalised over dim and
        times ``scale`` when ``normalize``."""
        phi_t = self.phi.reshape(self.phi.shape[0], self.num_slots).t()
        if self.normalize:
            phi_t = l2_normalize(phi_t, 1) * self.scale
        # (n, D) row-major: the (out, in) layout oneDNN's linear takes, and for MKL the "NT"
        # kernel, faster than "NN" for few slots on CPU
        return phi_t.contiguous()

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, m, n·p) token-slot logits."""
        logits = x @ self.slot_params().t()
        if self.normalize:  # = l2_normalize(x) @ phi, without writing a normalised copy of x
            logits = logits * inv_norm(x, -1)
        return logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, m, dim = x.shape
        n, e, p = self.num_slots, self.num_experts, self.slots_per_expert
        if "identity" in (self.dispatch_kind, self.combine_kind) and m != n:
            raise ConfigError(
                f"SoftMoE identity routing needs as many tokens as slots: {m} tokens, "
                f"{e} experts x {p} slots = {n} slots"
            )
        if self.dispatch_kind == self.combine_kind == "soft":
            phi_t = self.slot_params()
            if fast_path_ok(x, phi_t):
                # each function saves for backward only what a gradient needs; the experts'
                # weights are the experts' business (their own autograd)
                expert_in, combine = _SoftDispatch.apply(x, phi_t, e, self.normalize,
                                                         needs_grad(x, phi_t))
                slot_out = self.experts(expert_in)
                if fast_path_ok(combine, slot_out):
                    y = _SoftCombine.apply(combine, slot_out, needs_grad(combine, slot_out))
                else:
                    y = combine @ _batch_major(slot_out, batch)
                self.aux_loss = x.new_zeros(())
                if self.track_metrics:  # diagnostics only: the logits once more, no graph
                    with torch.no_grad():
                        self.metric_tensors = self._metrics(self.logits(x))
                return y
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
            self.metric_tensors = self._metrics(logits)
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
    def _metrics(self, logits: torch.Tensor) -> dict[str, torch.Tensor]:
        dispatch = torch.softmax(logits.float(), dim=1)
        combine = torch.softmax(logits.float(), dim=2)
        return {
            "dropped_fraction": dispatch.new_zeros(()),
            "slot_entropy": normalized_entropy(dispatch, dim=1),
            "combine_entropy": normalized_entropy(combine, dim=2),
        }

    def extra_repr(self) -> str:
        return (
            f"num_experts={self.num_experts}, slots_per_expert={self.slots_per_expert}, "
            f"normalize={self.normalize}, dispatch={self.dispatch_kind!r}, "
            f"combine={self.combine_kind!r}"
        )
