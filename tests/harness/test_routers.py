"""The router registry: lookups, the fields records derive from it, and a new router added as
one registry entry plus its layer class, without touching any other file. (Each layer's
buffers and router parameters against the closed forms: tests/harness/test_moe_layer.py.)"""

import json
import textwrap
from dataclasses import dataclass

import pytest
import torch
from typer.testing import CliRunner

from harness.cost.flops import analytic_flops
from harness.cost.params import closed_form_params
from harness.errors import ConfigError
from harness.nn.moe import BatchedExperts, MoELayer
from harness.nn.vit import build
from harness.runtime.counting import fvcore_flops, torch_flops
from harness.runtime.measure import parameter_counts
from harness.spec import routers
from harness.spec.model import DERIVED_FIELDS, derived_fields, parse_model_spec


# --- a throwaway router: top-1 hash routing (token t goes to expert t mod E) ------------------
class HashMoE(MoELayer):
    """Each expert takes the tokens t with t mod E = e, in order: a fixed routing without
    parameters, no dropped tokens (tokens per image divisible by E)."""

    def __init__(self, dim: int, hidden_dim: int, num_experts: int, gelu: str = "erf"):
        super().__init__(num_experts)
        self.experts = BatchedExperts(num_experts, dim, hidden_dim, gelu=gelu)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, m, d = x.shape
        e = self.num_experts
        buffer = x.reshape(b, m // e, e, d).permute(2, 0, 1, 3).reshape(e, b * m // e, d)
        out = self.experts(buffer)
        return out.reshape(e, b, m // e, d).permute(1, 2, 0, 3).reshape(b, m, d)


@dataclass(frozen=True)
class Hash(routers.Router):
    axes: tuple[str, ...] = ("num_experts",)
    family: str = "hash"

    def expert_rows(self, s, tokens):
        return tokens / s.num_experts


HASH = Hash("hash", "Hash routing", f"{__name__}:HashMoE")
SPEC = "vit-w32d2h4m64/4@16:hash:e4"  # 16 tokens per image, 4 per expert


@pytest.fixture
def hash_router():
    """The router registered for one test only."""
    routers.register(HASH)
    yield HASH
    del routers.ROUTERS[HASH.name]


def test_a_new_router_builds_counts_and_agrees_with_its_closed_forms(hash_router):
    cfg = parse_model_spec(SPEC, num_classes=10)
    assert (cfg.router, cfg.num_experts, cfg.slots_per_expert, cfg.k) == ("hash", 4, None, None)
    assert cfg.moe_blocks == (1,)  # the default placement: the last half of 2 blocks
    torch.manual_seed(0)
    model = build(cfg)
    assert isinstance(model.moe_layers()[0], HashMoE)
    assert parameter_counts(model, cfg) == closed_form_params(cfg)
    images = torch.randn(1, 3, 16, 16)
    analytic = analytic_flops(cfg)
    for counted in (fvcore_flops(model, images), torch_flops(model, images)):
        assert counted.by_kind == pytest.approx(analytic.by_kind, rel=1e-9)
    assert analytic.by_kind["experts"] == 2 * 16 * 2 * 32 * 64  # 16 rows, two matmuls
    assert analytic.by_kind["routing"] == 0
    fields = derived_fields({"model": "vit-w32d2h4m64/4", "image_size": 16, "router": "hash",
                             "num_experts": 4, "moe_layers": "last_half"})
    assert fields["router_family"] == "hash" and fields["expert_rows"] == 4
    assert fields["active_experts_per_token"] == fields["slots_per_token"] == 1


@pytest.mark.slow
def test_a_new_router_appears_in_inspect_the_dry_run_and_a_report(hash_router, tmp_path):
    from harness.cli import app

    runner = CliRunner()
    out = runner.invoke(app, ["inspect", SPEC, "--counter", "fvcore"])
    assert out.exit_code == 0, out.output
    assert "vit-w32d2h4m64/4@16:hash:e4" in out.output
    study = tmp_path / "hashed.yaml"
    study.write_text(textwrap.dedent("""
        name: hashed
        data: {name: synthetic, image_size: 16, num_classes: 10, train_size: 256,
               test_size: 128}
        train: {steps: 4, batch_size: 32, lr: 0.003, warmup_steps: 1, eval_every: 0,
                checkpoint_every: 0, fewshot_shots: 0, eval_batch_size: 128}
        measure: {time: false, memory: false}
        executor: {name: debug}
        grid:
          model: [vit-w32d2h4m64/4]
          router: [dense, hash]
          num_experts: [4]
    """))
    results = tmp_path / "results"
    dry = runner.invoke(app, ["run", str(study), "--dry-run", "--results", str(results)])
    assert dry.exit_code == 0, dry.output
    assert "hash" in dry.output and "2 runs" in dry.output.replace("\n", " ")
    done = runner.invoke(app, ["run", str(study), "--results", str(results), "--quiet"])
    assert done.exit_code == 0, done.output
    records = [json.loads(p.read_text()) for p in (results / "hashed" / "runs").glob("*.json")]
    hashed = next(r for r in records if r["router"] == "hash")
    assert hashed["status"] == "ok", hashed.get("error")
    cfg = parse_model_spec(SPEC, num_classes=10)
    assert hashed["gflops_per_image"] == pytest.approx(analytic_flops(cfg).gflops, rel=1e-9)
    assert hashed["flops_counter"] == "fvcore"
    assert (hashed["tokens"], hashed["moe_blocks"], hashed["expert_rows"]) == (16, "1", 4)
    page = runner.invoke(app, ["report", str(study), "--results", str(results)])
    assert page.exit_code == 0, page.output
    html = (results / "hashed" / "report.html").read_text()
    assert "Hash routing" in html


def test_registering_and_looking_up_routers(hash_router):
    assert list(routers.ROUTERS)[:4] == ["dense", "soft", "tokens_choice", "experts_choice"]
    assert routers.names("sparse") == ("tokens_choice", "experts_choice")
    with pytest.raises(ConfigError, match="unknown router 'switch'; allowed: dense, soft"):
        routers.get("switch")
    with pytest.raises(ConfigError, match="already registered"):
        routers.register(routers.get("soft"))
    assert routers.get("hash") is hash_router and routers.names("hash") == ("hash",)
    with pytest.raises(ConfigError, match="unknown field 'slots'"):
        routers.get("soft").settings(slots=2)


def test_records_carry_the_derived_fields():
    from harness.spec.study import Study

    study = Study.model_validate({
        "name": "d", "data": {"name": "synthetic", "image_size": 16},
        "grid": {"model": ["vit-w32d4h4m64/4"], "router": ["dense", "soft", "experts_choice"],
                 "num_experts": [8], "moe_layers": ["every:2"]},
    })
    flat = {spec.router: spec.flat() for spec in study.expand()}
    assert set(DERIVED_FIELDS) <= set(flat["soft"])
    assert flat["dense"]["n_moe_blocks"] == 0 and flat["dense"]["slots_per_token"] is None
    soft, ec = flat["soft"], flat["experts_choice"]
    assert (soft["tokens"], soft["depth"], soft["moe_blocks"]) == (16, 4, "1,3")
    assert soft["slots_per_token"] == 8 / 16 and soft["expert_rows"] == 1
    assert ec["expert_capacity"] == 2 and ec["slots_per_token"] == 1.0
