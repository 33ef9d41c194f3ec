"""The memory plan (harness/cost/memory.py): the closed form against built models and the harness's
measured CPU peak, the layouts' order, the dry run's table, and ``run`` refusing what does
not fit before anything is submitted."""

from __future__ import annotations

import itertools
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import free_ports

from harness.cli import run_cli
from harness.cost.memory import (
    LAYOUTS,
    LayoutError,
    Shapes,
    estimate,
    run_plan,
    study_plans,
    unfit,
)
from harness.spec.model import parse_model_spec
from harness.spec.study import load

PAPER = Path(__file__).parents[2] / "studies" / "paper"
STUDIES = ("pareto", "experts_slots", "slots_per_expert", "placement", "ablations", "inference")
KINDS = ("soft", "tokens_choice", "experts_choice")
TINY = "vit-w64d4h4m256/4@32"  # 64 tokens, 4 blocks, MoE in the last 2


def cfg_of(spec: str):
    return parse_model_spec(spec, num_classes=10)


# --- the closed form ------------------------------------------------------------------------
@pytest.mark.parametrize("router", ("dense", *KINDS, "identity"))
def test_parameter_split_matches_the_built_model(router):
    from harness.nn.vit import build

    spec = TINY if router == "dense" else f"{TINY}:{router}:e16"
    cfg = cfg_of(spec)
    model = build(cfg)
    sh = Shapes.of(cfg)
    experts = sum(p.numel() for layer in model.moe_layers() for p in layer.experts.parameters())
    assert sh.all_expert_params == experts
    assert sh.params == sum(p.numel() for p in model.parameters())


def test_the_worked_example_of_soft_moe_l16():
    """L/16 with 128 experts (13.1B parameters): 16 bytes per parameter in DDP is ~210 GB per
    GPU; with the experts over 8 GPUs (1.6B + 0.2B held) ~29 GB of states."""
    cfg = cfg_of("vit-l/16:soft:e128:s1")
    sh = Shapes.of(cfg)
    assert sh.params == pytest.approx(13.1e9, rel=0.02)
    ddp = estimate(cfg, "ddp", ranks=8, batch_size=4096, micro_batch=8)
    assert ddp.grads_gb + ddp.optimizer_gb + 4 * sh.params / 1e9 == pytest.approx(210, rel=0.02)
    assert ddp.fits is None  # no limit given: nothing to compare with
    sharded = estimate(cfg, "experts", ranks=8, batch_size=4096, micro_batch=8, limit_gb=80)
    states = sharded.grads_gb + 3 * sharded.grads_gb  # weights, grads, moments: 4 + 4 + 8
    assert states == pytest.approx(29, rel=0.03)
    assert sharded.fits and sharded.peak_gb < 80 < ddp.peak_gb


@pytest.mark.parametrize("router", KINDS)
def test_sharded_layouts_hold_less_than_replicated(router):
    cfg = cfg_of(f"vit-b/16:{router}:e128")
    peak = {layout: estimate(cfg, layout, ranks=8, batch_size=512, micro_batch=16).peak_gb
            for layout in LAYOUTS}
    assert peak["experts"] < peak["ddp"] and peak["fsdp"] < peak["ddp"]
    assert peak["experts+fsdp"] < peak["experts"]
    # fewer images per pass, and checkpointed blocks, hold fewer activations
    full = estimate(cfg, "experts", ranks=8, batch_size=512)
    micro = estimate(cfg, "experts", ranks=8, batch_size=512, micro_batch=16)
    ckpt = estimate(cfg, "experts", ranks=8, batch_size=512, checkpointing=True)
    assert micro.accumulation == 4 and micro.activations_gb < full.activations_gb / 3
    assert ckpt.activations_gb < full.activations_gb / 3


def test_layouts_that_cannot_hold_the_run_are_one_clear_error():
    with pytest.raises(LayoutError, match="shards the experts of MoE layers, and this model "
                                          "has none; use ddp or fsdp"):
        estimate(cfg_of("vit-s/16"), "experts", ranks=8, batch_size=64)
    with pytest.raises(LayoutError, match="12 experts per MoE layer do not split evenly over "
                                          "8 ranks"):
        estimate(cfg_of("vit-s/16:soft:e12"), "experts+fsdp", ranks=8, batch_size=64)


