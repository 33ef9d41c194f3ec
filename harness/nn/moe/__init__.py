"""MoE layers. Every MLP kind maps (batch, tokens, dim) -> (batch, tokens, dim); the MoE kinds
keep one contract, :class:`harness.nn.moe.base.MoELayer` (experts, number of experts, aux loss,
metrics, router parameters), and :func:`tracking_metrics` switches their metrics on or off.
Which class a router uses, and with which arguments, is its registry entry's business
(``harness.spec.routers``: ``Router.build``); nothing here dispatches on router names.

Axis letters used in this package: G groups (one image by default), S tokens per group,
E experts, K choices per token, C capacity (buffer rows per expert and group), D model dim,
H expert hidden dim, m tokens per image, n·p slots (n experts × p slots each).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from harness.spec.rules import GELUS, check_capacity_rule, compute_capacity

if TYPE_CHECKING:
    from harness.nn.moe.base import MetricMeans, MoELayer, moe_layers, tracking_metrics
    from harness.nn.moe.dense import Mlp
    from harness.nn.moe.experts import BatchedExperts
    from harness.nn.moe.experts_choice import ExpertsChoice
    from harness.nn.moe.soft import SoftMoE
    from harness.nn.moe.tokens_choice import TokensChoice

# The layers load torch; the names and rules below do not, so that the closed-form counts
# (``inspect``, ``run --dry-run``) never wait for torch. ``harness.nn.moe.SoftMoE`` etc. import
# their module on first use.
_LAYERS = {"Mlp": "dense", "BatchedExperts": "experts", "ExpertsChoice": "experts_choice",
           "SoftMoE": "soft", "TokensChoice": "tokens_choice", "MoELayer": "base",
           "MetricMeans": "base", "moe_layers": "base", "tracking_metrics": "base"}


def __getattr__(name: str):
    if name in _LAYERS:
        return getattr(importlib.import_module(f"harness.nn.moe.{_LAYERS[name]}"), name)
    raise AttributeError(f"module 'harness.nn.moe' has no attribute {name!r}")


__all__ = [
    "GELUS",
    "BatchedExperts",
    "ExpertsChoice",
    "MetricMeans",
    "Mlp",
    "MoELayer",
    "SoftMoE",
    "TokensChoice",
    "check_capacity_rule",
    "compute_capacity",
    "moe_layers",
    "tracking_metrics",
]
