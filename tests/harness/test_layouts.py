"""Layouts at run time over gloo: 2 and 4 processes equal one process on the same global batch.

One spawn per process count runs every case (each MoE kind x each layout) through
``harness.runtime.train.fit`` in one process group; rank 0 keeps each case's per-step losses and the
complete parameters after the last step (expert and FSDP shards gathered). The reference is
the same cases in this process, without a process group. The sparse routers run without
router noise: noise is drawn per rank, so with it no layout can equal one process.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from helpers import free_ports

from harness.data import load_data
from harness.nn.vit import build
from harness.runtime import distributed
from harness.runtime.parallel.checkpoint import full_model_state
from harness.runtime.train import fit, seed_everything
from harness.spec.config import DataConfig, MeasureConfig, TrainConfig
from harness.spec.study import RunSpec

pytestmark = pytest.mark.slow

GLOBAL_BATCH = 16
STEPS = 4
ROUTERS = ("soft", "tokens_choice", "experts_choice")
# (layout, micro_batch_size per rank or None, activation checkpointing)
LAYOUTS = (("ddp", None, False), ("experts", None, False), ("fsdp", None, False),
           ("experts+fsdp", None, False), ("experts", 2, False), ("fsdp", None, True))
CASES = tuple((router, *layout) for router in ROUTERS for layout in LAYOUTS)
# The negative control: expert gradients summed over the ranks instead of averaged.
UNSCALED = ("soft", "experts", None, False)
# float32 summation order differs between 1, 2 and 4 ranks (see tests/harness/test_ddp.py's TOL)
TOL = dict(atol=2e-5, rtol=1e-4)


def spec_of(router: str, layout: str, micro: int | None, ac: bool) -> RunSpec:
    extra = {"router_noise": 0.0} if router != "soft" else {}
    return RunSpec(
        study="layouts", model="vit-w32d2h4m64/4", router=router, seed=0, num_experts=4,
        moe_layers="last_half",
        data=DataConfig(num_classes=4, train_size=128, test_size=16, image_size=16),
        train=TrainConfig(steps=STEPS, batch_size=GLOBAL_BATCH, lr=3e-3, warmup_steps=1,
                          eval_every=0, checkpoint_every=0, eval_batch_size=16,
                          fewshot_shots=0, threads=1, device="cpu", layout=layout,
                          micro_batch_size=micro, activation_checkpointing=ac),
        measure=MeasureConfig(enabled=False), **extra)


def run_case(case: tuple, workdir: Path) -> dict:
    """Train one case; returns its per-step losses (rank 0) and complete parameters."""
    spec = spec_of(*case)
    data = load_data(spec.data)
    seed_everything(spec.seed)
    model = build(spec.model_config_(data.num_classes))
    losses: list[float] = []

    def log(step, scalars):
        if "train/loss" in scalars:
            losses.append(scalars["train/loss"])

    fit(model, spec, data, workdir=workdir, device="cpu", log=log)
    return {"losses": losses, "params": full_model_state(model)}


def _worker(rank: int, world: int, port: int, out: str, cases: list) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    results = {}
    with distributed.session("cpu"):
        for case in cases:
            if case == ("unscaled", *UNSCALED):
                results[case] = _unscaled(Path(out) / f"{world}-{rank}-unscaled")
                continue
            results[case] = run_case(case, Path(out) / f"{world}-{rank}-{'-'.join(map(str, case))}")
    if rank == 0:
        torch.save(results, Path(out) / f"world{world}.pt")


def _unscaled(workdir: Path) -> dict:
    """``UNSCALED`` with the experts' 1/R gradient scaling taken out."""
    import harness.runtime.parallel.layout as layout

    original = layout.shard_experts

    def without_scaling(model, group=None):
        sharded = original(model, group)
        for experts in sharded:
            for handle in experts.grad_scaling:
                handle.remove()
        return sharded

    layout.shard_experts = without_scaling
    try:
        return run_case(UNSCALED, workdir)
    finally:
        layout.shard_experts = original


def spawn(world: int, tmp: Path, cases: list) -> dict:
    mp.spawn(_worker, args=(world, free_ports(1)[0], str(tmp), cases), nprocs=world)
    return torch.load(tmp / f"world{world}.pt", weights_only=False)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("one")
    torch.set_num_threads(1)
    return {case: run_case(case, tmp / "-".join(map(str, case))) for case in CASES}


def assert_equal_runs(got: dict, want: dict, what: str) -> None:
    assert len(got["losses"]) == STEPS, what
    torch.testing.assert_close(torch.tensor(got["losses"]), torch.tensor(want["losses"]),
                               **TOL, msg=lambda m: f"{what}: losses: {m}")
    assert got["params"].keys() == want["params"].keys(), what
    for key, value in want["params"].items():
        if key.endswith("attn.qkv.bias"):  # the key bias: pure rounding noise (test_ddp.py)
            continue
        torch.testing.assert_close(got["params"][key], value, **TOL,
                                   msg=lambda m, key=key: f"{what}: {key}: {m}")


