"""The routing details the paper's reference code (vmoe) runs, each on a hand-computed case.

Tokens Choice's importance loss on the noise-free gates, Experts Choice's training noise, the
capacity rules in exact arithmetic, the two GELU forms, and Soft MoE's normalisation
x·rsqrt(|x|² + 1e-6); then how the choices reach the studies, the records and the run ids.
Expected numbers are written here or computed in float64 from the formulas, never by the
code under test.
"""

import math
import textwrap
from pathlib import Path

import pytest
import torch

from harness.errors import ConfigError, HarnessError
from harness.nn.moe import BatchedExperts, ExpertsChoice, Mlp, SoftMoE, TokensChoice
from harness.nn.moe.routing import compute_capacity
from harness.nn.vit import build
from harness.spec.model import ModelConfig
from harness.spec.study import load

PAPER = Path(__file__).parents[2] / "studies" / "paper"


@pytest.fixture
def float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


@pytest.fixture
def fixed_noise(monkeypatch):
    """Make the routers' training noise the given tensor (their only randn_like call)."""
    def use(noise):
        monkeypatch.setattr(torch, "randn_like", lambda t: noise.to(t.dtype).reshape(t.shape))
    return use


def phi_cdf(z: float) -> float:
    return 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))


def gelu_erf(v: float) -> float:
    return 0.5 * v * (1.0 + math.erf(v / math.sqrt(2.0)))


def gelu_tanh(v: float) -> float:
    return 0.5 * v * (1.0 + math.tanh(math.sqrt(2.0 / math.pi) * (v + 0.044715 * v**3)))


def expert_out(layer, e: int, v: torch.Tensor) -> torch.Tensor:
    """Expert e of ``layer`` on one vector, with the exact GELU written out."""
    ex = layer.experts
    h = (v @ ex.w1[e] + ex.b1[e]).detach()
    h = torch.tensor([gelu_erf(float(a)) for a in h])
    return h @ ex.w2[e].detach() + ex.b2[e].detach()


# --- Tokens Choice: importance on the noise-free gates -------------------------------------
def test_tokens_choice_importance_uses_the_noise_free_gates(float64, fixed_noise):
    layer = TokensChoice(2, 2, 4, k=1, capacity_factor=1.0, noise_std=1.0).train()
    with torch.no_grad():
        layer.router.weight.copy_(torch.eye(2))  # logits = x
    # Clean gates: token 0 (0.75, 0.25), token 1 (0.5, 0.5): importance (1.25, 0.75), CV² 1/16.
    x = torch.tensor([[[math.log(3.0), 0.0], [0.0, 0.0]]])
    fixed_noise(torch.tensor([[[0.0, 2.0], [1.0, 0.0]]]))
    layer(x)
    importance = 0.25**2  # std 0.25 / mean 1
    # Load: P(expert e beats the top noisy logit t under fresh noise) = 1 - Phi(t - logit).
    thresholds = (2.0, 1.0)  # noisy top-1 of token 0 (expert 1) and token 1 (expert 0)
    clean = ((math.log(3.0), 0.0), (0.0, 0.0))
    p = [sum(1 - phi_cdf(thresholds[t] - clean[t][e]) for t in range(2)) for e in range(2)]
    load = ((p[0] - p[1]) / (p[0] + p[1])) ** 2  # CV² of two values
    assert layer.aux_loss.item() == pytest.approx((importance + load) / 2, rel=1e-7)


# --- Experts Choice: router noise in training, as the paper's config -----------------------
def test_experts_choice_trains_with_noise_of_std_one_over_experts_by_default():
    torch.manual_seed(0)
    layer, x = ExpertsChoice(4, 8, 8).train(), torch.randn(2, 16, 4)
    assert not torch.equal(layer(x), layer(x))  # the routing differs between draws
    assert layer.noise_std == pytest.approx(1 / 8)
    assert ExpertsChoice(4, 8, 8, noise_std=0.0).noise_std == 0.0
    tiny = dict(size="w16d2h2m32", patch_size=4, image_size=8, router="experts_choice",
                num_experts=4)
    assert [m.noise_std for m in build(ModelConfig(**tiny)).moe_layers()] == [0.25]
    no_noise = build(ModelConfig(**tiny, router_noise=0.0))
    assert [m.noise_std for m in no_noise.moe_layers()] == [0.0]


