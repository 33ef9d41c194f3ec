"""FLOPs: fvcore (with our handles), torch's FlopCounterMode and the closed form agree; an op
no handle covers fails loudly; training compute in both conventions; the paper's table."""

import math

import pytest
import torch
from torch import nn

from harness.cost.flops import KINDS, analytic_flops, attention_macs, matmul_macs, train_exaflops
from harness.cost.paper import PAPER_MODELS, parse_paper_spec
from harness.nn.moe import Mlp
from harness.nn.vit import build
from harness.runtime.counting import (
    UncountedOpError,
    build_for_counting,
    count_flops,
    fvcore_flops,
    paper_table,
    torch_flops,
)
from harness.spec.model import ModelConfig, parse_model_spec

TOL = 0.01  # the acceptance: all three within 1% (in practice they agree exactly)


def counts(cfg: ModelConfig):
    model = build_for_counting(cfg)
    return (analytic_flops(cfg), count_flops(model, cfg, "fvcore"),
            count_flops(model, cfg, "torch"))


def assert_agree(cfg: ModelConfig):
    analytic, fv, tm = counts(cfg)
    for other in (fv, tm):
        assert other.total == pytest.approx(analytic.total, rel=TOL), (cfg.spec, other.counter)
        assert "other" not in other.by_kind, (cfg.spec, other.counter, other.by_kind)
        for kind in KINDS:
            assert other.by_kind[kind] == pytest.approx(analytic.by_kind[kind], rel=TOL,
                                                        abs=1.0), (cfg.spec, other.counter, kind)
    assert sum(analytic.by_kind.values()) == pytest.approx(analytic.total)
    return analytic


