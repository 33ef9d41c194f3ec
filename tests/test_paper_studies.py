"""The paper's studies (studies/paper/*.yaml) and the cost estimate of ``run --dry-run``.

Every study loads in both profiles (laptop the default), keeps the structure of the paper's
experiment it reproduces, and its dry run works without the dataset. The closed-form cost
matches the paper's published eval GFLOP/img and training exaFLOPs (the paper's Tables 1, 8).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.cost.estimate import (
    KNOWN_CLASSES,
    gpu_hours,
    head_classes,
    run_cost,
    study_costs,
    totals,
)
from harness.errors import HarnessError
from harness.nn.moe.routing import compute_capacity
from harness.spec.study import EstimateConfig, load

PAPER = Path(__file__).parents[1] / "studies" / "paper"
STUDIES = ("pareto", "experts_slots", "slots_per_expert", "placement", "ablations", "inference")
PROFILES = ("laptop", "cluster")
JFT_CLASSES = 29_593  # the head of the paper's models (vmoe's pretrain_jft4b.py)

#: The paper's Table 1 / 8: eval GFLOP/img (2 FLOPs per multiply-add) and training steps.
PAPER_ROWS = {
    "vit-s/16": (9.2, 4_000_000),
    "vit-s/16:soft:e128:s1": (8.6, 4_000_000),
    "vit-s/14:soft:e256:s1": (13.2, 4_000_000),
    "vit-b/16": (35.1, 4_000_000),
    "vit-b/16:soft:e128:s1": (32.0, 4_000_000),
    "vit-l/16": (122.9, 4_000_000),
    "vit-l/16:soft:e128:s1": (111.1, 4_000_000),
    "vit-h/14": (334.2, 2_000_000),
    "vit-h/14:soft:e128:s1": (284.6, 2_000_000),
    "vit-h/14:soft:e256:s1": (342.4, 2_000_000),
}
PAPER_BATCH = 4096


def study(name: str, profile: str | None = None, *overrides: str):
    return load(PAPER / f"{name}.yaml", list(overrides), profile)


def test_the_six_studies_exist():
    assert sorted(p.stem for p in PAPER.glob("*.yaml")) == sorted(STUDIES)


@pytest.mark.parametrize("name", STUDIES)
def test_both_profiles_load_and_laptop_is_the_default(name):
    default = study(name)
    assert default.profile == "laptop"
    for profile in PROFILES:
        s = study(name, profile)
        assert s.profile == profile and s.expand()
    with pytest.raises(HarnessError, match="profile 'gpu' not found; allowed: laptop, cluster"):
        study(name, "gpu")


@pytest.mark.parametrize("name", STUDIES)
def test_laptop_profile_is_small_and_local(name):
    s = study(name, "laptop")
    specs = s.expand()
    assert s.data.name == "synthetic" and s.data.image_size == 16
    assert s.executor.name == "local" and s.executor.max_parallel == 2
    assert s.train.threads == 1  # two runs share the two cores
    assert all(150 <= spec.train.steps <= 300 for spec in specs)
    # 15 minutes on 2 cores: ~25-55 s per 300-step run of a 4-block model, two at a time
    block_runs = sum(spec.model_config_().shape.depth / 4 for spec in specs)
    assert block_runs <= 30, (name, len(specs), block_runs)


@pytest.mark.parametrize("name", STUDIES)
def test_cluster_profile_is_the_papers_setup(name):
    s = study(name, "cluster")
    t = s.train
    assert s.data.name == "prepared" and s.data.image_size == 224 and s.data.augment != "none"
    assert s.data.path  # a placeholder the user replaces with --set data.path=...
    assert (t.lr, t.schedule, t.warmup_steps, t.grad_clip) == (1e-3, "rsqrt", 10_000, 1.0)
    assert t.weight_decay > 0 and t.precision == "bf16" and t.batch_size == PAPER_BATCH
    assert s.executor.name == "slurm"
    assert s.executor.slurm.gpus_per_run == t.gpus >= 1
    for spec in s.expand():
        assert spec.model_config_().name in {"vit-s/16", "vit-s/14", "vit-b/16", "vit-l/16",
                                             "vit-h/14"}


def _slots_per_token(cfg) -> float | None:
    if cfg.router == "soft":
        return cfg.num_experts * cfg.slots_per_expert / cfg.num_tokens
    if cfg.router == "tokens_choice":
        assert cfg.capacity_factor == 1.0
        return float(cfg.k)
    if cfg.router == "experts_choice":
        return cfg.capacity_factor
    return None


def test_pareto_routers_and_sizes():
    for profile in PROFILES:
        cfgs = [s.model_config_() for s in study("pareto", profile).expand()]
        kinds = {(c.router, c.k, c.capacity_factor, c.slots_per_expert) for c in cfgs}
        assert kinds == {("dense", None, None, None), ("tokens_choice", 1, 1.0, None),
                         ("tokens_choice", 2, 1.0, None), ("experts_choice", None, 0.5, None),
                         ("experts_choice", None, 1.0, None),
                         ("experts_choice", None, 2.0, None), ("soft", None, None, 1)}
        assert len({c.name for c in cfgs}) >= 3  # several backbone sizes
        assert len(cfgs) == 7 * len({c.name for c in cfgs})


@pytest.mark.parametrize("profile", PROFILES)
def test_experts_slots_is_a_full_grid_for_each_router(profile):
    cfgs = [s.model_config_() for s in study("experts_slots", profile).expand()]
    cells: dict[str, set] = {}
    for c in cfgs:
        if c.router != "dense":
            cells.setdefault(c.router, set()).add((c.num_experts, _slots_per_token(c)))
    assert set(cells) == {"soft", "tokens_choice", "experts_choice"}
    experts = sorted({e for e, _ in cells["tokens_choice"]})
    sigmas = sorted({s for _, s in cells["tokens_choice"]})
    assert len(experts) >= 3 and len(sigmas) >= 2
    full = {(e, s) for e in experts for s in sigmas}
    assert cells["tokens_choice"] == full
    # Experts Choice leaves out only cells whose buffers equal a cell it runs (the same model)
    m = cfgs[0].num_tokens
    (rule,) = {c.capacity_rounding for c in cfgs if c.router == "experts_choice"}
    for e, s in full - cells["experts_choice"]:
        assert any(compute_capacity(m, e, s, rule) == compute_capacity(m, e2, s2, rule)
                   for e2, s2 in cells["experts_choice"] if e2 == e), (e, s)
    assert cells["soft"] <= full  # Soft MoE: the cells where p = sigma * m / n >= 1
    for e, s in full:
        assert ((e, s) in cells["soft"]) == (s * cfgs[0].num_tokens / e >= 1)
    # Soft MoE at one fixed slots-per-token covers at least three expert counts
    assert max(sum(1 for _, s in cells["soft"] if s == sig) for sig in sigmas) >= 3


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("name", STUDIES)
def test_no_two_runs_are_the_same_model(name, profile):
    """Experts Choice models differ only by their buffers: capacity factors that round to
    the same capacity (at least one token per expert) would train the same model twice."""
    seen: dict[tuple, str] = {}
    for spec in study(name, profile).expand():
        cfg = spec.model_config_()
        if cfg.router != "experts_choice":
            continue
        capacity = cfg.expert_capacity  # by the study's capacity rule
        key = (cfg.replace(capacity_factor=1.0), capacity, spec.seed, spec.train)
        assert key not in seen, (cfg.spec, seen.get(key))
        seen[key] = cfg.spec


@pytest.mark.parametrize("profile", PROFILES)
def test_slots_per_expert_sweep(profile):
    cfgs = [s.model_config_() for s in study("slots_per_expert", profile).expand()]
    soft = [c for c in cfgs if c.router == "soft"]
    assert len({c.num_experts for c in soft}) == 1
    slots = sorted({c.slots_per_expert for c in soft})
    assert slots == ([1, 2, 4, 8] if profile == "laptop" else [1, 2, 4, 8, 16, 32])
    assert any(c.router == "dense" for c in cfgs)


@pytest.mark.parametrize("profile", PROFILES)
def test_placement_is_the_papers_table(profile):
    cfgs = [s.model_config_() for s in study("placement", profile).expand()]
    moe = {c.moe_blocks: c.num_experts for c in cfgs if c.router == "soft"}
    assert all(c.shape.depth == 12 for c in cfgs)
    total = 512 if profile == "cluster" else 64
    assert moe == {(11,): total, (10,): total, (10, 11): total // 2, (5, 11): total // 2,
                   (8, 9, 10, 11): total // 4, (2, 5, 8, 11): total // 4,
                   tuple(range(4, 12)): total // 8, (1, 2, 3, 4, 8, 9, 10, 11): total // 8}
    assert all(c.slots_per_expert == 1 for c in cfgs if c.router == "soft")


@pytest.mark.parametrize("profile", PROFILES)
def test_ablations_have_identity_shaped_soft_moes(profile):
    cfgs = [s.model_config_() for s in study("ablations", profile).expand()]
    routers = {c.router for c in cfgs}
    assert routers == {"dense", "soft", "soft_uniform", "uniform_soft", "uniform", "identity"}
    for c in cfgs:
        if c.router != "dense":
            assert c.num_experts * c.slots_per_expert == c.num_tokens  # identity's condition
    if profile == "cluster":
        assert {c.moe_blocks for c in cfgs if c.router != "dense"} == {tuple(range(6, 12))}


def test_inference_cluster_is_the_papers_table():
    specs = study("inference", "cluster").expand()
    got = {s.model_config_().spec: s.train.steps for s in specs}
    assert got == {spec: steps for spec, (_, steps) in PAPER_ROWS.items()}


# --- cost before submitting ---------------------------------------------------------------------
def test_paper_costs_match_the_papers_table():
    """Eval GFLOP/img within 2% of every row of the paper's table, and its training exaFLOPs
    (3 x forward multiply-adds x images: 4M steps x batch 4096, H/14 2M) within 2%."""
    s = study("inference", "cluster", f"data.num_classes={JFT_CLASSES}")
    costs = {c.spec: c for c in study_costs(s)}
    assert set(costs) == set(PAPER_ROWS)
    for spec, (gflops, steps) in PAPER_ROWS.items():
        c = costs[spec]
        assert c.images == steps * PAPER_BATCH
        assert c.gflops_per_image == pytest.approx(gflops, rel=0.02), spec
        paper_ef = 3 * (gflops / 2) * 1e9 * steps * PAPER_BATCH / 1e18
        assert c.train_exaflops_paper == pytest.approx(paper_ef, rel=0.02), spec
        assert c.train_exaflops == pytest.approx(2 * c.train_exaflops_paper)


def test_training_exaflops_of_the_three_published_examples():
    """ViT S/16 (227 EF as printed), ViT B/16 and Soft MoE S/16 128E, in the paper's
    convention, given the paper's steps, batch and JFT head."""
    s = study("inference", "cluster", f"data.num_classes={JFT_CLASSES}")
    costs = {c.spec: c.train_exaflops_paper for c in study_costs(s)}
    assert costs["vit-s/16"] == pytest.approx(227, rel=0.02)
    assert costs["vit-b/16"] == pytest.approx(3 * 17.55e9 * 4e6 * 4096 / 1e18, rel=0.02)
    assert costs["vit-s/16:soft:e128:s1"] == pytest.approx(3 * 4.3e9 * 4e6 * 4096 / 1e18,
                                                           rel=0.02)


