"""MoE layers. Every MLP kind maps (batch, tokens, dim) -> (batch, tokens, dim); the MoE kinds
keep one contract, :class:`harness.moe.base.MoELayer` (experts, number of experts, aux loss,
metrics, expert rows), and :func:`tracking_metrics` switches their metrics on or off.

Axis letters used in this package: G groups (one image by default), S tokens per group,
E experts, K choices per token, C capacity (buffer rows per expert and group), D model dim,
H expert hidden dim, m tokens per image, n·p slots (n experts × p slots each).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from harness.errors import ConfigError
from harness.moe.rules import GELUS, check_capacity_rule, compute_capacity

if TYPE_CHECKING:
    from torch import nn

    from harness.moe.base import MetricMeans, MoELayer, moe_layers, tracking_metrics
    from harness.moe.dense import Mlp
    from harness.moe.experts import BatchedExperts
    from harness.moe.experts_choice import ExpertsChoice
    from harness.moe.soft import SoftMoE
    from harness.moe.tokens_choice import TokensChoice

# The layers load torch; the names and rules below do not, so that the closed-form counts
# (``inspect``, ``run --dry-run``) never wait for torch. ``harness.moe.SoftMoE`` etc. import
# their module on first use.
_LAYERS = {"Mlp": "dense", "BatchedExperts": "experts", "ExpertsChoice": "experts_choice",
           "SoftMoE": "soft", "TokensChoice": "tokens_choice", "MoELayer": "base",
           "MetricMeans": "base", "moe_layers": "base", "tracking_metrics": "base"}


def __getattr__(name: str):
    if name in _LAYERS:
        return getattr(importlib.import_module(f"harness.moe.{_LAYERS[name]}"), name)
    raise AttributeError(f"module 'harness.moe' has no attribute {name!r}")

# Soft MoE's fixed-routing ablations: router name -> (dispatch, combine).
SOFT_VARIANTS = {
    "soft": ("soft", "soft"),
    "soft_uniform": ("soft", "uniform"),
    "uniform_soft": ("uniform", "soft"),
    "uniform": ("uniform", "uniform"),
    "identity": ("identity", "identity"),
}
ROUTERS = ("dense", *SOFT_VARIANTS, "tokens_choice", "experts_choice")


def uses_experts(router: str) -> bool:
    return router != "dense"


def uses_slots(router: str) -> bool:
    return router in SOFT_VARIANTS


def uses_k(router: str) -> bool:
    return router == "tokens_choice"


def uses_capacity(router: str) -> bool:
    return router in ("tokens_choice", "experts_choice")


def make_mlp(
    router: str,
    dim: int,
    hidden_dim: int,
    *,
    num_experts: int | None = None,
    slots_per_expert: int | None = None,
    k: int | None = None,
    capacity_factor: float | None = None,
    group_size: int | None = None,
    gelu: str = "erf",
    capacity_rounding: str | None = None,
    router_noise: float | None = None,
) -> nn.Module:
    """Build the MLP block for ``router``; arguments a router does not use are ignored.

    ``gelu`` applies to every MLP ("erf" | "tanh"); ``capacity_rounding`` (default "ceil")
    and ``router_noise`` (the sparse routers' training noise in units of 1/E, vmoe's
    convention; default 1.0) to Tokens and Experts Choice only.
    """
    from harness.moe.dense import Mlp
    from harness.moe.experts_choice import ExpertsChoice
    from harness.moe.soft import SoftMoE
    from harness.moe.tokens_choice import TokensChoice

    if router == "dense":
        return Mlp(dim, hidden_dim, gelu=gelu)
    if router not in ROUTERS:
        raise ConfigError(f"unknown router {router!r}; allowed: {', '.join(ROUTERS)}")
    if num_experts is None:
        raise ConfigError(f"router {router!r} needs num_experts")
    if router in SOFT_VARIANTS:
        dispatch, combine = SOFT_VARIANTS[router]
        return SoftMoE(dim, num_experts, slots_per_expert or 1, hidden_dim,
                       dispatch=dispatch, combine=combine, gelu=gelu)
    sparse = dict(
        capacity_factor=1.0 if capacity_factor is None else capacity_factor,
        group_size=group_size, gelu=gelu, capacity_rounding=capacity_rounding or "ceil",
        noise_std=(1.0 if router_noise is None else router_noise) / num_experts,
    )
    if router == "tokens_choice":
        return TokensChoice(dim, num_experts, hidden_dim, k=k or 1, **sparse)
    return ExpertsChoice(dim, num_experts, hidden_dim, **sparse)


__all__ = [
    "GELUS",
    "ROUTERS",
    "SOFT_VARIANTS",
    "BatchedExperts",
    "ExpertsChoice",
    "MetricMeans",
    "Mlp",
    "MoELayer",
    "SoftMoE",
    "TokensChoice",
    "check_capacity_rule",
    "compute_capacity",
    "make_mlp",
    "moe_layers",
    "tracking_metrics",
    "uses_capacity",
    "uses_experts",
    "uses_k",
    "uses_slots",
]
