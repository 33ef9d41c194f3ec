"""The MoE-layer contract (``harness.nn.moe.base``): one experts seam, router parameters, expert
rows, aux loss, metrics kept as tensors and switched by one context manager."""

import pytest
import torch
from helpers import make_mlp
from torch import nn

from harness.data import load_data
from harness.data.datasets import InMemoryImages
from harness.data.pipeline import Loader
from harness.nn.moe import MetricMeans, MoELayer, SoftMoE, moe_layers, tracking_metrics
from harness.nn.vit import build
from harness.runtime.train import evaluate, features, fit
from harness.spec import routers
from harness.spec.config import DataConfig, TrainConfig
from harness.spec.study import RunSpec

MOE_ROUTERS = [r for r in routers.names() if routers.get(r).is_moe]
DIM, HIDDEN, EXPERTS, TOKENS = 12, 20, 8, 16  # 8 experts x 2 slots = 16 tokens (identity)
FIELDS = dict(num_experts=EXPERTS, slots_per_expert=2, k=2, capacity_factor=1.5)


def layer_for(router: str, **kw) -> MoELayer:
    torch.manual_seed(0)
    return make_mlp(router, DIM, HIDDEN, **FIELDS, **kw)


class Recorder(nn.Module):
    """Stands in for a layer's experts (as expert parallelism would): records each call."""

    def __init__(self, experts: nn.Module):
        super().__init__()
        self.inner, self.shapes = experts, []

    def forward(self, buffer: torch.Tensor) -> torch.Tensor:
        self.shapes.append(tuple(buffer.shape))
        return self.inner(buffer)


@pytest.mark.parametrize("router", MOE_ROUTERS)
@pytest.mark.parametrize(("grad", "group_size"), [(False, None), (True, None), (True, 24)])
def test_experts_are_one_call_on_the_whole_buffer_and_can_be_replaced(router, grad,
                                                                       group_size):
    layer = layer_for(router, group_size=group_size).eval()
    x = torch.randn(3, TOKENS, DIM, requires_grad=grad)
    with torch.set_grad_enabled(grad):
        expected = layer(x)
        layer.experts = Recorder(layer.experts)
        out = layer(x)
    entry = routers.get(router)  # the buffer is what the registry's closed form says
    rows = 3 * entry.expert_rows(entry.settings(group_size=group_size, **FIELDS), TOKENS)
    assert layer.experts.shapes == [(EXPERTS, rows, DIM)]
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    if grad:  # gradients reach the replaced module's weights and the input
        out.square().sum().backward()
        assert layer.experts.inner.w1.grad.abs().sum() > 0 and x.grad.abs().sum() > 0


@pytest.mark.parametrize("router", MOE_ROUTERS)
def test_router_and_expert_parameters_are_all_the_parameters(router):
    layer = layer_for(router)
    router_params = layer.router_parameters()
    expert_names = {f"experts.{n}" for n, _ in layer.experts.named_parameters()}
    assert set(router_params) | expert_names == {n for n, _ in layer.named_parameters()}
    assert not set(router_params) & expert_names
    # as many as the registry counts (none for fixed routing on both sides)
    entry = routers.get(router)
    assert sum(p.numel() for p in router_params.values()) == entry.router_params(
        entry.settings(**FIELDS), DIM)
    assert layer.num_experts == EXPERTS == layer.experts.num_experts


@pytest.mark.parametrize("router", MOE_ROUTERS)
def test_aux_loss_and_metrics_after_a_forward(router):
    layer = layer_for(router).train()
    x = torch.randn(2, TOKENS, DIM, requires_grad=True)
    layer(x)
    assert isinstance(layer, MoELayer) and layer.aux_loss.shape == ()
    assert layer.aux_loss.requires_grad == (router == "tokens_choice")
    if router != "tokens_choice":
        assert layer.aux_loss.item() == 0.0
    assert all(isinstance(v, torch.Tensor) and v.shape == () and not v.requires_grad
               for v in layer.metric_tensors.values())
    assert layer.metrics == {k: v.item() for k, v in layer.metric_tensors.items()}
    no_logits = router in ("uniform", "identity")
    assert ("dropped_fraction" in layer.metrics) != no_logits


@pytest.fixture()
def no_host_copies(monkeypatch):
    """Make every tensor -> Python copy (a device sync on a GPU) raise."""

    def refuse(*_, **__):
        raise AssertionError("a tensor was copied to the host")

    for name in ("item", "tolist", "__float__", "__bool__", "numpy"):
        monkeypatch.setattr(torch.Tensor, name, refuse)


@pytest.mark.parametrize("router", MOE_ROUTERS)
def test_forward_with_metrics_copies_nothing_to_the_host(router, no_host_copies):
    layer = layer_for(router).train()
    assert layer.track_metrics
    layer(torch.randn(2, TOKENS, DIM, requires_grad=True))
    layer.eval()
    with torch.no_grad():
        layer(torch.randn(2, TOKENS, DIM))


def test_tracking_metrics_switches_every_layer_and_restores_each():
    model = build("vit-w32d4h2m64/8@16:tokens_choice:e4", num_classes=3, moe_layers="last:3")
    layers = model.moe_layers()
    assert moe_layers(model) == layers and len(layers) == 3
    layers[1].track_metrics = False
    x = torch.randn(2, 3, 16, 16)
    with tracking_metrics(model, False):
        assert not any(layer.track_metrics for layer in layers)
        model(x)
        assert all(layer.metric_tensors == {} for layer in layers)  # nothing computed
    assert [layer.track_metrics for layer in layers] == [True, False, True]
    with pytest.raises(RuntimeError, match="boom"), tracking_metrics(model, True):
        assert all(layer.track_metrics for layer in layers)
        raise RuntimeError("boom")
    assert [layer.track_metrics for layer in layers] == [True, False, True]


