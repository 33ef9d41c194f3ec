"""Attention backends and FLOP counts on CUDA: xformers equals SDPA, and every counter on
CUDA (the xformers handle included) counts what the CPU counts."""

import pytest
import torch

from harness.nn.attention import attend, xformers_available
from harness.nn.vit import build
from harness.runtime.counting import count_flops
from harness.spec.model import parse_model_spec

SPECS = ["vit-w64d4h4m128/8@32", "vit-w64d4h4m128/8@32:soft:e8:s2",
         "vit-w64d4h4m128/8@32:tokens_choice:e8:k2", "vit-w64d4h4m128/8@32:experts_choice:e8"]


def needs_xformers():
    if not xformers_available():
        pytest.skip("xformers is not installed (pip install 'moe-harness[xformers]', a build "
                    "for this torch)")


def qkv(dtype):
    gen = torch.Generator(device="cuda").manual_seed(0)
    return [torch.randn(3, 197, 6, 64, device="cuda", dtype=dtype, generator=gen)
            for _ in range(3)]


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_xformers_equals_sdpa_and_math(dtype, tol, record_numbers):
    needs_xformers()
    q, k, v = qkv(dtype)
    reference = attend(*(t.double() for t in (q, k, v)), "math")
    errors = {name: ((attend(q, k, v, name).double() - reference).abs().max()
                     / reference.abs().max()).item() for name in ("xformers", "sdpa")}
    record_numbers(dtype=str(dtype), **errors)
    assert errors["xformers"] < tol and errors["sdpa"] < tol


@pytest.mark.parametrize("spec", SPECS)
def test_flop_counts_on_cuda_equal_the_cpus(spec, record_numbers):
    cfg = parse_model_spec(spec, num_classes=10, attention="sdpa")
    torch.manual_seed(0)
    model = build(cfg)
    cpu = count_flops(model, cfg, "fvcore")
    model = model.cuda()
    counts = {"fvcore": count_flops(model, cfg, "fvcore"),
              "torch": count_flops(model, cfg, "torch")}
    if xformers_available():
        for block in model.blocks:
            block.attn.backend = "xformers"
        counts["fvcore_xformers"] = count_flops(model, cfg, "fvcore")
    record_numbers(spec=spec, cpu=cpu.total, **{k: v.total for k, v in counts.items()})
    for name, count in counts.items():
        assert count.total == pytest.approx(cpu.total, rel=1e-9), name
        for kind, value in cpu.by_kind.items():
            assert count.by_kind.get(kind, 0.0) == pytest.approx(value, rel=1e-9), (name, kind)