@pytest.mark.parametrize("noise_std", [1.0, 0.0])
def test_experts_choice_routes_on_the_noisy_gates_in_training(float64, fixed_noise, noise_std):
    layer = ExpertsChoice(2, 2, 4, capacity_factor=1.0, noise_std=noise_std).train()  # C = 1
    with torch.no_grad():
        layer.router.weight.copy_(torch.eye(2))
        layer.experts.b1.normal_()
    x = torch.tensor([[[0.2, 0.0], [0.1, 0.0]]])
    fixed_noise(torch.tensor([[[0.0, 0.0], [1.0, 0.0]]]))  # token 1's logits -> (1.1, 0)
    y = layer(x).detach()[0]
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731  (gate of expert 0 with 2 experts)
    if noise_std:  # expert 0 takes token 1 (0.750 > 0.550), expert 1 token 0 (0.450 > 0.250)
        want = [(1 - sig(0.2)) * expert_out(layer, 1, x[0, 0]),
                sig(1.1) * expert_out(layer, 0, x[0, 1])]
    else:  # Zhou et al.: expert 0 takes token 0 (0.550 > 0.525), expert 1 token 1
        want = [sig(0.2) * expert_out(layer, 0, x[0, 0]),
                (1 - sig(0.1)) * expert_out(layer, 1, x[0, 1])]
    assert torch.allclose(y, torch.stack(want), rtol=1e-12, atol=1e-12)
    layer.eval()  # no noise in evaluation
    assert torch.equal(layer(x), layer(x))


# --- capacity rules, in exact arithmetic ---------------------------------------------------
@pytest.mark.parametrize("tokens,experts,factor,rule,k,expected", [
    (50, 5, 1.1, "ceil", 1, 11),  # exactly 11 (vmoe's float product is 11.000000000000002: 12)
    (50, 5, 1.1, "round", 1, 11),
    (50, 5, 1.1, "ceil4", 1, 12),  # vmoe's default: up to a multiple of 4
    (100, 10, 1.00000000001, "ceil", 1, 11),  # 10.0000000001: a 1e-9 slack would give 10
    (5, 2, 1.0, "round", 1, 2),  # 2.5: half to even
    (7, 2, 1.0, "round", 1, 4),  # 3.5
    (196, 32, 1.0, "round", 1, 6),  # 6.125 (ceil: 7)
    (196, 128, 1.0, "round", 1, 2),  # 1.53
    (196, 128, 1.0, "ceil4", 1, 4),  # 2 -> 4
    (196, 32, 1.0, "ceil", 2, 13),  # K = 2: 12.25
    (16, 64, 1.0, "round", 1, 1),  # 0.25 rounds to 0: at least one row
    (8, 2, 100.0, "ceil4", 1, 8),  # at most the group
])
def test_capacity_rules(tokens, experts, factor, rule, k, expected):
    assert compute_capacity(tokens, experts, factor, rounding=rule, k=k) == expected


def test_default_rule_is_ceil_in_exact_arithmetic():
    assert compute_capacity(50, 5, 1.1) == 11
    assert compute_capacity(100, 10, 1.00000000001) == 11  # a 1e-9 float slack gives 10


def test_unknown_capacity_rule_is_one_clear_error():
    with pytest.raises(ConfigError, match=r"capacity_rounding must be 'ceil', 'round', or "
                                          r"either followed by a multiple, e.g. 'ceil4', "
                                          r"got 'floor'"):
        compute_capacity(16, 4, 1.0, "floor")
    with pytest.raises(ConfigError, match="capacity_rounding"):
        ModelConfig(router="tokens_choice", capacity_rounding="ceil0")


def test_layers_use_their_capacity_rule():
    # 8 tokens all choosing expert 0 of 4: capacity ceil(2) = 2 keeps 2, ceil4 keeps 4.
    x = torch.rand(1, 8, 4) + 1.0
    for rule, dropped in (("ceil", 0.75), ("ceil4", 0.5)):
        layer = TokensChoice(4, 4, 8, k=1, capacity_rounding=rule).eval()
        with torch.no_grad():
            layer.router.weight.copy_(torch.tensor([[9.0, 9, 9, 9], [0, 0, 0, 0], [0, 0, 0, 0],
                                                    [0, 0, 0, 0]]))
        layer(x)
        assert layer.metrics["dropped_fraction"] == dropped
    # Experts Choice, 5 tokens, 2 experts: round(2.5) = 2 tokens each, ceil = 3.
    for rule, taken in (("round", 4), ("ceil", 6)):
        layer = ExpertsChoice(4, 2, 8, capacity_rounding=rule).eval()
        layer(torch.randn(1, 5, 4))
        assert layer.metrics["experts_per_token"] == pytest.approx(taken / 5)
    cfg = ModelConfig(size="s", router="experts_choice", num_experts=128, capacity_rounding="round")
    assert cfg.expert_capacity == 2  # 196 tokens: round(1.53)