def test_estimate_is_closed_form_fast_and_never_builds_or_loads(monkeypatch):
    import harness.data
    import harness.nn.vit

    def refuse(*args, **kwargs):
        raise AssertionError("the estimate must not build a model or open the data")

    monkeypatch.setattr(harness.nn.vit, "build", refuse)
    monkeypatch.setattr(harness.data, "load_data", refuse)
    s = study("inference", "cluster")
    h14 = next(spec for spec in s.expand() if spec.model_config_().spec.endswith("e256:s1")
               and spec.model.startswith("vit-h"))
    start = time.perf_counter()
    cost = run_cost(h14, s.estimate)
    assert time.perf_counter() - start < 0.5
    assert cost.gflops_per_image > 300


def test_gpu_hours_from_peak_and_utilization():
    settings = EstimateConfig(peak_tflops=1000, utilization=0.5)
    assert gpu_hours(1.8e18, settings) == pytest.approx(1.0)  # 1.8e18 / (5e14 FLOP/s) = 1 h
    s = study("pareto", "cluster")
    costs = study_costs(s)
    t = totals(costs)
    assert t.runs == len(costs)
    assert t.gpu_hours == pytest.approx(sum(c.gpu_hours for c in costs))
    for c in costs:
        flops = c.train_exaflops * 1e18
        assert c.gpu_hours == pytest.approx(flops / (989e12 * 0.4) / 3600)
        assert c.wall_hours == pytest.approx(c.gpu_hours / 8)