@pytest.mark.parametrize("world", [2, 4])
def test_layouts_equal_one_process(world, reference, tmp_path):
    results = spawn(world, tmp_path, [*CASES, ("unscaled", *UNSCALED)])
    for case in CASES:
        assert_equal_runs(results[case], reference[case], f"{world} ranks, {case}")
    # negative control: without the 1/R on expert gradients the same comparison fails
    with pytest.raises(AssertionError):
        assert_equal_runs(results[("unscaled", *UNSCALED)], reference[UNSCALED], "unscaled")


# --- sharded checkpoints -------------------------------------------------------------------
RESUME = ("soft", "experts+fsdp", None, False)


class _Stop(Exception):
    pass


def _stop_after_step(step: int):
    def on_progress(info: dict) -> None:
        if info["step"] == step:
            raise _Stop

    return on_progress


def train_resumable(workdir: Path, stop_at: int | None = None) -> dict | None:
    """``RESUME`` checkpointed every 2 steps; stopped at ``stop_at`` (None: to the end)."""
    spec = spec_of(*RESUME)
    spec = spec.model_copy(update={"train": spec.train.model_copy(
        update={"checkpoint_every": 2})})
    data = load_data(spec.data)
    seed_everything(spec.seed + 7)  # the resumed state must all come from the checkpoint
    model = build(spec.model_config_(data.num_classes))
    try:
        result = fit(model, spec, data, workdir=workdir, device="cpu",
                     on_progress=None if stop_at is None else _stop_after_step(stop_at))
    except _Stop:
        return None
    return {"result": result, "params": full_model_state(model)}


def _resume_worker(rank: int, world: int, port: int, out: str, tasks: list) -> None:
    """``tasks``: (name, run folder); "stop" trains steps 1-3 (checkpoint at 2, killed in
    3), any other name trains to the end (resuming where a checkpoint is) and is saved."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    out_dir = Path(out)
    with distributed.session("cpu"):
        for name, folder in tasks:
            done = train_resumable(out_dir / folder, stop_at=3 if name == "stop" else None)
            if rank == 0 and name != "stop":
                torch.save(done, out_dir / f"{name}.pt")


def spawn_resume(world: int, out: Path, tasks: list) -> None:
    mp.spawn(_resume_worker, args=(world, free_ports(1)[0], str(out), tasks), nprocs=world)


def test_sharded_checkpoint_resumes_exactly_and_on_fewer_ranks(tmp_path):
    spawn_resume(2, tmp_path, [("unbroken", "unbroken"), ("stop", "two")])
    spawn_resume(4, tmp_path, [("stop", "four")])
    shards = sorted((tmp_path / "two" / "checkpoint-shards").iterdir())
    assert [p.name for p in shards] == ["step-000000002"]
    assert len(list(shards[0].glob("*.distcp"))) == 2  # one file per rank
    assert len(list((tmp_path / "four" / "checkpoint-shards" / "step-000000002")
                    .glob("*.distcp"))) == 4
    spawn_resume(2, tmp_path, [("resumed", "two"), ("moved", "four")])
    unbroken, resumed, moved = (torch.load(tmp_path / f"{name}.pt", weights_only=False)
                                for name in ("unbroken", "resumed", "moved"))
    # 2 ranks, stopped after the step-2 checkpoint and resumed: bit-identical to unbroken
    assert resumed["result"]["resumed_from_step"] == 2
    for key, value in unbroken["params"].items():
        assert torch.equal(resumed["params"][key], value), key
    assert resumed["result"]["history"] == unbroken["result"]["history"]
    # checkpointed on 4 ranks, resumed on 2: the shards re-cut, it ends as the unbroken run
    assert moved["result"]["resumed_from_step"] == 2
    assert_equal_runs({"losses": [0.0] * STEPS, "params": moved["params"]},
                      {"losses": [0.0] * STEPS, "params": unbroken["params"]}, "4 -> 2 ranks")


def test_corrupt_shards_of_one_rank_restart_every_rank_afresh(tmp_path):
    """One rank's shard file truncated: every rank finds the checkpoint unreadable (DCP fails
    them all together), none keeps what it read, and the run starts afresh: the same as an
    unbroken one."""
    spawn_resume(2, tmp_path, [("unbroken", "unbroken"), ("stop", "two")])
    part = tmp_path / "two" / "checkpoint-shards" / "step-000000002" / "__1_0.distcp"
    part.write_bytes(part.read_bytes()[:500])
    spawn_resume(2, tmp_path, [("resumed", "two")])
    unbroken, resumed = (torch.load(tmp_path / f"{name}.pt", weights_only=False)
                         for name in ("unbroken", "resumed"))
    assert resumed["result"]["resumed_from_step"] is None
    assert resumed["result"]["checkpoint_note"].endswith("started afresh")
    for key, value in unbroken["params"].items():
        assert torch.equal(resumed["params"][key], value), key
