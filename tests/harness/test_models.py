"""ViT family: sizes, spec strings, placement, parameter formulas, gradients and training."""

import pytest
import torch

from harness.errors import ConfigError
from harness.nn.vit import build
from harness.spec import routers
from harness.spec.model import (
    SIZES,
    ModelConfig,
    derived_fields,
    parse_model_spec,
    resolve_placement,
)
from harness.spec.routers import ROUTERS

TINY = "vit-w32d4h4m64/4@16"  # 16 tokens


def test_paper_sizes():
    shapes = {name: (s.width, s.depth, s.heads, s.mlp_dim) for name, s in SIZES.items()}
    assert shapes == {
        "ti": (192, 12, 3, 768), "s": (384, 12, 6, 1536), "b": (768, 12, 12, 3072),
        "l": (1024, 24, 16, 4096), "h": (1280, 32, 16, 5120),
    }


@pytest.mark.parametrize("spec", [
    "vit-s/16", "vit-s/16:soft:e128:s1", "vit-b/16:tokens_choice:e32:k2:c1.25",
    "vit-l/14:experts_choice:e64:c2:last4", "vit-w64d4h4m256/4@16:soft:e16:s2:b1.3",
    "vit-h/14@448:soft:e256:s1:every2",
])
def test_spec_round_trip(spec):
    cfg = parse_model_spec(spec)
    assert parse_model_spec(cfg.spec) == cfg


def test_spec_fields():
    cfg = parse_model_spec("vit-s/16:soft:e128:s1")
    assert (cfg.shape.width, cfg.patch_size, cfg.num_tokens) == (384, 16, 196)
    assert (cfg.router, cfg.num_experts, cfg.slots_per_expert, cfg.k) == ("soft", 128, 1, None)
    assert cfg.moe_blocks == tuple(range(6, 12))


@pytest.mark.parametrize("router", routers.names())
def test_a_config_holds_its_router_choice_resolved_once(router):
    fields = dict(num_experts=8, slots_per_expert=2, k=2, capacity_factor=1.5)
    backbone = dict(size="w32d4h4m64", patch_size=4, image_size=16, moe_layers="every:2")
    cfg = ModelConfig(**backbone, router=router, **fields)
    assert cfg.routing == routers.resolve(router, **fields)  # one value: entry and fields
    assert cfg.routing.entry is routers.get(router)
    assert cfg.routing.columns() == {"router": cfg.router, "group_size": cfg.group_size,
                                     **{f: getattr(cfg, f) for f in routers.FIELDS}}
    assert ModelConfig(**backbone, routing=cfg.routing) == cfg
    assert cfg.replace(num_classes=10).routing is cfg.routing  # kept, not resolved again
    assert cfg.replace(router="dense").routing == routers.resolve("dense")
    with pytest.raises(ConfigError, match="not both"):
        ModelConfig(routing=cfg.routing, num_experts=4)
    # the record of a run of it derives the same columns from its flat fields
    record = {"model": "vit-w32d4h4m64/4", "image_size": 16, "moe_layers": cfg.moe_layers,
              **cfg.routing.columns()}
    assert cfg.derived_fields() == derived_fields(record)


