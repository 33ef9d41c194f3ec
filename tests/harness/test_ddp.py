"""DistributedDataParallel on CPU: 2 processes (gloo), spawned as a job's tasks would be.

Each process gets ``MASTER_ADDR``/``MASTER_PORT``/``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` (what
``submitit.helpers.TorchDistributedEnvironment().export()`` sets in a SLURM job) and calls
``harness.runtime.run.execute`` like a job would. Checked: both ranks end with identical parameters;
only rank 0 writes the record; the result equals a single-process run with the same global
batch within float32 rounding (see ``TOL``); a 2-process run interrupted after a checkpoint
and resumed ends bit-identical to an unbroken one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from helpers import free_ports

from harness.data import load_data
from harness.errors import HarnessError
from harness.nn.vit import build
from harness.results.store import Store
from harness.runtime import distributed
from harness.runtime.checkpoint import CHECKPOINT
from harness.runtime.run import execute
from harness.runtime.train import fit, seed_everything
from harness.spec.config import DataConfig, MeasureConfig, TrainConfig
from harness.spec.study import RunSpec

pytestmark = pytest.mark.slow

WORLD = 2
GLOBAL_BATCH = 32
STEPS = 8

# Tolerance of the DDP-vs-single-process comparison. The two compute the same update in exact
# arithmetic: DDP averages the two ranks' gradients of the mean loss over 16 images each, which
# is the gradient of the mean over the 32. In float32 they differ in summation order only (per
# shard then across ranks, against all 32 at once; matmuls over 16 rows, not 32): a relative
# error of a few float32 epsilons (1.2e-7) per gradient entry. AdamW divides by the root of the
# second moment, so where a gradient entry is tiny its rounding error moves the update by up to
# lr (3e-3) times that relative error: measured after 8 steps, the parameters differ by at most
# 1.0e-6 (patch embedding) and the test logits by 4.5e-8. We allow 1e-5 absolute + 1e-4
# relative for parameters, 1e-6 for logits (about 10x the measured gaps); a real mistake is far
# outside (the negative control below: 16 images per step instead of 32 moves some parameter by
# 2e-2).
# One exception: the attention's key bias (the middle third of qkv.bias) has a gradient of
# exactly zero in exact arithmetic (adding one vector to every key shifts each softmax row by a
# constant), so its float gradient is pure rounding noise, which Adam's normalisation turns
# into updates of noise / (noise + eps): 5.6e-6 measured, and machine-dependent. It cannot
# change the outputs, so it is left out of the parameter comparison and checked through the
# logits.
TOL = dict(atol=1e-5, rtol=1e-4)
LOGITS_TOL = dict(atol=1e-6, rtol=1e-5)


def without_key_bias(params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in params.items():
        if key.endswith("attn.qkv.bias"):
            third = value.numel() // 3
            value = torch.cat([value[:third], value[2 * third:]])
        out[key] = value
    return out


def logits_on_test_images(params: dict[str, torch.Tensor]) -> torch.Tensor:
    spec = tiny_spec("logits")
    data = load_data(spec.data)
    model = build(spec.model_config_(data.num_classes))
    model.load_state_dict(params)
    model.eval()
    with torch.no_grad():
        return model(data.test.images)


def tiny_spec(study: str, router: str = "soft", batch_size: int = GLOBAL_BATCH,
              checkpoint_every: int = 4) -> RunSpec:
    extra = {} if router == "dense" else dict(num_experts=4, moe_layers="last_half")
    return RunSpec(
        study=study, model="vit-w32d2h4m64/4", router=router, seed=0,
        data=DataConfig(num_classes=4, train_size=256, test_size=64, image_size=16),
        train=TrainConfig(steps=STEPS, batch_size=batch_size, lr=3e-3, warmup_steps=2,
                          eval_every=4, checkpoint_every=checkpoint_every, eval_batch_size=64,
                          fewshot_shots=2, threads=1, device="cpu"),
        measure=MeasureConfig(enabled=False), **extra)


class _Stop(Exception):
    pass


def _worker(rank: int, ports: tuple[int, int], root: str, out: str) -> None:
    """One rank: a run through ``execute``, then an interrupted + resumed run through ``fit``.

    Each part has its own rendezvous port: rank 1 leaves ``execute`` while rank 0 still
    evaluates and holds the first one.
    """
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(ports[0]), RANK=str(rank),
                      WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(WORLD))
    torch.set_num_threads(1)
    out_dir = Path(out)
    import harness.runtime.train

    fit_ = harness.runtime.train.fit

    def capturing_fit(model, *args, **kwargs):  # execute imports fit at call time
        result = fit_(model, *args, **kwargs)
        torch.save(model.state_dict(), out_dir / f"execute_rank{rank}.pt")
        return result

    harness.runtime.train.fit = capturing_fit
    returned = execute(tiny_spec("ddp"), root)
    harness.runtime.train.fit = fit_
    (out_dir / f"returned_rank{rank}.json").write_text(json.dumps(returned is not None))

    # interrupted after the step-4 checkpoint (both ranks stop at the same point), then resumed
    spec = tiny_spec("ddp")
    data = load_data(spec.data)
    workdir = Path(root) / "resume-work"

    def stop_after_checkpoint(info: dict) -> None:
        if info["step"] == 5:
            raise _Stop

    os.environ["MASTER_PORT"] = str(ports[1])
    with distributed.session("cpu") as ctx:
        assert ctx.world_size == WORLD and ctx.rank == rank
        seed_everything(spec.seed)
        model = build(spec.model_config_(data.num_classes))
        try:
            fit(model, spec, data, workdir=workdir, device="cpu",
                on_progress=stop_after_checkpoint)
            raise AssertionError("not interrupted")
        except _Stop:
            pass
        seed_everything(spec.seed + 1)  # a different fresh state: all must come from the file
        model = build(spec.model_config_(data.num_classes))
        result = fit(model, spec, data, workdir=workdir, device="cpu")
        torch.save(model.state_dict(), out_dir / f"resumed_rank{rank}.pt")
        if rank == 0:
            (out_dir / "resumed.json").write_text(json.dumps(
                {k: result[k] for k in ("resumed_from_step", "steps_done", "status")}))
        else:
            assert result is None


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    """Spawn the 2 ranks once for the module's tests; returns (results root, outputs)."""
    root = tmp_path_factory.mktemp("ddp-results")
    out = tmp_path_factory.mktemp("ddp-out")
    mp.spawn(_worker, args=(free_ports(2), str(root), str(out)), nprocs=WORLD, join=True)
    return root, out


