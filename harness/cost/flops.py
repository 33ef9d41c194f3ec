"""FLOPs per image in closed form, and the one convention every count follows.

**1 multiply-add = 2 FLOPs.** Counted are the multiply-adds of matrix products (linear layers,
the patch embedding, attention's q·kᵀ and p·v, the experts, the routers' matmuls); elementwise
work, reductions and data movement are not (see ``harness.runtime.counting`` for the counters
that measure a built model and must agree with :func:`analytic_flops`). Torch-free.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from harness.spec.routers import ROUTING_PARTS

KINDS = ("patch_embed", "attention", "mlp", "experts", "routing", "head")
"""Layer kinds of a ViT. ``mlp`` = dense MLP blocks, ``experts`` = the MoE layers' expert
MLPs, ``routing`` = everything else in an MoE layer (router logits, dispatch, combine),
``head`` = pooling (MAP head) and classifier."""


CONVENTION = "1 multiply-add = 2 FLOPs (fvcore's count of multiply-adds doubled)"


@dataclass(frozen=True)
class FlopCount:
    """FLOPs per image (2 per multiply-add), in total and per layer kind."""

    total: float
    by_kind: dict[str, float]
    counter: str
    by_op: dict[str, float] = field(default_factory=dict)
    routing_parts: dict[str, float] = field(default_factory=dict)  # analytic only

    @property
    def gflops(self) -> float:
        return self.total / 1e9


def matmul_macs(a: list[int], b: list[int]) -> int:
    """Multiply-adds of ``a @ b`` with numpy/torch broadcasting (1-D operands allowed)."""
    a, b = list(a), list(b)
    if len(a) == 1:
        a = [1, *a]
    if len(b) == 1:
        b = [*b, 1]
    *batch_a, m, k = a
    *batch_b, k2, n = b
    if k != k2:
        raise ValueError(f"matmul shapes do not contract: {a} @ {b}")
    batch = _broadcast(batch_a, batch_b)
    return math.prod(batch) * m * k * n


def attention_macs(q: list[int], k: list[int], v: list[int], layout: str = "bhmd") -> int:
    """q·kᵀ plus p·v multiply-adds; ``layout`` 'bhmd' (torch SDPA) or 'bmhd' (xformers)."""
    if layout == "bmhd":
        q, k, v = ([*s[:-3], s[-2], s[-3], s[-1]] for s in (q, k, v))
    *batch, lq, dq = q
    lk, dv = k[-2], v[-1]
    return math.prod(batch) * lq * lk * (dq + dv)


def _broadcast(a: list[int], b: list[int]) -> list[int]:
    out = []
    for x, y in zip([1] * (len(b) - len(a)) + a, [1] * (len(a) - len(b)) + b, strict=True):
        if x != y and 1 not in (x, y):
            raise ValueError(f"batch shapes do not broadcast: {a} and {b}")
        out.append(max(x, y))
    return out


def analytic_flops(cfg) -> FlopCount:
    """FLOPs per image of the model ``cfg`` (a ModelConfig) in closed form, per layer kind.

    Written from the shapes, independently of the module code (the router's expert rows and
    routing multiply-adds from its entry in ``harness.spec.routers``); ``routing_parts`` splits
    the routing into router logits, dispatch and combine.
    """
    s = cfg.shape
    d, h, m = s.width, s.mlp_dim, cfg.num_tokens
    macs = dict.fromkeys(KINDS, 0)
    parts = dict.fromkeys(ROUTING_PARTS, 0)
    macs["patch_embed"] = m * cfg.in_chans * cfg.patch_size**2 * d
    attention = m * d * 3 * d + 2 * m * m * d + m * d * d  # qkv, q·kᵀ and p·v, proj
    macs["attention"] = s.depth * attention
    moe = len(cfg.moe_blocks)
    macs["mlp"] = (s.depth - moe) * m * 2 * d * h
    if moe:
        rows = cfg.num_experts * cfg.routing.expert_rows(m)  # buffer rows per image
        parts.update({k: moe * v for k, v in cfg.routing.routing_macs(d, m).items()})
        macs["experts"] = moe * rows * 2 * d * h
        macs["routing"] = sum(parts.values())
    macs["head"] = d * cfg.num_classes
    if cfg.pool == "map":  # probe query, keys/values, attention, proj, MLP on one token
        macs["head"] += d * d + m * d * 2 * d + 2 * m * d + d * d + 2 * d * h
    by_kind = {k: 2.0 * v for k, v in macs.items()}
    return FlopCount(
        total=sum(by_kind.values()),
        by_kind=by_kind,
        counter="analytic",
        routing_parts={k: 2.0 * v for k, v in parts.items()},
    )


def train_exaflops(gflops_per_image: float, images_seen: float) -> dict[str, float]:
    """Training compute of a run, in exaFLOP, in two labelled conventions.

    ``train_exaflops``: ours, forward FLOPs (2 per multiply-add) × 3 (forward + backward)
    × images seen. ``train_exaflops_paper``: the paper's "training exaFLOP" column,
    3 × forward multiply-adds × images seen, i.e. half of ours.
    """
    ours = 3.0 * gflops_per_image * 1e9 * images_seen / 1e18
    return {"train_exaflops": ours, "train_exaflops_paper": ours / 2.0}
