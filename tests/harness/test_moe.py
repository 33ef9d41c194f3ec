"""Every MLP kind against a float64 reference written from the paper's equations.

The references use Python loops over tokens, slots and experts and share no code with
``harness.nn.moe``; the implementation must match them to a relative error below 1e-6.
"""

import math

import pytest
import torch

from harness.errors import ConfigError
from harness.nn.moe import BatchedExperts, ExpertsChoice, SoftMoE, TokensChoice, compute_capacity

TOL = 1e-6


@pytest.fixture(autouse=True)
def _float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def gelu(v):
    return v * 0.5 * (1.0 + torch.erf(v / math.sqrt(2.0)))


def expert_ref(experts, e, v):
    """Expert e applied to one vector v."""
    h = gelu(v @ experts.w1[e] + experts.b1[e])
    return h @ experts.w2[e] + experts.b2[e]


def softmax_list(values):
    top = max(values)
    exps = [math.exp(v - top) for v in values]
    total = sum(exps)
    return [v / total for v in exps]


def rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


# --- Soft MoE ------------------------------------------------------------------------------
def soft_moe_ref(layer: SoftMoE, x):
    batch, m, d = x.shape
    e_count, p = layer.num_experts, layer.slots_per_expert
    n = e_count * p
    phi = layer.phi.detach().reshape(d, n)
    y = torch.zeros_like(x)
    for b in range(batch):
        xs = x[b]
        if layer.normalize:
            # the paper's code: v / sqrt(|v|² + 1e-6)
            xn = torch.stack([v / math.sqrt(sum(float(c) ** 2 for c in v) + 1e-6) for v in xs])
            cols = [phi[:, j] / math.sqrt(sum(float(c) ** 2 for c in phi[:, j]) + 1e-6)
                    for j in range(n)]
            phin = torch.stack(cols, dim=1) * layer.scale.item()
        else:
            xn, phin = xs, phi
        logits = [[float(xn[i] @ phin[:, j]) for j in range(n)] for i in range(m)]
        slot_out = []
        for j in range(n):
            dispatch = softmax_list([logits[i][j] for i in range(m)])  # over tokens
            slot_in = sum(dispatch[i] * xs[i] for i in range(m))
            slot_out.append(expert_ref(layer.experts, j // p, slot_in))  # slot j -> expert j//p
        for i in range(m):
            combine = softmax_list(logits[i])  # over all slots
            y[b, i] = sum(combine[j] * slot_out[j] for j in range(n))
    return y


@pytest.mark.parametrize("experts,slots", [(1, 1), (4, 1), (4, 2), (8, 3), (16, 1)])
@pytest.mark.parametrize("normalize", [True, False])
def test_soft_moe_matches_reference(experts, slots, normalize):
    torch.manual_seed(experts * 10 + slots)
    layer = SoftMoE(12, experts, slots, 20, normalize=normalize)
    with torch.no_grad():
        layer.scale.fill_(1.7)
    x = torch.randn(2, 7, 12)
    assert rel_err(layer(x).detach(), soft_moe_ref(layer, x)) < TOL


def test_soft_moe_is_permutation_equivariant_and_drops_nothing():
    torch.manual_seed(0)
    layer = SoftMoE(16, 8, 2, 32)
    x = torch.randn(3, 10, 16)
    perm = torch.randperm(10)
    y = layer(x)
    assert torch.allclose(layer(x[:, perm]), y[:, perm], atol=1e-12)
    assert layer.metrics["dropped_fraction"] == 0.0
    assert (y.abs().sum(-1) > 0).all()  # every token receives an output


def test_soft_moe_slots_follow_the_paper_shapes():
    layer = SoftMoE(6, 5, 3, 9)
    assert layer.phi.shape == (6, 5, 3)
    assert layer.scale.shape == () and layer.scale.item() == 1.0
    assert layer.experts.w1.shape == (5, 6, 9) and layer.experts.w2.shape == (5, 9, 6)


# --- Tokens Choice -------------------------------------------------------------------------
def tokens_choice_ref(layer: TokensChoice, x):
    """Eval mode (no noise); one image per group."""
    batch, s, d = x.shape
    e_count, k = layer.num_experts, layer.k
    capacity = max(1, min(s, math.ceil(k * layer.capacity_factor * s / e_count - 1e-9)))
    w = layer.router.weight.detach()
    y = torch.zeros_like(x)
    dropped = 0
    for b in range(batch):
        gates = [softmax_list([float(w[e] @ x[b, t]) for e in range(e_count)]) for t in range(s)]
        choices = [sorted(range(e_count), key=lambda e, g=g: -g[e])[:k] for g in gates]
        order = list(range(s))
        if layer.bpr:
            order.sort(key=lambda t: -gates[t][choices[t][0]])
        used = [0] * e_count
        for j in range(k):  # every first choice before any second choice
            for t in order:
                e = choices[t][j]
                if used[e] < capacity:
                    used[e] += 1
                    y[b, t] += gates[t][e] * expert_ref(layer.experts, e, x[b, t])
                else:
                    dropped += 1
    return y, dropped / (batch * s * k)


@pytest.mark.parametrize("k", [1, 2])
@pytest.mark.parametrize("capacity_factor", [8.0, 1.0, 0.5])
@pytest.mark.parametrize("bpr", [True, False])
def test_tokens_choice_matches_reference(k, capacity_factor, bpr):
    torch.manual_seed(k * 7 + int(capacity_factor * 4))
    layer = TokensChoice(10, 4, 16, k=k, capacity_factor=capacity_factor, bpr=bpr).eval()
    x = torch.randn(3, 9, 10)
    ref, dropped = tokens_choice_ref(layer, x)
    assert rel_err(layer(x).detach(), ref) < TOL
    assert layer.metrics["dropped_fraction"] == pytest.approx(dropped)
    if capacity_factor == 8.0:
        assert dropped == 0.0
    if capacity_factor == 0.5:
        assert dropped > 0.0


def hand_built_tokens_choice(bpr: bool) -> TokensChoice:
    # Identity router: logits = x, so token gates are known by hand.
    layer = TokensChoice(2, 2, 4, k=1, capacity_factor=0.5, bpr=bpr).eval()  # capacity 1
    with torch.no_grad():
        layer.router.weight.copy_(torch.eye(2))
    return layer


@pytest.mark.parametrize("bpr,kept", [(True, {1, 3}), (False, {0, 2})])
def test_batch_priority_routing_drops_the_low_confidence_tokens(bpr, kept):
    layer = hand_built_tokens_choice(bpr)
    # Tokens 0 and 1 pick expert 0 (gates 0.52, 0.88); tokens 2 and 3 pick expert 1 (0.73, 0.95).
    x = torch.tensor([[[0.1, 0.0], [2.0, 0.0], [0.0, 1.0], [0.0, 3.0]]])
    y = layer(x)[0]
    nonzero = {t for t in range(4) if y[t].abs().sum() > 0}
    assert nonzero == kept
    assert layer.metrics["dropped_fraction"] == 0.5


def test_tokens_choice_aux_loss_is_balanced_minimum():
    layer = TokensChoice(4, 4, 8, k=1).eval()
    with torch.no_grad():
        layer.router.weight.zero_()  # all gates equal: perfectly balanced importance
    layer(torch.randn(2, 8, 4))
    assert layer.aux_loss.item() == pytest.approx(0.0, abs=1e-12)
    layer.train()
    with torch.no_grad():
        layer.router.weight.copy_(torch.tensor([[5.0, 0, 0, 0]] * 4) * torch.arange(4.0)[:, None])
    layer(torch.rand(2, 8, 4) + 1)
    assert layer.aux_loss.item() > 0.1


def test_tokens_choice_noise_only_in_training():
    torch.manual_seed(0)
    layer = TokensChoice(8, 4, 8, k=1, noise_std=1.0)
    x = torch.randn(2, 6, 8)
    layer.eval()
    assert torch.equal(layer(x), layer(x))
    layer.train()
    assert not torch.equal(layer(x), layer(x))


def test_tokens_choice_rejects_k_above_experts():
    with pytest.raises(ConfigError, match="k must be <= num_experts"):
        TokensChoice(4, 2, 8, k=3)


# --- Experts Choice ------------------------------------------------------------------------
def experts_choice_ref(layer: ExpertsChoice, x):
    batch, s, d = x.shape
    e_count = layer.num_experts
    capacity = max(1, min(s, math.ceil(layer.capacity_factor * s / e_count - 1e-9)))
    w = layer.router.weight.detach()
    y = torch.zeros_like(x)
    covered = 0
    for b in range(batch):
        gates = [softmax_list([float(w[e] @ x[b, t]) for e in range(e_count)]) for t in range(s)]
        taken = set()
        for e in range(e_count):
            for t in sorted(range(s), key=lambda t, e=e: -gates[t][e])[:capacity]:
                y[b, t] += gates[t][e] * expert_ref(layer.experts, e, x[b, t])
                taken.add(t)
        covered += len(taken)
    return y, covered / (batch * s)


@pytest.mark.parametrize("experts,capacity_factor", [(4, 1.0), (4, 0.5), (3, 2.0), (8, 1.0)])
def test_experts_choice_matches_reference(experts, capacity_factor):
    torch.manual_seed(experts)
    layer = ExpertsChoice(10, experts, 16, capacity_factor=capacity_factor).eval()  # no noise
    x = torch.randn(2, 9, 10)
    ref, coverage = experts_choice_ref(layer, x)
    assert rel_err(layer(x).detach(), ref) < TOL
    assert layer.metrics["token_coverage"] == pytest.approx(coverage)


# --- shared pieces -------------------------------------------------------------------------
def test_batched_experts_equal_per_expert_mlps():
    torch.manual_seed(1)
    experts = BatchedExperts(3, 5, 7)
    with torch.no_grad():
        experts.b1.normal_()
        experts.b2.normal_()
    x = torch.randn(3, 4, 5)
    ref = torch.stack([torch.stack([expert_ref(experts, e, v) for v in x[e]]) for e in range(3)])
    assert rel_err(experts(x).detach(), ref) < TOL


@pytest.mark.parametrize(
    "tokens,experts,factor,expected",
    [(196, 32, 1.0, 7), (196, 32, 2.0, 13), (16, 4, 1.0, 4), (16, 4, 0.5, 2), (8, 64, 1.0, 1),
     (8, 2, 100.0, 8)],
)
def test_compute_capacity(tokens, experts, factor, expected):
    assert compute_capacity(tokens, experts, factor) == expected


# --- Soft MoE's fixed-routing ablations (paper Table 2) ------------------------------------
def ablation_ref(layer: SoftMoE, x):
    """Loops over slots and tokens; learned weights from the equations, fixed ones by hand."""
    batch, m, d = x.shape
    n, p = layer.num_slots, layer.slots_per_expert
    phi = layer.phi.detach().reshape(d, n) if layer.phi is not None else None
    y = torch.zeros_like(x)
    for b in range(batch):
        xs = x[b]
        if phi is not None:
            xn = torch.stack([v / (v.norm() ** 2 + 1e-6).sqrt() for v in xs])
            phin = torch.stack([phi[:, j] / (phi[:, j].norm() ** 2 + 1e-6).sqrt()
                                for j in range(n)], 1)
            logits = [[float(xn[i] @ phin[:, j]) * layer.scale.item() for j in range(n)]
                      for i in range(m)]
        slot_out = []
        for j in range(n):
            if layer.dispatch_kind == "identity":
                slot_in = xs[j]
            elif layer.dispatch_kind == "uniform":
                slot_in = sum(xs[i] for i in range(m)) / m
            else:
                weights = softmax_list([logits[i][j] for i in range(m)])
                slot_in = sum(weights[i] * xs[i] for i in range(m))
            slot_out.append(expert_ref(layer.experts, j // p, slot_in))
        for i in range(m):
            if layer.combine_kind == "identity":
                y[b, i] = slot_out[i]
            elif layer.combine_kind == "uniform":
                y[b, i] = sum(slot_out) / n
            else:
                weights = softmax_list(logits[i])
                y[b, i] = sum(weights[j] * slot_out[j] for j in range(n))
    return y


@pytest.mark.parametrize("dispatch,combine", [
    ("soft", "uniform"), ("uniform", "soft"), ("uniform", "uniform"), ("identity", "identity"),
    ("soft", "soft"),
])
def test_soft_moe_ablations_match_reference(dispatch, combine):
    torch.manual_seed(3)
    layer = SoftMoE(8, 3, 2, 12, dispatch=dispatch, combine=combine)  # 6 slots
    x = torch.randn(2, 6, 8)
    assert rel_err(layer(x).detach(), ablation_ref(layer, x)) < TOL


def test_identity_routing_needs_as_many_tokens_as_slots():
    layer = SoftMoE(8, 4, 1, 12, dispatch="identity", combine="identity")
    with pytest.raises(ConfigError, match="as many tokens as slots: 5 tokens, 4 experts x 1"):
        layer(torch.randn(1, 5, 8))
    with pytest.raises(ConfigError, match="dispatch must be one of"):
        SoftMoE(8, 4, 1, 12, dispatch="random")
