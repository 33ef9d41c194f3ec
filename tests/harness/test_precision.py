"""Every MLP kind on the CPU in float32 and under bf16 autocast against the float64
reference (tests/precision.py; tests/gpu/ runs the same on CUDA), and the hand-written CPU
kernels stepping aside under autocast for the plain formulation."""

import pytest
import torch
from precision import KIND_IDS, KINDS, assert_within, compare

from harness.nn.moe import SoftMoE
from harness.nn.moe import experts as experts_module
from harness.nn.moe import soft as soft_module


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("kind_id,router,kwargs", KINDS, ids=KIND_IDS)
def test_layer_on_cpu_matches_float64_reference(kind_id, router, kwargs, precision):
    errors = compare(router, kwargs, "cpu", precision)
    assert_within(errors, precision, f"{kind_id} cpu {precision}")
    if precision == "bf16":  # autocast really ran the matmuls in bfloat16
        assert errors["dtype"] == "torch.bfloat16"


def _forbid(monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("a hand-written CPU kernel ran under autocast")

    monkeypatch.setattr(soft_module._SoftDispatch, "apply", boom)
    monkeypatch.setattr(experts_module._ExpertsFunction, "apply", boom)
    monkeypatch.setattr(experts_module, "_experts_onednn", boom)


def test_fast_kernels_step_aside_under_autocast(monkeypatch):
    layer = SoftMoE(16, 4, 1, 32)
    x = torch.randn(2, 6, 16, requires_grad=True)
    _forbid(monkeypatch)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)  # the plain formulation, in bf16
        with torch.no_grad():
            layer(x)  # nor oneDNN's prepacked inference path
    y.float().sum().backward()
    assert y.dtype == torch.bfloat16 and x.grad is not None
    with pytest.raises(AssertionError, match="hand-written"):
        layer(x)  # without autocast the fast path is taken (the guard above is live)
