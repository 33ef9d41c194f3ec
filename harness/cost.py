"""Cost of a model: parameters (total and active per token). FLOPs, time and memory follow.

Active parameters per token = the parameters one token's forward pass applies, on average:
- every non-expert parameter (embeddings, attention, dense MLPs, norms, routers, head);
- Soft MoE: the expert parameters times (slots / tokens), i.e. the experts' work spread over
  the tokens that fed the slots (n·p = m gives one expert's worth, as dense);
- Tokens Choice: k experts (the most a token passes through; dropped tokens use fewer);
- Experts Choice: capacity_factor experts on average (E·C slots shared by S tokens).
"""

from __future__ import annotations

from torch import nn


def _numel(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def experts_per_token(layer: nn.Module, num_tokens: int) -> float:
    """How many experts' parameters one token uses on average in ``layer``."""
    from harness.moe import ExpertsChoice, SoftMoE, TokensChoice, compute_capacity

    if isinstance(layer, SoftMoE):
        return layer.num_slots / num_tokens
    if isinstance(layer, TokensChoice):
        return float(layer.k)
    if isinstance(layer, ExpertsChoice):
        group = layer.group_size or num_tokens
        capacity = compute_capacity(group, layer.num_experts, layer.capacity_factor)
        return layer.num_experts * capacity / group
    raise TypeError(f"not an MoE layer: {type(layer).__name__}")


def parameter_counts(model: nn.Module, num_tokens: int) -> dict[str, int]:
    """``params_total`` and ``params_active`` (per token, defined in the module doc)."""
    total = _numel(model)
    active = float(total)
    for layer in model.moe_layers():
        per_expert = _numel(layer.experts) / layer.experts.num_experts
        active -= _numel(layer.experts) - experts_per_token(layer, num_tokens) * per_expert
    return {"params_total": total, "params_active": round(active)}
