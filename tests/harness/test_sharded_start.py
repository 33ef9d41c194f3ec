"""A run whose experts are sharded over 2 gloo processes, through ``harness.runtime.run.execute``
as a job's tasks call it: each rank builds only its block of every MoE layer's experts
(sharded as each layer is built, with the weights one process draws from the same seed),
and the run still equals one process on the same global batch."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from helpers import free_ports

from harness.cost.flops import analytic_flops
from harness.data import load_data
from harness.nn.vit import build
from harness.runtime.run import execute
from harness.spec.config import DataConfig, MeasureConfig, TrainConfig
from harness.spec.study import RunSpec

pytestmark = pytest.mark.slow

WORLD = 2


def spec_of(study: str) -> RunSpec:
    return RunSpec(
        study=study, model="vit-w32d2h4m64/4", router="soft", seed=0, num_experts=4,
        moe_layers="last_half",
        data=DataConfig(num_classes=4, train_size=128, test_size=32, image_size=16),
        train=TrainConfig(steps=4, batch_size=16, lr=3e-3, warmup_steps=1, eval_every=2,
                          checkpoint_every=0, eval_batch_size=32, fewshot_shots=0, threads=1,
                          device="cpu", layout="experts"),
        measure=MeasureConfig(flops=False, time=False, memory=False))


def _worker(rank: int, port: int, root: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    import harness.runtime.train

    fit_ = harness.runtime.train.fit

    def capturing_fit(model, *args, **kwargs):  # the model as execute built it, untrained
        torch.save(model.state_dict(), Path(root) / f"built_rank{rank}.pt")
        return fit_(model, *args, **kwargs)

    harness.runtime.train.fit = capturing_fit
    try:
        execute(spec_of("sharded"), root)
    finally:
        harness.runtime.train.fit = fit_


def test_ranks_build_their_experts_only_and_train_as_one_process(tmp_path):
    mp.spawn(_worker, args=(free_ports(1)[0], str(tmp_path)), nprocs=WORLD)
    spec = spec_of("single")
    data = load_data(spec.data)
    cfg = spec.model_config_(data.num_classes)
    torch.manual_seed(spec.seed)
    full = build(cfg).state_dict()
    for rank in range(WORLD):
        built = torch.load(tmp_path / f"built_rank{rank}.pt", weights_only=True)
        assert built.keys() == full.keys()
        for key, value in full.items():
            want = value[2 * rank:2 * (rank + 1)] if ".mlp.experts." in key else value
            assert torch.equal(built[key], want), (rank, key)

    [record] = [json.loads(p.read_text()) for p in (tmp_path / "sharded" / "runs").glob("*.json")]
    single = execute(spec, tmp_path)
    assert record["status"] == "ok" and record["layout"] == "experts" and record["ranks"] == 2
    assert record["params_total"] == single["params_total"]
    assert record["params_active"] == single["params_active"]
    assert record["gflops_per_image"] == pytest.approx(analytic_flops(cfg).gflops)
    assert record["gflops_per_image"] == pytest.approx(single["gflops_per_image"])
    assert "experts sharded" in record["cost_note"]
    for key in ("train_loss", "test_loss", "test_accuracy"):
        assert record[key] == pytest.approx(single[key], rel=1e-5), key
    for a, b in zip(record["history"], single["history"], strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)