def test_closed_form_is_torch_free_and_instant():
    code = ("import sys, time; from harness.cost.memory import estimate; "
            "from harness.spec.model import parse_model_spec as p; t = time.perf_counter(); "
            "c = p('vit-h/14:soft:e256:s1'); "
            "[estimate(c, l, ranks=16, batch_size=4096, micro_batch=32) "
            " for l in ('ddp', 'experts', 'fsdp', 'experts+fsdp')]; "
            "print(time.perf_counter() - t, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert float(out[0]) < 0.5 and out[1] == "False"


# --- against the harness's measured CPU peak -----------------------------------------------------
def measured_gb(spec: str, batch: int, *, checkpointing: bool = False,
                micro_batches: int = 1) -> float:
    """Peak of one fp32 training step on this CPU, by the harness's protocol (live tensors +
    the peak of PyTorch's CPU allocator events; ``harness.runtime.timing.peak_memory_mb``).
    ``checkpointing`` recomputes each block in the backward (torch.utils.checkpoint);
    ``micro_batches`` > 1 accumulates the gradients of that many passes before the step."""
    import torch
    from torch.utils.checkpoint import checkpoint

    from harness.nn.vit import build
    from harness.runtime.timing import peak_memory_mb, random_batch

    cfg = cfg_of(spec)
    torch.manual_seed(0)
    model = build(cfg)
    if checkpointing:
        for block in model.blocks:
            block.forward = lambda x, f=block.forward: checkpoint(f, x, use_reentrant=False)
    images, labels = random_batch(cfg, batch, torch.device("cpu"))
    if micro_batches == 1:
        return peak_memory_mb(model, images, labels)["peak_memory_mb"] * 2**20 / 1e9
    return accumulated_peak(model, images, labels, micro_batches) / 1e9


def accumulated_peak(model, images, labels, passes: int) -> int:
    """The same measurement around a step that accumulates ``passes`` micro-batches."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    optimizer = torch.optim.AdamW(model.parameters(), lr=0.0, weight_decay=0.0)

    def step():
        optimizer.zero_grad(set_to_none=True)
        for x, y in zip(images.chunk(passes), labels.chunk(passes), strict=True):
            torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()

    step()  # the optimizer's moments exist from here on
    optimizer.zero_grad(set_to_none=True)
    state = [t for s in optimizer.state.values() for t in s.values()]
    local = [getattr(t, "to_local", lambda t=t: t)()  # this rank's shard of a DTensor
             for t in [*model.parameters(), *state, images, labels]]
    alive = sum({t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
                 for t in local}.values())
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = sorted((e for e in prof.profiler.kineto_results.events()
                     if e.name() == "[memory]"), key=lambda e: e.start_ns())
    running = peak = 0
    for event in events:
        running += event.nbytes()
        peak = max(peak, running)
    return alive + peak


CASES = [  # (spec, batch): activations dominate, states dominate, or both count
    (TINY, 32), (f"{TINY}:soft:e16", 32), (f"{TINY}:tokens_choice:e16:k2", 32),
    (f"{TINY}:experts_choice:e16", 32), (f"{TINY}:soft:e64", 8),
    (f"{TINY}:tokens_choice:e64", 4),
]


@pytest.mark.slow
@pytest.mark.parametrize("spec,batch", CASES)
def test_estimate_within_25_percent_of_the_measured_cpu_peak(spec, batch):
    """One process (DDP's layout: everything replicated), plain, with checkpointed blocks and
    with 2 micro-batches, fp32 on the CPU; the estimate orders them as measured."""
    import torch

    torch.set_num_threads(1)
    cfg = cfg_of(spec)
    ratios, peaks = {}, {}
    for name, options in (("plain", {}), ("checkpointing", {"checkpointing": True}),
                          ("micro-batches", {"micro_batches": 2})):
        plan = estimate(cfg, "ddp", batch_size=batch, precision="fp32", gpu=False,
                        checkpointing=options.get("checkpointing", False),
                        micro_batch=batch // options.get("micro_batches", 1))
        peaks[name] = (plan.peak_gb, measured_gb(spec, batch, **options))
        ratios[name] = plan.peak_gb / peaks[name][1]
    assert all(0.75 <= r <= 1.25 for r in ratios.values()), (spec, ratios, peaks)
    for (est_a, got_a), (est_b, got_b) in itertools.combinations(peaks.values(), 2):
        if abs(got_a - got_b) > 0.05 * max(got_a, got_b):  # near-ties may swap
            assert (est_a < est_b) == (got_a < got_b), (spec, peaks)


def _rank_peak(rank: int, world: int, spec: str, batch: int, layout: str, port: int,
               out: str) -> None:
    """One rank of a ``layout`` (ddp: DistributedDataParallel; fsdp: FSDP2's fully_shard on
    every block and the root) training step over gloo; rank 0 writes its measured peak, by
    the protocol of :func:`accumulated_peak` (live local tensors + allocator peak)."""
    import os

    import torch
    import torch.distributed as dist

    from harness.nn.vit import build
    from harness.runtime.timing import random_batch

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    cfg = cfg_of(spec)
    torch.manual_seed(0)
    model = build(cfg)
    if layout == "ddp":
        model = torch.nn.parallel.DistributedDataParallel(model)
    elif layout == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for block in model.blocks:
            fully_shard(block)
        fully_shard(model)
    else:  # the expert-sharded layouts, as training lays them out
        from harness.runtime.parallel import prepare, resolve_layout
        from harness.spec.config import TrainConfig

        model = prepare(model, resolve_layout(TrainConfig(batch_size=batch, layout=layout),
                                              world))
    images, labels = random_batch(cfg, batch // world, torch.device("cpu"))
    peak = accumulated_peak(model, images, labels, 1)
    if rank == 0:
        Path(out).write_text(str(peak))
    dist.destroy_process_group()


SHARDED_CASE = (f"{TINY}:tokens_choice:e64", 16)  # the states dominate: 64 experts, 16 images


def measured_peaks(tmp_path: Path, layouts: tuple[str, ...]) -> dict[str, tuple[float, float]]:
    """Per layout: (estimated, rank 0's measured) peak GB of SHARDED_CASE over 2 gloo
    processes."""
    import torch.multiprocessing as mp

    spec, batch = SHARDED_CASE
    peaks = {}
    for layout in layouts:
        out = tmp_path / layout.replace("+", "-")
        mp.spawn(_rank_peak, args=(2, spec, batch, layout, free_ports(1)[0], str(out)),
                 nprocs=2)
        plan = estimate(cfg_of(spec), layout, ranks=2, batch_size=batch, precision="fp32",
                        gpu=False)
        peaks[layout] = (plan.peak_gb, int(out.read_text()) / 1e9)
    return peaks


@pytest.mark.slow
def test_ddp_and_fsdp_over_two_gloo_processes_against_their_measured_peak(tmp_path):
    """2 processes, the states dominating (Tokens Choice, 64 experts, 16 images): each
    layout's estimate within 25% of rank 0's measured peak, and FSDP below DDP in both."""
    peaks = measured_peaks(tmp_path, ("ddp", "fsdp"))
    for est, got in peaks.values():
        assert 0.75 <= est / got <= 1.25, peaks
    assert peaks["fsdp"][0] < peaks["ddp"][0] and peaks["fsdp"][1] < peaks["ddp"][1], peaks


@pytest.mark.slow
def test_sharded_layouts_against_a_measured_peak(tmp_path):
    """The expert-sharded layouts (harness.runtime.parallel) over 2 gloo processes, the states
    dominating: each estimate within 25% of rank 0's measured peak, and both below DDP's."""
    peaks = measured_peaks(tmp_path, ("experts", "experts+fsdp"))
    spec, batch = SHARDED_CASE
    ddp = estimate(cfg_of(spec), "ddp", ranks=2, batch_size=batch, precision="fp32", gpu=False)
    for est, got in peaks.values():
        assert 0.75 <= est / got <= 1.25, peaks
        assert est < ddp.peak_gb
    assert peaks["experts+fsdp"][1] < peaks["experts"][1], peaks


# --- studies: the dry run and run ---------------------------------------------------------------
@pytest.mark.parametrize("name", STUDIES)
def test_every_cluster_profile_fits_80_gb(name):
    s = load(PAPER / f"{name}.yaml", ["data.path=/nonexistent"], "cluster")
    plans = study_plans(s, s.expand())
    assert plans and all(p.fits for p in plans.values()), [
        (p.spec, p.layout, round(p.peak_gb)) for p in plans.values() if not p.fits]
    assert all(p.limit_gb == 80 for p in plans.values())


def test_inference_runs_on_two_nodes_and_h14_256e_needs_them():
    s = load(PAPER / "inference.yaml", ["data.path=/x"], "cluster")
    assert (s.train.gpus, s.executor.slurm.gpus_per_run, s.executor.slurm.nodes) == (16, 16, 2)
    [h14] = [x for x in s.expand() if x.model_config_().spec == "vit-h/14:soft:e256:s1"]
    assert run_plan(s, h14).fits
    assert not any(run_plan(s, h14, layout, ranks=8, nodes=1).fits for layout in LAYOUTS)


def write_study(tmp_path: Path, *, layout: str = "ddp", gpus: int = 8) -> Path:
    path = tmp_path / "big.yaml"
    path.write_text(f"""name: big
data: {{name: prepared, path: {tmp_path}, image_size: 224, num_classes: 1000}}
train: {{steps: 1000, batch_size: 4096, gpus: {gpus}, layout: {layout}, device: cuda,
        micro_batch_size: 64}}
grid: {{model: [vit-l/16, vit-s/16], router: [soft, dense], num_experts: [128]}}
exclude: [{{model: vit-s/16, router: soft}}, {{model: vit-l/16, router: dense}}]
executor: {{name: slurm, slurm: {{gpus_per_run: {gpus}}}}}
""")
    return path


def test_run_refuses_ddp_for_soft_moe_l16_on_8_gpus_before_submitting(tmp_path, capsys,
                                                                         monkeypatch):
    import runners

    def no_dispatch(*args, **kwargs):
        raise AssertionError("a run was submitted")

    monkeypatch.setattr(runners, "dispatch", no_dispatch)
    study = write_study(tmp_path)
    assert run_cli(["run", str(study), "--results", str(tmp_path / "results")]) == 2
    err = capsys.readouterr().err.splitlines()
    [refused] = [line for line in err if "vit-l/16:soft:e128:s1" in line]
    assert "GB per GPU (ddp, 8 GPUs, micro-batch 64) > 80 GB; would fit: train.layout " \
           "experts" in refused
    assert ", or 16 GPUs on 2 nodes (experts, " in refused  # 8 GPUs per node, as the run's
    assert err[-1].startswith("error: ") and "1 of 2 runs need more than " \
        "estimate.gpu_memory_gb = 80 GB per GPU" in err[-1] and "--force" in err[-1]
    assert not (tmp_path / "results" / "big" / "slurm").exists()


def test_force_submits_anyway_and_auto_resolves_the_layout(tmp_path, capsys, monkeypatch):
    import runners

    sent = {}

    def dispatch(study, specs, **kwargs):
        sent["specs"] = specs
        return runners.Summary(submitted=len(specs), waited=False)

    monkeypatch.setattr(runners, "dispatch", dispatch)
    results = str(tmp_path / "results")
    assert run_cli(["run", str(write_study(tmp_path)), "--results", results, "--force"]) == 0
    assert {s.train.layout for s in sent["specs"]} == {"ddp"}
    assert "--force: 1 runs may run out of GPU memory" in capsys.readouterr().out

    assert run_cli(["run", str(write_study(tmp_path, layout="auto")), "--results",
                    results]) == 0
    out = capsys.readouterr().out
    assert "train.layout auto (the cheapest layout that fits): ddp for 1 runs, experts for " \
           "1 runs" in out or "experts for 1 runs, ddp for 1 runs" in out
    layouts = {s.model_config_().spec: s.train.layout for s in sent["specs"]}
    assert layouts == {"vit-l/16:soft:e128:s1": "experts", "vit-s/16": "ddp"}
    ids = {s.run_id for s in load(write_study(tmp_path, layout="auto")).expand()}
    assert {s.run_id for s in sent["specs"]} == ids  # the layout is outside the run id


@pytest.mark.slow
@pytest.mark.parametrize("name", STUDIES)
def test_dry_run_of_every_cluster_profile_shows_memory_and_fits(name, tmp_path, capsys):
    assert run_cli(["run", str(PAPER / f"{name}.yaml"), "--profile", "cluster", "--dry-run",
                    "--results", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    runs = len(load(PAPER / f"{name}.yaml", [], "cluster").expand())
    assert f"memory per GPU (ESTIMATE from the shapes, GB = 1e9 bytes); {runs} of {runs} " \
           "GPU runs fit 80 GB" in out
    for column in ("params", "grads", "optim", "activ.", "comm", "peak GB", "fits"):
        assert column in out
    assert out.count(" yes ") + out.count(" yes\n") >= runs and " NO " not in out
    assert "WARNING: data.path /path/to/imagenet-256 does not exist on this machine" in out


def test_dry_run_of_a_laptop_study_has_no_gpu_hours(tmp_path, capsys):
    assert run_cli(["run", str(PAPER / "pareto.yaml"), "--dry-run", "--results",
                    str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "GPU-h est. '-': CPU runs" in out and "CPU runs: no GPU memory to fit" in out
    assert "e-0" not in "".join(line.split("│")[-2] for line in out.splitlines()
                                if line.count("│") > 8 and "pending" in line)
    assert "WARNING" not in out  # synthetic data: no path needed


def test_record_carries_the_layout_and_the_estimate(tmp_path):
    """A run's record names its layout, ranks, nodes and micro-batch, and the estimated peak
    per rank, here within 25% of the peak the run measured (the same batch, fp32 CPU)."""
    from harness.runtime.run import execute

    path = tmp_path / "rec.yaml"
    path.write_text("""name: rec
data: {name: synthetic, image_size: 32, num_classes: 10, train_size: 64, test_size: 32}
train: {steps: 2, batch_size: 32, eval_every: 0, checkpoint_every: 0, fewshot_shots: 0,
        threads: 1, device: cpu}
measure: {flops: false, time: false, memory: true, batch_size: 32}
grid: {model: [vit-w64d4h4m256/4], router: [soft], num_experts: [16]}
""")
    [spec] = load(path).expand()
    record = execute(spec, tmp_path / "results")
    assert record["status"] == "ok", record.get("error")
    assert (record["layout"], record["ranks"], record["nodes"]) == ("ddp", 1, 1)
    assert (record["micro_batch_size"], record["accumulation_steps"]) == (32, 1)
    assert record["estimated_memory_limit_gb"] is None  # a CPU run: no GPU to fit
    measured = record["peak_memory_mb"] * 2**20 / 1e9
    assert 0.75 <= record["estimated_peak_memory_gb"] / measured <= 1.25


# --- batch splits, refused before anything runs ------------------------------------------------
def split_study(tmp_path: Path, train: str, executor: str = "{name: local}",
                limit: float = 80) -> Path:
    path = tmp_path / "split.yaml"
    path.write_text(f"""name: split
data: {{name: prepared, path: {tmp_path}, image_size: 224, num_classes: 1000}}
train: {{steps: 10, layout: auto, device: cuda, {train}}}
grid: {{model: [vit-l/16], router: [soft], num_experts: [8]}}
executor: {executor}
estimate: {{gpu_memory_gb: {limit}}}
""")
    return path


@pytest.mark.parametrize("train, field, allowed", [
    ("batch_size: 100, gpus: 3", "train.batch_size: 100 does not split evenly over the run's "
     "3 ranks", "allowed: a multiple of 3, e.g. 99, 102"),
    ("batch_size: 200, gpus: 2, micro_batch_size: 12", "train.micro_batch_size: 12 does not "
     "divide the 100 images per rank", "allowed: 1, 2, 4, 5, 10, 20, 25, 50, 100"),
    ("batch_size: 8, micro_batch_size: 16", "train.micro_batch_size: 16 does not divide the 8 "
     "images per rank", "allowed: 1, 2, 4, 8"),
])
def test_a_batch_split_that_fails_at_run_time_is_refused_by_the_dry_run(tmp_path, capsys, train,
                                                                          field, allowed):
    study = split_study(tmp_path, train)
    for extra in (["--dry-run"], []):
        assert run_cli(["run", str(study), "--results", str(tmp_path / "r"), *extra]) == 2
        [line] = capsys.readouterr().err.strip().splitlines()
        assert line.startswith(f"error: {study}: ") and field in line and allowed in line
    assert not (tmp_path / "r" / "split" / "runs").exists()


def test_the_refusal_suggests_only_valid_micro_batches_and_gpus(tmp_path):
    # 100 images on one GPU of one node: micro-batches that divide 100, GPUs on that node
    s = load(split_study(tmp_path, "batch_size: 100, gpus: 1",
                         "{name: slurm, slurm: {gpus_per_run: 1}}", limit=21.5))
    specs = s.expand()
    [line] = unfit(s, specs, study_plans(s, specs))
    assert "train.micro_batch_size 20 (" in line  # halving would say 12
    assert "2 GPUs (" in line and "nodes" not in line  # it said "2 GPUs on 2 nodes"
    # 8 GPUs per node: more than 8 go on more nodes, each with as many
    s = load(split_study(tmp_path, "batch_size: 96, gpus: 6, layout: ddp",
                         "{name: slurm, slurm: {gpus_per_run: 6}}", limit=10))
    specs = s.expand()
    [line] = unfit(s, specs, study_plans(s, specs))
    gpus = re.search(r"(\d+) GPUs on (\d+) nodes", line)
    assert gpus and int(gpus[1]) % int(gpus[2]) == 0 and int(gpus[1]) // int(gpus[2]) <= 8