# --- GELU: exact (erf) or tanh approximation ----------------------------------------------
POINTS = (1.0, -0.5, 2.0, -3.0)


def unit_experts(gelu: str, dtype) -> BatchedExperts:
    experts = BatchedExperts(1, 1, 1, gelu=gelu).to(dtype)
    with torch.no_grad():  # out = gelu(x)
        experts.w1.fill_(1.0)
        experts.w2.fill_(1.0)
    return experts


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("gelu,form", [("tanh", gelu_tanh), ("erf", gelu_erf)])
def test_gelu_forms_on_every_path(dtype, gelu, form):
    assert abs(gelu_tanh(1.0) - gelu_erf(1.0)) > 1e-4  # the forms differ (0.84119 vs 0.84134)
    want = torch.tensor([form(v) for v in POINTS], dtype=torch.float64)
    tol = dict(rtol=0, atol=1e-6 if dtype == torch.float32 else 1e-12)  # forms differ by >1e-4
    x = torch.tensor(POINTS, dtype=dtype).view(1, -1, 1)
    experts = unit_experts(gelu, dtype)
    with torch.no_grad():  # inference: oneDNN (float32) or MKL, GELU in place
        assert torch.allclose(experts(x).double().flatten(), want, **tol)
    xg = x.clone().requires_grad_()
    out = experts(xg)  # training: the hand-written backward
    assert torch.allclose(out.double().flatten(), want, **tol)
    out.sum().backward()
    ref = torch.tensor(POINTS, dtype=torch.float64, requires_grad=True)
    torch.nn.functional.gelu(ref, approximate="tanh" if gelu == "tanh" else "none").sum().backward()
    assert torch.allclose(xg.grad.double().flatten(), ref.grad, rtol=1e-5, atol=1e-6)
    mlp = Mlp(1, 1, gelu=gelu).to(dtype)
    with torch.no_grad():
        mlp.fc1.weight.fill_(1.0)
        mlp.fc2.weight.fill_(1.0)
        assert torch.allclose(mlp(x).double().flatten(), want, **tol)


def test_gelu_applies_to_every_mlp_of_a_model():
    for router in ("dense", "soft", "tokens_choice", "experts_choice"):
        model = build(ModelConfig(size="w16d2h2m32", patch_size=4, image_size=8, pool="map",
                                  router=router, num_experts=4, gelu="tanh"))
        kinds = [m.gelu for m in model.modules() if isinstance(m, (Mlp, BatchedExperts))]
        assert len(kinds) >= 3 and set(kinds) == {"tanh"}, router
    with pytest.raises(ConfigError, match="gelu must be one of erf, tanh, got 'relu'"):
        ModelConfig(gelu="relu")


# --- Soft MoE: x·rsqrt(|x|² + 1e-6) -------------------------------------------------------
def test_soft_moe_normalises_as_the_papers_code(float64):
    layer = SoftMoE(2, 1, 1, 3)  # one slot: every token gets the slot's output
    with torch.no_grad():
        layer.phi.copy_(torch.tensor([1.0, 0.0]).view(2, 1, 1))
        layer.experts.b1.normal_()
    x = torch.tensor([[[1e-3, 0.0], [3.0, 4.0], [0.0, -2.0]]])
    phi_unit = 1 / math.sqrt(1 + 1e-6)
    # |x| = 1e-3: 1e-3 / sqrt(2e-6) = 0.7071 (x / (|x| + 1e-6) would give 0.999)
    logits = [1e-3 / math.sqrt(2e-6) * phi_unit, 3 / math.sqrt(25 + 1e-6) * phi_unit, 0.0]
    assert torch.allclose(layer.logits(x)[0, :, 0], torch.tensor(logits), rtol=1e-12)
    total = sum(math.exp(v) for v in logits)
    slot = sum(math.exp(v) / total * x[0, i] for i, v in enumerate(logits))
    want = expert_out(layer, 0, slot).expand(3, 2)
    assert torch.allclose(layer(x).detach()[0], want, rtol=1e-12)  # the fast path
    with torch.no_grad():
        assert torch.allclose(layer(x)[0], want, rtol=1e-12)


