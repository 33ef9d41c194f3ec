"""Every MLP kind and Soft MoE ablation, forward and backward, on CUDA in float32 and under
bf16 autocast, against the CPU float64 reference (tolerances per dtype: tests/precision.py);
and the hand-written CPU kernels stepping aside under CUDA autocast."""

import pytest
import torch
from precision import KIND_IDS, KINDS, assert_within, compare

from harness.nn.moe import SoftMoE
from harness.nn.moe import experts as experts_module
from harness.nn.moe import soft as soft_module


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("kind_id,router,kwargs", KINDS, ids=KIND_IDS)
def test_layer_on_cuda_matches_cpu_float64(kind_id, router, kwargs, precision, record_numbers):
    errors = compare(router, kwargs, "cuda", precision)
    record_numbers(kind=kind_id, precision=precision, **errors)
    assert_within(errors, precision, f"{kind_id} cuda {precision}")
    assert errors["dtype"] == ("torch.bfloat16" if precision == "bf16" else "torch.float32")


def test_cpu_kernels_step_aside_under_cuda_autocast(monkeypatch):
    layer = SoftMoE(64, 8, 2, 128).cuda()
    x = torch.randn(4, 16, 64, device="cuda", requires_grad=True)

    def boom(*args, **kwargs):
        raise AssertionError("a hand-written kernel ran under autocast")

    monkeypatch.setattr(soft_module._SoftDispatch, "apply", boom)
    monkeypatch.setattr(experts_module._ExpertsFunction, "apply", boom)
    monkeypatch.setattr(experts_module, "_experts_onednn", boom)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y = layer(x)
    y.float().sum().backward()
    assert y.dtype == torch.bfloat16 and torch.isfinite(x.grad).all()