def _load(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)


def test_ranks_end_identical_and_only_rank0_records(ddp_run):
    root, out = ddp_run
    p0, p1 = _load(out / "execute_rank0.pt"), _load(out / "execute_rank1.pt")
    assert p0.keys() == p1.keys()
    for key in p0:
        assert torch.equal(p0[key], p1[key]), key  # DDP keeps the replicas bit-identical

    assert json.loads((out / "returned_rank0.json").read_text()) is True
    assert json.loads((out / "returned_rank1.json").read_text()) is False  # rank 1: None
    store = Store(root, "ddp")
    records = store.records()
    assert len(records) == 1 and len(list(store.runs_dir.glob("*.json"))) == 1
    record = records[0]
    assert record["status"] == "ok", record.get("error")
    assert record["world_size"] == WORLD and record["steps_done"] == STEPS
    # the checkpoint (rank 0's) holds plain module keys, interchangeable with 1-process runs
    saved = torch.load(store.workdir(record["run_id"]) / CHECKPOINT, weights_only=False)
    assert saved["model"].keys() == p0.keys()
    for key in p0:
        assert torch.equal(saved["model"][key], p0[key]), key


def test_ddp_equals_single_process_with_the_same_global_batch(ddp_run, tmp_path):
    root, out = ddp_run
    ddp_params = _load(out / "execute_rank0.pt")
    ddp_record = Store(root, "ddp").records()[0]

    torch.set_num_threads(1)
    single = execute(tiny_spec("single"), tmp_path)
    assert single["status"] == "ok", single.get("error")
    assert "world_size" not in single
    saved = torch.load(Store(tmp_path, "single").workdir(single["run_id"]) / CHECKPOINT,
                       weights_only=False)["model"]
    ours, theirs = without_key_bias(ddp_params), without_key_bias(saved)
    worst = 0.0
    for key, value in theirs.items():
        torch.testing.assert_close(ours[key], value, **TOL, msg=key)
        worst = max(worst, (ours[key] - value).abs().max().item())
    torch.testing.assert_close(logits_on_test_images(ddp_params), logits_on_test_images(saved),
                               **LOGITS_TOL)
    # the logged losses are the global batch's mean, as in a single process
    for a, b in zip(ddp_record["history"], single["history"], strict=True):
        assert a["step"] == b["step"]
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
    assert ddp_record["train_loss"] == pytest.approx(single["train_loss"], rel=1e-5)

    # negative control: half the global batch per step is far outside the tolerance
    half = execute(tiny_spec("half", batch_size=GLOBAL_BATCH // WORLD), tmp_path)
    saved_half = torch.load(Store(tmp_path, "half").workdir(half["run_id"]) / CHECKPOINT,
                            weights_only=False)["model"]
    gap = max((saved_half[k] - ddp_params[k]).abs().max().item() for k in saved_half)
    assert gap > 100 * max(TOL["atol"], worst), (gap, worst)


def test_ddp_resume_is_exact(ddp_run):
    _, out = ddp_run
    info = json.loads((out / "resumed.json").read_text())
    assert info == {"resumed_from_step": 4, "steps_done": STEPS, "status": "ok"}
    unbroken = _load(out / "execute_rank0.pt")
    for rank in range(WORLD):
        resumed = _load(out / f"resumed_rank{rank}.pt")
        for key in unbroken:
            assert torch.equal(resumed[key], unbroken[key]), (rank, key)


def test_uneven_batch_is_an_error(monkeypatch):
    monkeypatch.setattr(distributed, "current", lambda: distributed.Context(0, 3, 0))
    with pytest.raises(HarnessError, match="does not split evenly over the run's 3"):
        distributed.check_batch(32)
    distributed.check_batch(33)
    assert distributed.shard(torch.arange(33)).tolist() == list(range(11))


def test_env_context_reads_submitit_slurm_tasks(monkeypatch):
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("SLURM_NTASKS", "4")
    monkeypatch.setenv("SLURM_PROCID", "2")
    monkeypatch.setenv("SLURM_LOCALID", "2")
    monkeypatch.delenv("SUBMITIT_EXECUTOR", raising=False)
    assert distributed.env_context() == distributed.Context()  # not a submitit job: alone
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    ctx = distributed.env_context()
    assert (ctx.rank, ctx.world_size, ctx.local_rank, ctx.is_main) == (2, 4, 2, False)