def test_estimate_section_defaults_and_errors(tmp_path):
    assert EstimateConfig().peak_tflops == 989 and EstimateConfig().utilization == 0.4
    path = tmp_path / "s.yaml"
    path.write_text("name: s\ngrid: {model: [vit-s/16]}\nestimate: {utilization: 1.5}\n")
    with pytest.raises(HarnessError, match="estimate.utilization"):
        load(path)
    path.write_text("name: s\ngrid: {model: [vit-s/16]}\nestimate: {peak: 5}\n")
    with pytest.raises(HarnessError, match="unknown key 'peak'; allowed: peak_tflops"):
        load(path)


def test_head_classes_without_opening_the_data():
    from harness.data.datasets import SYNTHETIC_CLASSES

    assert KNOWN_CLASSES["synthetic"] == SYNTHETIC_CLASSES
    laptop = study("pareto", "laptop").expand()[0]
    assert head_classes(laptop) == (SYNTHETIC_CLASSES, False)
    folder = study("pareto", "cluster", "data.num_classes=null").expand()[0]
    assert head_classes(folder) == (1000, True)


@pytest.mark.slow
@pytest.mark.parametrize("profile", PROFILES)
def test_dry_run_prints_costs_without_the_data(profile, tmp_path):
    path = str(PAPER / "pareto.yaml")
    proc = subprocess.run(
        [sys.executable, "-m", "harness.cli", "run", path, "--profile", profile, "--dry-run",
         "--results", str(tmp_path), "--set", "data.path=/nonexistent/imagenet"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "220"},
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for text in ("GFLOP/img", "train EF ours", "train EF paper", "GPU-h est.", "total",
                 "21 runs", "ESTIMATE", "989 TFLOP/s", "40% utilisation"):
        assert text in out, text
    assert not (tmp_path / "paper-pareto" / "runs").exists()  # nothing ran
    if profile == "cluster":
        total = totals(study_costs(study("pareto", "cluster")))
        assert f"{total.gpu_hours:,.0f}" in out
        assert "8 GPUs per run" in out
        assert math.isclose(total.train_exaflops, 2 * total.train_exaflops_paper)


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("name", STUDIES)
def test_plan_table_of_every_study_and_profile(name, profile, tmp_path):
    from rich.console import Console

    from harness.results.store import Store
    from harness.views.runs import plan_table
    from runners import select

    s = study(name, profile, "data.path=/nonexistent")
    console = Console(width=250, record=True)
    with console.capture() as out:
        console.print(plan_table(s, select(s, Store(tmp_path, s.name))))
    text = out.get()
    runs = len(s.expand())
    assert f"{runs} runs" in text and "total" in text and "ESTIMATE" in text
    t = totals(study_costs(s))
    shown = f"{t.gpu_hours:,.0f}" if t.gpu_hours >= 1000 else f"{t.gpu_hours:.4g}"
    assert shown in text if t.gpu_hours >= 1e-3 else "e-" in text
