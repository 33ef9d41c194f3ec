"""Every MLP kind on a device and precision against a CPU float64 reference, forward and
backward. Shared by tests/harness/test_precision.py (CPU) and tests/gpu/ (CUDA).

The reference is the same layer (same weights) in float64 on the CPU, whose fast paths
tests/harness/test_bench.py and tests/harness/test_moe.py hold to the paper's equations at
1e-10. Errors are
relative in the Frobenius norm, over the output, the input's gradient and each parameter's
gradient (the worst parameter). Tolerances per precision:

- ``fp32``: float32 rounding through a few matmuls, ~1e-7 relative per entry; we allow
  1e-5 (outputs) and 1e-4 (gradients, which chain more products).
- ``bf16`` (autocast: matmuls in bfloat16, 8 bits of mantissa, unit roundoff 2^-9 ~ 2e-3):
  each matmul rounds its inputs, and a layer chains 3 to 5 of them; we allow 3e-2 (outputs)
  and 6e-2 (gradients).

Under bf16 the scalar parameters (Soft MoE's learned ``scale``) are left out of the gradient
comparison: their gradient is one sum of B·m·n products that largely cancel, so its relative
error grows without bound as the sum nears zero (measured: 4e-4 to 0.17 over three seeds,
while every tensor's gradient stayed within 7e-3). fp32 compares them too.

Sparse routers choose by comparing gates, and a choice that flips under rounding changes a
token's output entirely, which is not an error of the kernels. So their inputs are drawn
with clear margins (:func:`separated_inputs`) and, under bf16, their capacities hold every
token (Tokens Choice: no drops; Experts Choice: every expert takes every token), so that
only the arithmetic is compared.
"""

from __future__ import annotations

import copy

import torch
from helpers import make_mlp

DIM, HIDDEN, BATCH, TOKENS = 32, 64, 3, 8
TOLERANCE = {"fp32": {"out": 1e-5, "grad": 1e-4}, "bf16": {"out": 3e-2, "grad": 6e-2}}

# (id, router, kwargs); every Soft MoE ablation has 4 experts x 2 slots = 8 = TOKENS slots
# (identity routing needs as many slots as tokens)
SOFT = dict(num_experts=4, slots_per_expert=2)
KINDS = [
    ("dense", "dense", {}),
    ("soft", "soft", SOFT),
    ("soft_uniform", "soft_uniform", SOFT),
    ("uniform_soft", "uniform_soft", SOFT),
    ("uniform", "uniform", SOFT),
    ("identity", "identity", SOFT),
    ("tokens_choice_k1", "tokens_choice", dict(num_experts=4, k=1, capacity_factor=1.0)),
    ("tokens_choice_k2", "tokens_choice", dict(num_experts=4, k=2, capacity_factor=1.0)),
    ("experts_choice", "experts_choice", dict(num_experts=4, capacity_factor=1.0)),
]
KIND_IDS = [k[0] for k in KINDS]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def separated_inputs(router_weight: torch.Tensor, k: int, margin: float = 0.5,
                     seed: int = 0) -> torch.Tensor:
    """(BATCH, TOKENS, DIM) float64 inputs whose router logits have a gap of at least
    ``margin`` between every token's k-th and (k+1)-th expert (and between its first k)."""
    gen = torch.Generator().manual_seed(seed)
    w = router_weight.detach().double().cpu()
    x = torch.randn(BATCH, TOKENS, DIM, dtype=torch.float64, generator=gen)
    for _ in range(1000):
        top = (x @ w.t()).sort(dim=-1, descending=True).values[..., :k + 1]
        bad = (top[..., :-1] - top[..., 1:]).min(dim=-1).values < margin
        if not bad.any():
            return x
        x[bad] = torch.randn(int(bad.sum()), DIM, dtype=torch.float64, generator=gen)
    raise AssertionError("could not draw well-separated router inputs")


def compare(router: str, kwargs: dict, device: str, precision: str,
            seed: int = 0) -> dict[str, float]:
    """Relative errors of ``router``'s layer on ``device`` at ``precision`` ('fp32' or
    'bf16' autocast) against the CPU float64 reference: out, grad_x, grad_params."""
    kwargs = dict(kwargs)
    if precision == "bf16" and router in ("tokens_choice", "experts_choice"):
        kwargs["capacity_factor"] = float(kwargs["num_experts"])  # no token left out
    torch.manual_seed(seed)
    layer = make_mlp(router, DIM, HIDDEN, **kwargs)
    with torch.no_grad():  # non-zero biases and scale, so that their paths count
        for name, p in layer.named_parameters():
            if name.endswith(("b1", "b2", "bias")):
                p.normal_(std=0.5)
            if name == "scale":
                p.fill_(1.5)
    layer.eval()  # no router noise: the same function on both sides
    reference = copy.deepcopy(layer).double()
    if hasattr(layer, "router"):
        x = separated_inputs(layer.router.weight, kwargs.get("k", 1), seed=seed)
    else:
        x = torch.randn(BATCH, TOKENS, DIM, dtype=torch.float64,
                        generator=torch.Generator().manual_seed(seed))
    g = torch.randn(BATCH, TOKENS, DIM, dtype=torch.float64,
                    generator=torch.Generator().manual_seed(seed + 1))

    xr = x.clone().requires_grad_(True)
    y_ref = reference(xr)
    (y_ref * g).sum().backward()

    layer = layer.to(device)
    xd = x.float().to(device).requires_grad_(True)
    autocast = torch.autocast(torch.device(device).type, dtype=torch.bfloat16,
                              enabled=precision == "bf16")
    with autocast:
        y = layer(xd)
    (y.float() * g.float().to(device)).sum().backward()

    ref_grads = dict(reference.named_parameters())
    grad_errors = [rel_err(p.grad if p.grad is not None else torch.zeros_like(p),
                           ref_grads[name].grad) for name, p in layer.named_parameters()
                   if ref_grads[name].grad is not None and ref_grads[name].grad.norm() > 0
                   and (precision == "fp32" or p.dim() > 0)]
    return {"out": rel_err(y, y_ref), "grad_x": rel_err(xd.grad, xr.grad),
            "grad_params": max(grad_errors) if grad_errors else 0.0,
            "dtype": str(y.dtype)}


def assert_within(errors: dict[str, float], precision: str, what: str) -> None:
    tol = TOLERANCE[precision]
    assert errors["out"] < tol["out"], f"{what}: output rel. error {errors['out']:.2e}"
    for key in ("grad_x", "grad_params"):
        assert errors[key] < tol["grad"], f"{what}: {key} rel. error {errors[key]:.2e}"