def test_metric_means_average_over_layers_then_weighted_over_forwards():
    a, b = layer_for("tokens_choice"), layer_for("tokens_choice")
    holder = nn.Sequential(a, b)
    means = MetricMeans(holder)
    for weight, (va, vb) in ((1, (0.1, 0.3)), (3, (0.5, 0.9))):
        a.metric_tensors = {"m": torch.tensor(va), "only_a": torch.tensor(va)}
        b.metric_tensors = {"m": torch.tensor(vb)}
        means.add(weight)
    a.metric_tensors = {"m": torch.tensor(99.0)}  # later forwards do not change what was kept
    out = means.result()
    assert out["m"] == pytest.approx((1 * 0.2 + 3 * 0.7) / 4)
    assert out["only_a"] == pytest.approx((1 * 0.1 + 3 * 0.5) / 4)
    assert MetricMeans(nn.Linear(2, 2)).add().result() == {}


def count_host_copies(monkeypatch) -> list[str]:
    """Record host copies of floating-point tensors (the loader's index lists are not)."""
    calls = []
    for name in ("item", "tolist", "__float__", "__bool__", "__int__"):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _name=name, _original=original, **kw):
            if self.is_floating_point():
                calls.append(_name)
            return _original(self, *args, **kw)

        monkeypatch.setattr(torch.Tensor, name, counted)
    return calls


@pytest.mark.parametrize("batch_size", [20, 4])
def test_evaluation_fetches_scores_and_metrics_once(batch_size, monkeypatch):
    torch.manual_seed(0)
    model = build("vit-w32d2h2m64/4@16:experts_choice:e4:c0.5", num_classes=3)
    data = InMemoryImages(torch.randn(20, 3, 16, 16), torch.arange(20) % 3)
    calls = count_host_copies(monkeypatch)
    out = evaluate(model, data, batch_size=batch_size)
    assert calls == ["tolist", "tolist"]  # scores, then router metrics: 1 or 5 batches alike
    monkeypatch.undo()
    # the same numbers as batch-by-batch floats
    model.eval()
    coverage = 0.0
    for i in range(0, 20, batch_size):
        model(data.images[i:i + batch_size])
        coverage += model.moe_metrics()["token_coverage"] * batch_size / 20
    assert out["router_token_coverage"] == pytest.approx(coverage, rel=1e-12)


def test_features_leave_tracking_as_it_was():
    model = build("vit-w32d2h2m64/4@16:soft:e4", num_classes=3)
    data = InMemoryImages(torch.randn(6, 3, 16, 16), torch.arange(6) % 3)
    model.moe_layers()[0].metric_tensors = {}
    batches = Loader(data, "cpu")
    try:
        features(model, batches, torch.arange(6), batch_size=4, precision="fp32")
    finally:
        batches.close()
    assert all(layer.track_metrics for layer in model.moe_layers())
    assert model.moe_layers()[0].metric_tensors == {}  # the features forwards computed none


def test_training_computes_no_metrics_and_fit_leaves_tracking_on(tmp_path, monkeypatch):
    spec = RunSpec(study="t", model="vit-w32d2h2m64/4", router="soft", num_experts=4,
                   moe_layers="last:1", seed=0,
                   data=DataConfig(num_classes=4, train_size=64, test_size=32),
                   train=TrainConfig(steps=6, batch_size=8, warmup_steps=1, eval_every=3,
                                     checkpoint_every=0, eval_batch_size=16, fewshot_shots=0,
                                     threads=1))
    data = load_data(spec.data)
    model = build(spec.model_config_(data.num_classes))
    computed = []
    original = SoftMoE._metrics

    def spy(self, logits):
        computed.append(logits.shape[0])
        return original(self, logits)

    monkeypatch.setattr(SoftMoE, "_metrics", spy)
    out = fit(model, spec, data, workdir=tmp_path, device="cpu")
    # 6 training steps and 2 history evaluations compute none; the final evaluation (32
    # test images in batches of 16) computes them for each batch
    assert computed == [16, 16]
    assert "router_slot_entropy" in out
    assert all(layer.track_metrics for layer in model.moe_layers())


@pytest.mark.parametrize("router", ["soft", "tokens_choice", "experts_choice"])
def test_a_seed_draws_the_router_before_the_experts(router):
    # the order every kind has drawn its weights in: seeded runs keep their models
    torch.manual_seed(0)
    layer = make_mlp(router, DIM, HIDDEN, num_experts=4)
    torch.manual_seed(0)
    if router == "soft":
        first = torch.empty(DIM, 4, 1).normal_(std=DIM**-0.5)
        torch.testing.assert_close(layer.phi.detach(), first, rtol=0, atol=0)
    else:  # nn.Linear draws its own init first
        first = nn.init.normal_(nn.Linear(DIM, 4, bias=False).weight.detach(), std=DIM**-0.5)
        torch.testing.assert_close(layer.router.weight.detach(), first, rtol=0, atol=0)
    bound = (6.0 / (DIM + HIDDEN)) ** 0.5
    experts = torch.empty(4, DIM, HIDDEN).uniform_(-bound, bound)
    torch.testing.assert_close(layer.experts.w1.detach(), experts, rtol=0, atol=0)
