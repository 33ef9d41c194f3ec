"""Timing protocol, memory, the layer benchmark, and the fast Soft MoE / experts kernels: the
hand-written backwards equal autograd on the plain formulation (float64)."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from harness import bench
from harness.cli import app
from harness.moe import BatchedExperts, SoftMoE
from harness.moe.experts import _PACKED, _ExpertsFunction, drop_packed, mm_nt, new_buffer, onednn_ok
from harness.moe.soft import _SoftCombine, _SoftDispatch


# --- the protocol ----------------------------------------------------------------------------
def test_time_call_warms_up_then_takes_the_median(monkeypatch):
    calls = []
    scripted = iter([0.005, 0.001, 0.003, 0.002, 0.004])
    monkeypatch.setattr(bench, "time_once", lambda fn, device: (fn(), next(scripted))[1])
    result = bench.time_call(lambda: calls.append(1), repeats=5, warmup=3)
    assert len(calls) == 3 + 5
    assert result["median_ms"] == pytest.approx(3.0)
    assert (result["min_ms"], result["max_ms"], result["n"]) == (pytest.approx(1.0),
                                                                pytest.approx(5.0), 5)


def test_time_pairs_interleaves_and_reports_the_median_ratio(monkeypatch):
    order = []
    times = {"ours": iter([1.0, 1.0, 2.0, 1.0]), "theirs": iter([3.0, 2.0, 2.0, 5.0])}

    def fake(fn, device):
        name = fn()
        order.append(name)
        return next(times[name])

    monkeypatch.setattr(bench, "time_once", fake)
    result = bench.time_pairs(lambda: "ours", lambda: "theirs", repeats=4, warmup=0, gate=None)
    assert order == ["ours", "theirs", "theirs", "ours", "ours", "theirs", "theirs", "ours"]
    assert (result["ratio_min"], result["ratio_max"]) == (1.0, 5.0)
    assert result["ratio_median"] == pytest.approx(2.5)  # ratios 3, 2, 1, 5
    assert result["pairs_total"] == 4 and result["clean"] is False


def test_time_pairs_keeps_only_blocks_without_other_load(monkeypatch):
    loads = iter([0.5, 0.0, 0.02, 0.9, 0.0])  # other processes' share of the CPUs per block
    monkeypatch.setattr(bench.Interference, "others", lambda self, a, b: next(loads))
    times = iter([1.0, 9.0] + [1.0, 2.0] * 4)  # the disturbed first pair looks like x9
    monkeypatch.setattr(bench, "time_once", lambda fn, device: next(times))
    result = bench.time_pairs(lambda: None, lambda: None, repeats=3, warmup=0, gate=0.1)
    assert result["clean"] and result["pairs_clean"] == 3 and result["pairs_total"] == 5
    assert result["ratio_median"] == pytest.approx(2.0)
    assert result["ratio_median_all_pairs"] == pytest.approx(2.0)
    assert result["ratio_max"] == pytest.approx(2.0)  # the x9 pair is left out


def test_peak_memory_counts_weights_grads_and_optimizer_state():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 512),
                                torch.nn.Linear(512, 10))
    images, labels = torch.randn(4, 3, 8, 8), torch.randint(0, 10, (4,))
    out = bench.peak_memory_mb(model, images, labels)
    weights_mb = sum(p.numel() for p in model.parameters()) * 4 / 2**20
    assert 4 * weights_mb <= out["peak_memory_mb"] < 4 * weights_mb + 1  # w, grad, 2 moments
    assert "allocator" in out["peak_memory_method"]


# --- the fast kernels equal the plain formulation ----------------------------------------------
def plain_soft_moe(layer: SoftMoE, x):
    """The layer written with plain torch ops (autograd does the backward)."""
    d, n = x.shape[2], layer.num_slots
    phi = layer.phi.reshape(d, n)
    if layer.normalize:
        xn = x * (x.pow(2).sum(-1, keepdim=True) + 1e-6).rsqrt()  # the paper's code's form
        phin = phi * (phi.pow(2).sum(0, keepdim=True) + 1e-6).rsqrt() * layer.scale
        logits = xn @ phin
    else:
        logits = x @ phi
    slots = torch.softmax(logits, dim=1).transpose(1, 2) @ x  # (B, n, D)
    ex = layer.experts
    b, e, p = x.shape[0], layer.num_experts, layer.slots_per_expert
    xe = slots.reshape(b, e, p, d).transpose(0, 1).reshape(e, b * p, d)
    out = F.gelu(xe @ ex.w1 + ex.b1[:, None]) @ ex.w2 + ex.b2[:, None]
    out = out.reshape(e, b, p, d).transpose(0, 1).reshape(b, n, d)
    return torch.softmax(logits, dim=2) @ out


@pytest.mark.parametrize("experts,slots,normalize", [(1, 1, True), (4, 1, True), (4, 2, True),
                                                     (3, 3, False), (8, 1, False)])
def test_fast_soft_moe_equals_plain_formulation_with_gradients(experts, slots, normalize):
    torch.manual_seed(experts * 10 + slots)
    dtype = torch.float64
    layer = SoftMoE(12, experts, slots, 20, normalize=normalize).to(dtype)
    with torch.no_grad():
        layer.scale.fill_(1.3)
        layer.experts.b1.normal_()
        layer.experts.b2.normal_()
    x = torch.randn(3, 7, 12, dtype=dtype, requires_grad=True)
    g = torch.randn(3, 7, 12, dtype=dtype)
    grads = []
    for fn in (layer, lambda v: plain_soft_moe(layer, v)):
        layer.zero_grad(set_to_none=True)
        x.grad = None
        y = fn(x)
        (y * g).sum().backward()
        grads.append((y.detach(), x.grad.clone(),
                      {k: p.grad.clone() for k, p in layer.named_parameters()
                       if p.grad is not None}))
    (y1, gx1, gp1), (y2, gx2, gp2) = grads
    assert torch.allclose(y1, y2, rtol=1e-10, atol=1e-12)
    assert torch.allclose(gx1, gx2, rtol=1e-10, atol=1e-12)
    assert gp1.keys() == gp2.keys()
    for name in gp1:
        assert torch.allclose(gp1[name], gp2[name], rtol=1e-10, atol=1e-12), name
    with torch.no_grad():  # the inference path (in-place GELU, nothing saved) agrees too
        assert torch.allclose(layer(x), y1, rtol=1e-12, atol=1e-12)


def test_zero_token_has_a_finite_gradient():
    layer = SoftMoE(6, 2, 1, 8).double()
    x = torch.randn(1, 4, 6, dtype=torch.float64)
    x[0, 0] = 0.0
    x.requires_grad_(True)
    layer(x).sum().backward()
    assert torch.isfinite(x.grad).all()


def test_autograd_functions_pass_gradcheck():
    torch.manual_seed(0)
    kw = dict(dtype=torch.float64, requires_grad=True)
    x, phi_t = torch.randn(2, 5, 6, **kw), torch.randn(4, 6, **kw)
    for experts, normalize in ((2, True), (4, False), (1, True)):
        assert torch.autograd.gradcheck(
            lambda a, b, e=experts, nz=normalize: _SoftDispatch.apply(a, b, e, nz, True),
            (x, phi_t))
    combine = torch.randn(2, 5, 4, dtype=torch.float64).softmax(-1).requires_grad_(True)
    slot_out = torch.randn(2, 4, 6, **kw)  # 2 experts x (2 slots x 2 images)
    assert torch.autograd.gradcheck(lambda c, s: _SoftCombine.apply(c, s, True),
                                    (combine, slot_out))
    args = (torch.randn(3, 4, 5, **kw), torch.randn(3, 5, 7, **kw), torch.randn(3, 7, **kw),
            torch.randn(3, 7, 5, **kw), torch.randn(3, 5, **kw))
    assert torch.autograd.gradcheck(lambda *a: _ExpertsFunction.apply(*a, True), args)


def test_batched_experts_fast_path_equals_fallback():
    torch.manual_seed(1)
    experts = BatchedExperts(3, 8, 16).double()
    x = torch.randn(3, 5, 8, dtype=torch.float64)
    fast = experts(x)
    plain = F.gelu(torch.baddbmm(experts.b1.unsqueeze(1), x, experts.w1))
    plain = torch.baddbmm(experts.b2.unsqueeze(1), plain, experts.w2)
    assert torch.allclose(fast, plain, rtol=1e-12, atol=1e-12)


needs_onednn = pytest.mark.skipif(not onednn_ok(torch.zeros(1)),
                                  reason="this torch build has no oneDNN")


@needs_onednn
def test_onednn_inference_path_equals_the_training_path():
    """Without gradients float32 CPU experts and Soft MoE logits go through oneDNN's fused
    matmul + bias + GELU; with gradients through the MKL path. Same numbers (float32), and
    the float64 plain formulation agrees with both."""
    torch.manual_seed(2)
    layer = SoftMoE(24, 6, 2, 48)
    for p in layer.experts.parameters():  # non-zero biases, so that their fusion is tested
        torch.nn.init.normal_(p)
    x = torch.randn(3, 10, 24)
    with torch.no_grad():
        inference = layer(x)
    training = layer(x.clone().requires_grad_(True)).detach()
    assert torch.allclose(inference, training, rtol=1e-4, atol=1e-4)
    plain = SoftMoE(24, 6, 2, 48).double()
    plain.load_state_dict(layer.state_dict())
    with torch.no_grad():
        reference = plain(x.double())  # float64: the MKL path
    assert torch.allclose(inference.double(), reference, rtol=1e-4, atol=1e-4)
    experts_in = torch.randn(5, 6, 24).transpose(0, 1)  # strided, as Soft MoE passes it
    with torch.no_grad():
        fast = layer.experts(experts_in)
    plain_out = torch.baddbmm(layer.experts.b2.unsqueeze(1), F.gelu(torch.baddbmm(
        layer.experts.b1.unsqueeze(1), experts_in, layer.experts.w1)), layer.experts.w2)
    assert torch.allclose(fast, plain_out.detach(), rtol=1e-4, atol=1e-4)
    a, b = torch.randn(7, 24), torch.randn(5, 24)
    assert torch.allclose(mm_nt(a, b), a @ b.t(), rtol=1e-5, atol=1e-5)


@needs_onednn
def test_packed_weights_follow_every_weight_change():
    torch.manual_seed(3)
    experts = BatchedExperts(4, 8, 16)
    x = torch.randn(4, 5, 8)

    def plain():
        h = F.gelu(torch.baddbmm(experts.b1.unsqueeze(1), x, experts.w1))
        return torch.baddbmm(experts.b2.unsqueeze(1), h, experts.w2).detach()

    with torch.no_grad():
        assert torch.allclose(experts(x), plain(), atol=1e-5) and experts in _PACKED
    optimizer = torch.optim.SGD(experts.parameters(), lr=0.5)
    experts(x.requires_grad_(True)).sum().backward()
    assert experts not in _PACKED  # a forward with gradients drops the packed copy
    with torch.no_grad():
        experts(x)  # packs the current weights
        optimizer.step()  # in place: bumps the weights' versions
        assert torch.allclose(experts(x), plain(), atol=1e-5)
        experts.load_state_dict({k: v + 1 for k, v in experts.state_dict().items()})
        assert torch.allclose(experts(x), plain(), atol=1e-5)
        experts.w1.data.mul_(2)  # bypasses version counters: the documented escape
        drop_packed(experts)
        assert torch.allclose(experts(x), plain(), atol=1e-5)


def test_new_buffer_is_an_ordinary_tensor():
    like = torch.zeros(1, dtype=torch.float64)
    big = new_buffer((3, 1024, 1024), like)  # 24 MiB: advised as huge pages on Linux
    assert big.shape == (3, 1024, 1024) and big.dtype == torch.float64
    big.fill_(2.0)
    assert big.sum().item() == 2.0 * 3 * 1024 * 1024


# --- the layer benchmark ------------------------------------------------------------------------
def test_bench_layers_small_config_runs_and_reports_every_column():
    result = bench.bench_layers(dim=32, tokens=8, batch=2, experts=(4,), slots=(1, 2),
                                repeats=2, warmup=1, plain_matmul_size=(256, 256, 256))
    kinds = [(r["kind"], r["experts"], r["slots_per_expert"]) for r in result["rows"]]
    assert kinds == [("soft", 4, 1), ("soft", 4, 2), ("dense", None, None),
                     ("tokens_choice", 4, None), ("experts_choice", 4, None)]
    soft = result["rows"][0]
    for key in ("fwd_ms", "fwd_bwd_ms", "experts_fwd_ms", "bare_matmul_fwd_ms",
                "experts_gflops_per_s_fwd", "experts_fraction_of_plain_fwd",
                "layer_over_bare_fwd", "layer_over_bare_fwd_bwd", "plain_matmul_gflops_per_s"):
        assert soft[key] > 0, key
    if bench.reference_soft_moe(32, 4, 1, 128) is None:
        pytest.skip("soft-moe-pytorch not installed (pip install 'moe-harness[bench]'): "
                    "the comparison columns were not measured")
    assert soft["ref_fwd_ms"] > 0 and soft["speedup_fwd_median"] > 0
    assert soft["speedup_fwd_p10"] <= soft["speedup_fwd_median"] <= soft["speedup_fwd_p90"]
    assert math.isfinite(result["machine"]["plain_matmul_gflops_per_s"])


def test_bench_layers_cli_writes_json(tmp_path):
    out = tmp_path / "layers.json"
    result = CliRunner().invoke(app, ["bench", "layers", "--dim", "32", "--tokens", "8",
                                      "--batch", "2", "--experts", "4", "--quick",
                                      "--repeats", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "speedup" in result.output
    data = json.loads(out.read_text())
    assert {r["kind"] for r in data["rows"]} == {"dense", "soft", "tokens_choice",
                                                 "experts_choice"}


def test_inspect_cli_json_and_paper(tmp_path):
    out = tmp_path / "inspect.json"
    runner = CliRunner()
    result = runner.invoke(app, ["inspect", "vit-ti/16@64", "vit-ti/16@64:soft:e8",
                                 "--json", str(out)])
    assert result.exit_code == 0, result.output
    rows = json.loads(out.read_text())
    assert [r["model"] for r in rows] == ["vit-ti/16@64", "vit-ti/16@64:soft:e8:s1"]
    assert rows[1]["gflops_routing"] > 0 and rows[0]["gflops_experts"] == 0
    paper = runner.invoke(app, ["inspect", "--paper"])
    assert paper.exit_code == 0, paper.output
    for label in ("ViT S/16", "ViT B/16", "ViT L/16", "ViT H/14", "Soft MoE S/16 128E",
                  "Soft MoE H/14 128E", "Soft MoE H/14 256E"):
        assert label in paper.output


@pytest.mark.slow
def test_inspect_time_adds_measurements(tmp_path):
    out = tmp_path / "t.json"
    result = CliRunner().invoke(app, ["inspect", "vit-w32d2h2m64/8@16:soft:e4", "--time",
                                      "--batch-size", "4", "--repeats", "2", "--json",
                                      str(out)])
    assert result.exit_code == 0, result.output
    row = json.loads(out.read_text())[0]
    assert row["infer_images_per_s"] > 0 and row["train_step_ms"] > 0
    assert row["peak_memory_mb"] > 0
