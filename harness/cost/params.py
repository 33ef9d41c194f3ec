"""Parameters of a model from its shapes alone: total, and active per token.

Active parameters per token = the parameters one token's forward pass applies, on average:
every non-expert parameter plus, in each MoE layer, the router's experts per token
(``harness.spec.routers``) times one expert's. No model is built (the paper's 54B-parameter H/14
counts in microseconds); tests check these against built models
(``harness.runtime.measure.parameter_counts``). Torch-free.
"""

from __future__ import annotations


def closed_form_params(cfg) -> dict[str, int]:
    """``params_total`` and ``params_active`` (per token) of the model ``cfg`` builds, from
    its shapes alone (the same definitions as :func:`parameter_counts`)."""
    s = cfg.shape
    w, h, c = s.width, s.mlp_dim, cfg.num_classes
    mlp = 2 * w * h + h + w  # fc1, fc2 with biases; one expert has the same
    attention = 3 * w * w + 3 * w + w * w + w  # qkv, proj
    block = 2 * 2 * w + attention + mlp  # two layer norms
    total = cfg.in_chans * cfg.patch_size**2 * w + w + cfg.num_tokens * w  # patches, pos
    total += s.depth * block + 2 * w + w * c + c  # blocks, final norm, head
    if cfg.pool == "map":  # probe, q, kv, proj, norm, mlp
        total += w + (w * w + w) + (2 * w * w + 2 * w) + (w * w + w) + 2 * w + mlp
    active = float(total)
    if cfg.moe_blocks:
        gate = cfg.routing.router_params(w)
        per_token = cfg.routing.experts_per_token(cfg.num_tokens)
        for _ in cfg.moe_blocks:
            total += (cfg.num_experts - 1) * mlp + gate
            active += gate + (per_token - 1) * mlp
    return {"params_total": total, "params_active": round(active)}