@pytest.mark.parametrize("bad,message", [
    ("vit-q/16", "unknown model size 'q'"),
    ("resnet50", "expected 'vit-SIZE/PATCH"),
    ("vit-s/16:soft:x3", "unknown part 'x3'"),
    ("vit-s/15", "multiple of patch_size"),
    ("vit-s/16:tokens_choice:e4:k5", "k must lie in 1..num_experts"),
    ("vit-s/16:soft:e8:last13", "needs 1 <= N <= depth 12"),
    ("vit-s/16:soft:e8:b3.12", "must lie in 0..11"),
])
def test_bad_specs_give_clear_errors(bad, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        parse_model_spec(bad)


@pytest.mark.parametrize("placement,depth,blocks", [
    ("last_half", 12, (6, 7, 8, 9, 10, 11)), ("last_half", 5, (3, 4)), ("last:2", 4, (2, 3)),
    ("every:2", 12, (1, 3, 5, 7, 9, 11)), ("every:4", 12, (3, 7, 11)), ([8, 9, 10, 11], 12,
    (8, 9, 10, 11)), ("2,5,8,11", 12, (2, 5, 8, 11)),
])
def test_placement(placement, depth, blocks):
    assert resolve_placement(placement, depth) == blocks


@pytest.mark.parametrize("placement", ["first:2", "last:0", "every:0", [12], "1,x"])
def test_bad_placement(placement):
    with pytest.raises(ConfigError, match="moe_layers"):
        resolve_placement(placement, 12)


def closed_form_params(cfg: ModelConfig) -> int:
    s = cfg.shape
    w, h, c = s.width, s.mlp_dim, cfg.num_classes
    mlp = 2 * w * h + h + w
    block = 2 * (2 * w) + (4 * w * w + 4 * w) + mlp
    total = cfg.in_chans * cfg.patch_size**2 * w + w + cfg.num_tokens * w  # patches, pos
    total += s.depth * block + 2 * w + w * c + c  # blocks, final norm, head
    if cfg.pool == "map":
        total += w + (w * w + w) + (2 * w * w + 2 * w) + (w * w + w) + 2 * w + mlp
    for _ in cfg.moe_blocks:
        e = cfg.num_experts
        router = w * e * cfg.slots_per_expert + 1 if cfg.router == "soft" else w * e
        total += (e - 1) * mlp + router
    return total


@pytest.mark.parametrize("size", ["ti", "s", "b"])
@pytest.mark.parametrize("experts", [8, 128])
@pytest.mark.parametrize("router", ["dense", "soft", "tokens_choice", "experts_choice"])
@pytest.mark.parametrize("pool", ["gap", "map"])
def test_parameter_count_matches_closed_form(size, experts, router, pool):
    cfg = ModelConfig(size=size, router=router, num_experts=experts, slots_per_expert=2,
                      pool=pool)
    with torch.device("meta"):
        model = build(cfg)
    assert sum(p.numel() for p in model.parameters()) == closed_form_params(cfg)


@pytest.mark.parametrize("router", ["dense", "soft", "tokens_choice", "experts_choice"])
def test_gradients_reach_every_parameter(router):
    torch.manual_seed(0)
    model = build(f"{TINY}:{router}:e4:s2:k2:c2", num_classes=5)
    torch.nn.init.normal_(model.head.weight, std=0.1)  # the zero-init head blocks gradients
    images = torch.randn(4, 3, 16, 16)
    loss = torch.nn.functional.cross_entropy(model(images), torch.arange(4) % 5)
    (loss + model.aux_loss()).backward()
    silent = [name for name, p in model.named_parameters()
              if p.grad is None or p.grad.abs().sum() == 0]
    assert silent == []


@pytest.mark.parametrize("router", ["dense", "soft", "tokens_choice", "experts_choice"])
@pytest.mark.parametrize("pool", ["gap", "map"])
def test_vit_trains_with_falling_loss(router, pool):
    torch.manual_seed(0)
    model = build(f"{TINY}:{router}:e4", num_classes=4, pool=pool)
    images, labels = torch.randn(16, 3, 16, 16), torch.arange(16) % 4
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        opt.zero_grad()
        (loss + 0.01 * model.aux_loss()).backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_every_router_builds_and_runs():
    images = torch.randn(2, 3, 16, 16)
    for router in ROUTERS:
        model = build(f"{TINY}:{router}:e16", num_classes=3)  # 16 slots = 16 tokens
        assert model(images).shape == (2, 3)
        assert model.attention_backend == "sdpa"
        assert model.aux_loss().shape == ()


def test_moe_metrics_are_averaged_over_layers():
    model = build(f"{TINY}:experts_choice:e4:c0.5", num_classes=3)
    model(torch.randn(2, 3, 16, 16))
    metrics = model.moe_metrics()
    assert 0 < metrics["token_coverage"] <= 0.5 + 1e-9
    assert metrics["dropped_fraction"] == pytest.approx(1 - metrics["token_coverage"])