def test_soft_moe_backward_near_zero_tokens(float64):
    torch.manual_seed(0)
    layer = SoftMoE(4, 2, 2, 6)
    x = torch.randn(2, 5, 4)
    x[0, 1] *= 1e-3  # near-zero tokens, where the two normalisations differ most
    x[1, 3] = 0.0
    x.requires_grad_()
    phi = layer.phi
    assert torch.autograd.gradcheck(lambda x, phi: layer(x), (x, phi), eps=1e-7, atol=1e-6)


# --- studies, records and run ids ----------------------------------------------------------
BASE = """
name: t
data: {name: synthetic, image_size: 16, num_classes: 10}
train: {steps: 10, batch_size: 8}
"""


def study(tmp_path, body: str):
    path = tmp_path / "study.yaml"
    path.write_text(textwrap.dedent(BASE) + textwrap.dedent(body))
    return load(path)


def test_choices_are_recorded_and_separate_run_ids(tmp_path):
    s = study(tmp_path, """
        grid:
          model: [vit-w32d4h4m64/4]
          router: [dense, soft, experts_choice]
          num_experts: [4]
          gelu: [erf, tanh]
          capacity_rounding: [ceil, round]
          router_noise: [0.0, 1.0]
    """)
    specs = s.expand()
    by_router: dict = {}
    for spec in specs:
        by_router.setdefault(spec.router, []).append(spec)
    # dense and soft ignore the sparse routers' rounding and noise; gelu applies to all
    assert {r: len(v) for r, v in by_router.items()} == {
        "dense": 2, "soft": 2, "experts_choice": 8}
    assert len({spec.run_id for spec in specs}) == len(specs)
    for spec in specs:
        flat = spec.flat()
        assert flat["gelu"] == spec.gelu in ("erf", "tanh")
        if spec.router == "experts_choice":
            assert flat["capacity_rounding"] in ("ceil", "round")
            assert flat["router_noise"] in (0.0, 1.0)
        else:
            assert flat["capacity_rounding"] is None and flat["router_noise"] is None
    defaults = study(tmp_path, "grid: {model: [vit-w32d4h4m64/4], router: [tokens_choice]}\n")
    (spec,) = defaults.expand()
    assert (spec.gelu, spec.capacity_rounding, spec.router_noise) == ("erf", "ceil", 1.0)
    cfg = spec.model_config_()
    assert (cfg.gelu, cfg.capacity_rounding, cfg.router_noise) == ("erf", "ceil", 1.0)


@pytest.mark.parametrize("axis,value,message", [
    ("gelu", "relu", "gelu must be one of erf, tanh, got 'relu'"),
    ("capacity_rounding", "floor", "capacity_rounding must be 'ceil', 'round'"),
    ("router_noise", -1, "router_noise must be >= 0, got -1.0"),
    ("gelu", 1, "gelu: expected a string, got 1"),
    ("router_noise", "true", "router_noise: expected a finite number, got True"),
])
def test_bad_choice_in_a_study_is_one_line_naming_the_file(tmp_path, axis, value, message):
    with pytest.raises(HarnessError) as err:
        study(tmp_path, f"""
            grid: {{model: [vit-w32d4h4m64/4], router: [tokens_choice]}}
            fixed: {{{axis}: {value}}}
        """)
    text = str(err.value)
    assert "study.yaml" in text and message in text and "\n" not in text


@pytest.mark.parametrize("profile", ["laptop", "cluster"])
@pytest.mark.parametrize("name", ["pareto", "experts_slots", "slots_per_expert", "placement",
                                  "ablations", "inference"])
def test_paper_studies_state_the_papers_choices(name, profile):
    raw = (PAPER / f"{name}.yaml").read_text()
    assert "gelu: tanh" in raw  # stated in the file, not left to a default
    rules = {"tokens_choice": "ceil4", "experts_choice": "round"}
    for spec in load(PAPER / f"{name}.yaml", profile=profile).expand():
        assert spec.gelu == "tanh"
        if spec.router in rules:
            assert spec.capacity_rounding == rules[spec.router], spec.label
            assert spec.router_noise == 1.0
            assert "capacity_rounding: [ceil4, round]" in raw and "router_noise: 1.0" in raw
