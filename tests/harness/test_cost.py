"""Parameters (closed form = built model, total and active per token) and ``measure``."""

import pytest
import torch

from harness.cost.flops import KINDS
from harness.cost.params import closed_form_params
from harness.nn.vit import build
from harness.runtime.measure import inspect_model, measure, parameter_counts
from harness.spec.model import ModelConfig, parse_model_spec
from harness.spec.routers import ROUTERS


def handwritten_params(cfg: ModelConfig) -> int:
    """Total parameters written out by hand for the paper's sizes (independent of cost.py)."""
    s = cfg.shape
    w, h, c = s.width, s.mlp_dim, cfg.num_classes
    mlp = 2 * w * h + h + w
    block = 2 * (2 * w) + (4 * w * w + 4 * w) + mlp
    total = cfg.in_chans * cfg.patch_size**2 * w + w + cfg.num_tokens * w
    total += s.depth * block + 2 * w + w * c + c
    if cfg.pool == "map":
        total += w + (w * w + w) + (2 * w * w + 2 * w) + (w * w + w) + 2 * w + mlp
    for _ in cfg.moe_blocks:
        e = cfg.num_experts
        slots = cfg.slots_per_expert or 0
        if cfg.router in ("uniform", "identity"):  # fixed routing: no phi, no scale
            router = 0
        else:
            router = w * e * slots + 1 if slots else w * e
        total += (e - 1) * mlp + router
    return total


@pytest.mark.parametrize("size", ["ti", "s", "b"])
@pytest.mark.parametrize("experts", [8, 128])
@pytest.mark.parametrize("router", ROUTERS)
@pytest.mark.parametrize("pool", ["gap", "map"])
def test_parameter_counts_equal_closed_forms(size, experts, router, pool):
    cfg = ModelConfig(size=size, router=router, num_experts=experts, slots_per_expert=2,
                      pool=pool)
    with torch.device("meta"):
        model = build(cfg)
    measured = parameter_counts(model, cfg)
    closed = closed_form_params(cfg)
    assert measured == closed
    assert closed["params_total"] == handwritten_params(cfg)


@pytest.mark.parametrize("router,extra", [
    ("soft", ":s1"), ("tokens_choice", ":k1"), ("experts_choice", ":c1")])
def test_active_parameters_of_one_expert_per_token_equal_dense_plus_router(router, extra):
    # 64 px /16 = 16 tokens, 16 experts: Soft MoE has one slot per token, Tokens Choice k=1,
    # Experts Choice capacity 1 per expert: one expert's parameters per token, as dense.
    cfg = parse_model_spec(f"vit-ti/16@64:{router}:e16{extra}")
    dense = closed_form_params(cfg.replace(router="dense"))["params_total"]
    w, moe_layers = cfg.shape.width, len(cfg.moe_blocks)
    router_params = moe_layers * (w * 16 + (1 if router == "soft" else 0))
    assert closed_form_params(cfg)["params_active"] == dense + router_params


def test_active_parameters_scale_with_slots_and_k():
    base = parse_model_spec("vit-ti/16@64:soft:e8:s1")
    per_expert = 2 * 192 * 768 + 768 + 192
    moe_layers = len(base.moe_blocks)
    one, two = (closed_form_params(base.replace(slots_per_expert=p))["params_active"]
                for p in (1, 2))
    # 8 more slots over 16 tokens = half an expert more per token and layer (+ the phi columns)
    assert two - one == round(moe_layers * (0.5 * per_expert + 192 * 8))
    k1, k2 = (closed_form_params(parse_model_spec(f"vit-ti/16@64:tokens_choice:e8:k{k}"))
              ["params_active"] for k in (1, 2))
    assert k2 - k1 == moe_layers * per_expert


def test_measure_gives_every_key_and_leaves_the_model_as_it_was(small):
    cfg, model = small
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    out = measure(model, cfg, batch_size=4, repeats=2, warmup=1, images_seen=1e6)
    for key in ("params_total", "params_active", "gflops_per_image", "gflops_by_kind",
                "train_step_ms", "train_images_per_s", "infer_images_per_s", "infer_latency_ms",
                "infer_latency_ms_b1", "peak_memory_mb", "peak_memory_method",
                "train_exaflops", "train_exaflops_paper", "flop_convention", "device"):
        assert key in out, key
    assert set(out["gflops_by_kind"]) == set(KINDS)
    assert out["gflops_per_image"] == pytest.approx(sum(out["gflops_by_kind"].values()))
    assert all(out[f"gflops_{kind}"] == out["gflops_by_kind"][kind] for kind in KINDS)
    assert out["infer_images_per_s"] == pytest.approx(4 / (out["infer_latency_ms"] / 1e3))
    assert out["train_images_per_s"] == pytest.approx(4 / (out["train_step_ms"] / 1e3))
    param_mb = sum(p.numel() * 4 for p in model.parameters()) / 2**20
    assert out["peak_memory_mb"] > 3 * param_mb  # weights, grads, two AdamW moments
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(rng, torch.get_rng_state())
    assert model.training
    assert all(layer.track_metrics for layer in model.moe_layers())
    assert all(p.grad is None for p in model.parameters())


def test_measure_without_timing_is_counting_only(small):
    cfg, model = small
    out = measure(model, cfg, timing=False, memory=False, flops_counter="analytic")
    assert "train_step_ms" not in out and "peak_memory_mb" not in out
    assert out["flops_counter"] == "analytic"


def test_inspect_model_counters_agree():
    cfg = parse_model_spec("vit-ti/16@64:soft:e8")
    rows = {c: inspect_model(cfg, counter=c) for c in ("fvcore", "torch", "meta", "analytic")}
    for row in rows.values():
        assert row["params_total"] == rows["analytic"]["params_total"]
        assert row["gflops_per_image"] == pytest.approx(rows["analytic"]["gflops_per_image"])
    assert inspect_model(cfg)["counted_by"] == "analytic"  # the default: nothing is built