# 64 px at /16: 16 tokens per image, batch 1; MoE in the last half of the blocks.
@pytest.mark.slow
@pytest.mark.parametrize("size", ["ti", "s"])
@pytest.mark.parametrize("experts", [8, 32, 128])
@pytest.mark.parametrize("slots", [1, 2])
def test_soft_moe_counts_agree(size, experts, slots):
    analytic = assert_agree(ModelConfig(size=size, image_size=64, router="soft",
                                        num_experts=experts, slots_per_expert=slots))
    assert analytic.by_kind["experts"] > 0 and analytic.by_kind["routing"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("size", ["ti", "s"])
@pytest.mark.parametrize("experts", [8, 32, 128])
@pytest.mark.parametrize("router,k", [("tokens_choice", 1), ("tokens_choice", 2),
                                      ("experts_choice", None)])
def test_sparse_router_counts_agree(size, experts, router, k):
    assert_agree(ModelConfig(size=size, image_size=64, router=router, num_experts=experts, k=k))


@pytest.mark.parametrize("router", ["dense", "soft_uniform", "uniform_soft", "uniform",
                                    "identity"])
@pytest.mark.parametrize("pool", ["gap", "map"])
def test_other_routers_and_pools_agree(router, pool):
    assert_agree(ModelConfig(size="ti", image_size=64, router=router, num_experts=16, pool=pool))


def test_math_attention_backend_counts_the_same():
    cfg = ModelConfig(size="ti", image_size=64, router="soft", num_experts=8)
    sdpa = assert_agree(cfg)
    math_cfg = cfg.replace(attention="math")  # einsum attention instead of SDPA
    assert assert_agree(math_cfg).total == sdpa.total


def test_group_spanning_images_is_counted_per_image():
    # a routing group of two images: the forward runs on 2 images, counts are per image
    assert_agree(ModelConfig(size="ti", image_size=64, router="experts_choice", num_experts=8,
                             group_size=32))


def test_counts_on_meta_device_match_a_built_model():
    cfg = parse_model_spec("vit-ti/16@64:soft:e16:s2")
    with torch.device("meta"):
        meta_model = build(cfg)
    images = torch.randn(1, 3, 64, 64, device="meta")
    assert torch_flops(meta_model, images).total == analytic_flops(cfg).total


def test_convention_is_two_flops_per_multiply_add():
    # one linear layer 10 -> 20 on 16 tokens: 16*10*20 multiply-adds
    cfg = ModelConfig(size="w16d1h2m32", image_size=16, patch_size=4, num_classes=10)
    model = build(cfg)
    fv = count_flops(model, cfg, "fvcore")
    assert fv.by_kind["head"] == 2 * 16 * 10
    assert fv.by_kind["mlp"] == 2 * 16 * (2 * 16 * 32)


class _AddBmmMlp(Mlp):
    """A dense MLP that also runs an op no handle covers (aten::addbmm)."""

    def forward(self, x):
        extra = torch.addbmm(torch.zeros(x.shape[1], x.shape[1]), x, x.transpose(1, 2))
        return super().forward(x) + extra.sum() * 0


def test_an_uncounted_op_is_an_error_not_a_warning():
    model = build(ModelConfig(size="w16d1h2m32", image_size=16, patch_size=4, num_classes=3))
    model.blocks[0].mlp = _AddBmmMlp(16, 32)
    with pytest.raises(UncountedOpError, match="addbmm"):
        fvcore_flops(model, torch.randn(1, 3, 16, 16))


def test_an_uncounted_op_outside_a_vit_is_an_error_too():
    class Kron(nn.Module):
        def forward(self, a):
            return torch.kron(a, a)

    with pytest.raises(UncountedOpError, match="kron"):
        fvcore_flops(Kron(), torch.randn(2, 2))


def test_shape_formulas():
    assert matmul_macs([5, 3], [3, 7]) == 105
    assert matmul_macs([2, 1, 5, 3], [4, 3, 7]) == 2 * 4 * 105  # broadcast batch
    assert matmul_macs([3], [3, 7]) == 21
    q, k, v = [2, 4, 10, 8], [2, 4, 12, 8], [2, 4, 12, 6]  # (b, h, m, d)
    assert attention_macs(q, k, v) == 2 * 4 * 10 * 12 * (8 + 6)
    perm = lambda s: [s[0], s[2], s[1], s[3]]  # noqa: E731  (b, m, h, d), xformers' layout
    assert attention_macs(perm(q), perm(k), perm(v), layout="bmhd") == attention_macs(q, k, v)


def test_train_exaflops_conventions():
    # The paper's ViT S/16: 9.2 GFLOP/img, 4M steps x 4096 images -> 227 "training exaFLOP"
    result = train_exaflops(9.2, 4e6 * 4096)
    assert result["train_exaflops_paper"] == pytest.approx(227, rel=0.01)
    assert result["train_exaflops"] == pytest.approx(2 * result["train_exaflops_paper"])


def _printed_tolerance(value: float) -> float:
    """Half a unit in the last digit of a figure printed with 3 significant digits (or 2
    for '1.8B'-style figures): the rounding the paper's table carries."""
    digits = 2 if value in (1.8e9,) else 3
    return 0.5 * 10 ** (math.floor(math.log10(value)) - digits + 1)


def test_paper_table_rows_match_the_paper():
    rows = paper_table("meta")
    assert [r["model"] for r in rows] == [m.label for m in PAPER_MODELS]
    for row in rows:
        assert row["params"] == row["params_analytic"]
        assert row["gflops_per_image"] == pytest.approx(row["gflops_analytic"], rel=1e-9)
        # ours counts matrix products only; the paper's figures are 0.3-0.6% higher
        assert 0.99 < row["gflops_ratio"] <= 1.0, row
        assert abs(row["params"] - row["params_paper"]) <= max(
            0.01 * row["params_paper"], _printed_tolerance(row["params_paper"])), row
        assert row["train_exaflops"] == pytest.approx(2 * row["train_exaflops_paper_convention"])
    s16 = rows[0]
    assert s16["train_exaflops_paper_source"] == "printed"
    assert s16["train_exaflops_ratio"] == pytest.approx(1.0, abs=0.01)


@pytest.mark.slow
def test_paper_rows_analytic_equals_fvcore_where_buildable():
    for spec in ("vit-s/16", "vit-s/16:soft:e128:s1"):
        cfg = parse_paper_spec(spec)
        model = build_for_counting(cfg)
        assert fvcore_flops(model, torch.randn(1, 3, 224, 224)).total == \
            analytic_flops(cfg).total


def test_flop_counter_mode_counts_the_onednn_path():
    """On float32 CPUs the experts run through oneDNN's fused linear op without gradients;
    FlopCounterMode must count it (our custom mapping), not skip it as zero."""
    from harness.nn.moe.experts import onednn_ok

    if not onednn_ok(torch.zeros(1)):
        pytest.skip("this torch build has no oneDNN")
    cfg = ModelConfig(size="ti", image_size=32, router="soft", num_experts=4)
    count = torch_flops(build(cfg), torch.randn(2, 3, 32, 32))
    assert any("_linear_pointwise" in op for op in count.by_op), count.by_op
    assert count.total == pytest.approx(analytic_flops(cfg).total, rel=TOL)
