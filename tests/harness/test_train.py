"""Training loop: schedules, evaluation, the few-shot probe, divergence, determinism, resume."""

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from harness.data import load_data
from harness.data.datasets import Datasets, InMemoryImages
from harness.nn.vit import build
from harness.runtime.checkpoint import CHECKPOINT
from harness.runtime.probe import (
    FEWSHOT_DRAWS,
    FEWSHOT_L2,
    fewshot_indices,
    fewshot_probe,
    ridge_probe,
)
from harness.runtime.train import evaluate, fit, lr_factor, seed_everything
from harness.spec.config import DataConfig, TrainConfig
from harness.spec.study import RunSpec

TINY = "vit-w32d2h2m64/4"
DATA = DataConfig(num_classes=4, train_size=512, test_size=128)


def spec_for(router="tokens_choice", **train):
    knobs = dict(steps=12, batch_size=16, lr=3e-3, warmup_steps=3, eval_every=4,
                 checkpoint_every=0, eval_batch_size=64, fewshot_shots=3, threads=1)
    knobs.update(train)
    extra = {} if router == "dense" else dict(num_experts=4, moe_layers="last_half")
    return RunSpec(study="t", model=TINY, router=router, seed=0, data=DATA,
                   train=TrainConfig(**knobs), **extra)


def run(spec, workdir, data=None, model=None):
    data = data or load_data(spec.data)
    if model is None:
        seed_everything(spec.seed)
        model = build(spec.model_config_(data.num_classes))
    return fit(model, spec, data, workdir=workdir, device="cpu")


# --- schedules ---------------------------------------------------------------------------------
def test_cosine_schedule():
    cfg = TrainConfig(steps=110, warmup_steps=10, schedule="cosine")
    assert lr_factor(0, cfg) == pytest.approx(0.1)
    assert lr_factor(4, cfg) == pytest.approx(0.5)
    assert lr_factor(10, cfg) == pytest.approx(1.0)
    assert lr_factor(60, cfg) == pytest.approx(0.5)  # half way through the decay
    assert lr_factor(109, cfg) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.99)))


def test_rsqrt_schedule_with_cooldown():
    cfg = TrainConfig(steps=1000, warmup_steps=10, schedule="rsqrt")
    assert lr_factor(0, cfg) == pytest.approx(0.1)
    assert lr_factor(9, cfg) == pytest.approx(1.0)
    assert lr_factor(39, cfg) == pytest.approx(0.5)  # sqrt(10 / 40)
    assert lr_factor(899, cfg) == pytest.approx(math.sqrt(10 / 900))  # cooldown starts at 900
    assert lr_factor(950, cfg) == pytest.approx(math.sqrt(10 / 951) * 0.5)
    assert lr_factor(999, cfg) == pytest.approx(math.sqrt(10 / 1000) * 0.01)


def test_constant_schedule_and_no_warmup():
    cfg = TrainConfig(steps=50, warmup_steps=4, schedule="constant")
    assert [lr_factor(s, cfg) for s in (0, 1, 3, 49)] == pytest.approx([0.25, 0.5, 1, 1])
    assert lr_factor(0, TrainConfig(steps=50, warmup_steps=0, schedule="cosine")) == 1.0


# --- evaluation and the few-shot probe ---------------------------------------------------------
class Constant(nn.Module):
    """Predicts class ``c`` for every image (logits zero except a small bump on ``c``)."""

    def __init__(self, num_classes, c):
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(num_classes))
        self.logits.data[c] = 1.0

    def forward(self, x):
        return self.logits.expand(len(x), -1)


def test_evaluate_constant_predictor_on_a_known_label_mix():
    labels = torch.tensor([0] * 6 + [1] * 3 + [2] * 1)
    data = InMemoryImages(torch.zeros(10, 3, 4, 4), labels)
    out = evaluate(Constant(3, 0), data, batch_size=3)
    assert out["accuracy"] == pytest.approx(0.6)
    p = torch.softmax(torch.tensor([1.0, 0, 0]), 0)
    expected = -(6 * p[0].log() + 3 * p[1].log() + p[2].log()) / 10
    assert out["loss"] == pytest.approx(expected.item(), rel=1e-6)
    subset = evaluate(Constant(3, 1), data, indices=torch.tensor([6, 7, 9]))
    assert subset["accuracy"] == pytest.approx(2 / 3)


def test_evaluate_averages_router_metrics():
    torch.manual_seed(0)
    model = build(f"{TINY}@16:experts_choice:e4:c0.5", num_classes=3)
    data = InMemoryImages(torch.randn(20, 3, 16, 16), torch.arange(20) % 3)
    out = evaluate(model, data, batch_size=8)
    assert 0 < out["router_token_coverage"] <= 0.5 + 1e-9
    assert out["router_dropped_fraction"] == pytest.approx(1 - out["router_token_coverage"])
    assert "router_token_coverage" not in evaluate(model, data, router_metrics=False)


def test_probe_separable_features_give_100_percent():
    rng = np.random.default_rng(0)
    centers = 5.0 * np.eye(8)[:5]  # 5 classes, well apart in 8 dimensions
    train_y, test_y = np.repeat(np.arange(5), 4), rng.integers(0, 5, 200)
    train_x = centers[train_y] + 0.3 * rng.standard_normal((20, 8))
    test_x = centers[test_y] + 0.3 * rng.standard_normal((200, 8))
    assert fewshot_probe([(train_x, train_y)], test_x, test_y, 5) == 1.0


def test_probe_constant_features_predict_the_majority_class():
    train_x = np.ones((6, 4))
    train_y = np.array([0, 0, 0, 1, 1, 2])  # class 0 is the majority of the shots
    test_y = np.array([0] * 7 + [1] * 2 + [2])
    assert fewshot_probe([(train_x, train_y)], np.ones((10, 4)), test_y, 3) == \
        pytest.approx(0.7)


def test_probe_uses_one_fixed_penalty_and_averages_the_draws():
    rng = np.random.default_rng(1)
    draws = []
    for _ in range(FEWSHOT_DRAWS):
        y = np.repeat(np.arange(3), 5)
        draws.append((np.eye(3)[y] + 0.8 * rng.standard_normal((15, 3)), y))
    test_y = rng.integers(0, 3, 60)
    test_x = np.eye(3)[test_y] + 0.8 * rng.standard_normal((60, 3))
    each = [ridge_probe(x, y, test_x, test_y, 3) for x, y in draws]
    assert fewshot_probe(draws, test_x, test_y, 3) == pytest.approx(np.mean(each))
    assert each == [ridge_probe(x, y, test_x, test_y, 3, FEWSHOT_L2) for x, y in draws]
    assert FEWSHOT_L2 == 2.0**10  # the paper's codebase's constant, not a per-run choice


def test_fewshot_draws_differ_and_draw_0_is_the_seeds_set():
    labels = torch.arange(200) % 4
    first, second = (fewshot_indices(labels, 5, 4, seed=3, draw=d) for d in (0, 1))
    assert torch.equal(first, fewshot_indices(labels, 5, 4, seed=3))
    assert set(first.tolist()) != set(second.tolist())
    assert (labels[second].bincount() == 5).all()


SPREAD_STUDY = """\
name: spread
data: {name: synthetic, image_size: 8, num_classes: 5, train_size: 1024, test_size: 500}
train: {steps: 60, batch_size: 32, lr: 0.003, warmup_steps: 5, eval_every: 0,
        checkpoint_every: 0, fewshot_shots: 10, threads: 1}
measure: {enabled: false}
tracking: {tensorboard: false}
grid: {model: [vit-w32d2h2m64/4], router: [dense, tokens_choice], num_experts: [4],
       seed: [0, 1, 2, 3]}
"""


@pytest.mark.slow
def test_fewshot_spread_between_seeds_is_no_larger_than_test_accuracys(tmp_path):
    """Eight tiny runs (2 configurations x 4 seeds, about 20 s): the probe's seed-to-seed
    spread (pooled within configurations) is at most the test accuracy's on the same runs.
    The probe that chose its penalty per run by leave-one-out spread 0.067 here against the
    test accuracy's 0.060."""
    from harness.runtime.run import execute
    from harness.spec.study import load

    path = tmp_path / "spread.yaml"
    path.write_text(SPREAD_STUDY)
    by_config: dict[str, list[tuple[float, float]]] = {}
    for spec in load(path).expand():
        record = execute(spec, tmp_path / "results")
        assert record["fewshot_l2"] == FEWSHOT_L2
        by_config.setdefault(spec.router, []).append(
            (record["test_accuracy"], record["fewshot_accuracy"]))

    def pooled(i: int) -> float:
        return float(np.sqrt(np.mean([np.var([r[i] for r in runs], ddof=1)
                                      for runs in by_config.values()])))

    assert pooled(1) <= pooled(0), (pooled(1), pooled(0), by_config)


# --- fit ---------------------------------------------------------------------------------------
def test_fit_returns_the_documented_keys(tmp_path):
    out = run(spec_for(), tmp_path)
    assert out["status"] == "ok" and out["diverged_step"] is None
    assert out["steps_done"] == 12 and out["resumed_from_step"] is None
    assert [h["step"] for h in out["history"]] == [4, 8, 12]
    assert set(out["history"][0]) == {"step", "train_loss", "test_accuracy"}
    assert 0 <= out["test_accuracy"] <= 1 and out["test_loss"] > 0
    assert 0 <= out["fewshot_accuracy"] <= 1
    assert {"router_dropped_fraction", "router_expert_load_cv"} <= set(out)
    assert out["train_time_s"] > 0
    assert not (tmp_path / CHECKPOINT).exists()  # checkpoint_every=0


def test_fit_learns_the_synthetic_task(tmp_path):
    spec = spec_for("dense", steps=60, batch_size=32, lr=3e-3, fewshot_shots=0,
                    eval_every=0)
    data = load_data(DataConfig(num_classes=4, train_size=512, test_size=128,
                                synthetic={"contexts": 1, "noise": 0.2}))
    out = run(spec, tmp_path, data=data)
    assert out["fewshot_accuracy"] is None
    assert out["test_accuracy"] > 0.6  # chance is 0.25
    assert [h["step"] for h in out["history"]] == [60]


def test_progress_is_reported(tmp_path):
    seen = []
    spec = spec_for("dense", steps=20, fewshot_shots=0)
    data = load_data(spec.data)
    seed_everything(0)
    model = build(spec.model_config_(data.num_classes))
    fit(model, spec, data, workdir=tmp_path, device="cpu", on_progress=seen.append)
    assert seen and seen[-1]["step"] == 20 and seen[-1]["steps"] == 20
    assert all(math.isfinite(p["loss"]) for p in seen)


def test_huge_learning_rate_diverges_without_raising(tmp_path):
    out = run(spec_for("tokens_choice", lr=1e6, steps=30), tmp_path)
    assert out["status"] == "diverged"
    assert 1 <= out["diverged_step"] <= 30 and out["steps_done"] == out["diverged_step"] - 1
    assert out["test_accuracy"] is None and out["fewshot_accuracy"] is None


class NanAfter(nn.Module):
    """Wraps a model; its forward returns NaN logits from the ``bad``-th training call on."""

    def __init__(self, model, bad):
        super().__init__()
        self.model, self.bad, self.calls = model, bad, 0

    def forward(self, x):
        if self.training:
            self.calls += 1
        out = self.model(x)
        return out * math.nan if self.training and self.calls >= self.bad else out

    def pre_logits(self, x):
        return self.model.pre_logits(x)


def test_nan_loss_reports_its_step(tmp_path):
    spec = spec_for("dense")
    data = load_data(spec.data)
    model = NanAfter(build(spec.model_config_(4)), bad=7)
    out = fit(model, spec, data, workdir=tmp_path, device="cpu")
    assert (out["status"], out["diverged_step"], out["steps_done"]) == ("diverged", 7, 6)
    assert [h["step"] for h in out["history"]] == [4]


def test_same_seed_same_result(tmp_path):
    spec = spec_for("tokens_choice")  # gate noise draws from the torch RNG
    a, b = run(spec, tmp_path / "a"), run(spec, tmp_path / "b")
    for key in ("test_accuracy", "test_loss", "fewshot_accuracy", "router_dropped_fraction"):
        assert a[key] == b[key], key
    assert a["history"] == b["history"]
    other = run(spec.model_copy(update={"seed": 1}), tmp_path / "c")
    assert other["test_loss"] != a["test_loss"]


def test_finished_checkpoint_is_resumed_without_training(tmp_path):
    spec = spec_for("soft", checkpoint_every=5)
    first = run(spec, tmp_path)
    assert (tmp_path / CHECKPOINT).is_file()
    again = run(spec, tmp_path)
    assert again["resumed_from_step"] == 12 and again["steps_done"] == 12
    assert again["test_loss"] == first["test_loss"]
    assert again["history"] == first["history"]


def test_checkpoint_of_another_run_is_refused(tmp_path):
    run(spec_for("dense", checkpoint_every=6, fewshot_shots=0), tmp_path)
    from harness.errors import HarnessError

    with pytest.raises(HarnessError, match="belongs to run"):
        run(spec_for("dense", checkpoint_every=6, fewshot_shots=0, lr=1e-3), tmp_path)


ROOT = Path(__file__).resolve().parents[2]
CHILD = textwrap.dedent("""
    import json, os, sys, time
    from harness.spec.config import DataConfig, LoaderConfig, TrainConfig
    from harness.data import load_data
    from harness.nn.vit import build
    from harness.spec.study import RunSpec
    from harness.runtime.train import fit, seed_everything

    workdir, slow, workers = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
    spec = RunSpec(study="t", model="vit-w32d2h2m64/4", router="tokens_choice", num_experts=4,
                   moe_layers="last_half", seed=3,
                   data=DataConfig(num_classes=4, train_size=512, test_size=128,
                                   loader=LoaderConfig(workers=workers)),
                   train=TrainConfig(steps=40, batch_size=16, lr=3e-3, warmup_steps=4,
                                     eval_every=5, checkpoint_every=4, eval_batch_size=64,
                                     fewshot_shots=3, threads=1))
    data = load_data(spec.data)
    seed_everything(spec.seed)
    model = build(spec.model_config_(data.num_classes))
    out = fit(model, spec, data, workdir=workdir, device="cpu",
              on_progress=lambda p: time.sleep(slow))
    print("RESULT " + json.dumps(out))
    kids = []  # this process's live children (DataLoader workers would be)
    for p in os.listdir("/proc"):
        try:
            state, ppid = open(f"/proc/{p}/stat").read().rsplit(") ", 1)[1].split()[:2]
        except (OSError, ValueError, IndexError):
            continue
        if int(ppid) == os.getpid() and state != "Z":
            kids.append(int(p))
    print("CHILDREN " + json.dumps(kids))
""")


def child(script, workdir, slow=0.0, workers=0, **kw):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(  # this checkout's harness, first
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    return subprocess.Popen([sys.executable, str(script), str(workdir), str(slow), str(workers)],
                            stdout=subprocess.PIPE, text=True, env=env, **kw)


def live_children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` and that are not zombies (from /proc)."""
    out = []
    for name in os.listdir("/proc"):
        try:
            with open(f"/proc/{name}/stat") as f:
                state, ppid = f.read().rsplit(") ", 1)[1].split()[:2]
        except (OSError, ValueError, IndexError):
            continue
        if int(ppid) == pid and state != "Z":
            out.append(int(name))
    return out


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(") ", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def result_of(proc):
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0
    proc.lines = out.splitlines()
    return json.loads(next(line for line in proc.lines if line.startswith("RESULT "))[7:])


def children_at_end(proc) -> list[int]:
    """The child processes the training script still had after ``fit`` returned."""
    return json.loads(next(line for line in proc.lines if line.startswith("CHILDREN "))[9:])


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])
def test_sigkill_and_restart_ends_like_an_unbroken_run(tmp_path, workers):
    """Also with DataLoader worker processes, whose prefetching must not shift the batches;
    and those workers end with the run, and when the training process is killed."""
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    proc = child(script, tmp_path / "unbroken", workers=workers)
    unbroken = result_of(proc)
    assert unbroken["resumed_from_step"] is None
    assert children_at_end(proc) == []  # the workers ended with the run

    workdir = tmp_path / "killed"
    proc = child(script, workdir, slow=0.05, workers=workers)  # ~0.1 s a step: time to kill
    deadline = time.monotonic() + 240
    while not (workdir / CHECKPOINT).exists():
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    workers_seen = live_children(proc.pid)  # training workers (+ a history evaluation's)
    assert len(workers_seen) >= workers and (workers or not workers_seen)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    deadline = time.monotonic() + 30  # DataLoader workers check on their parent every 5 s
    while any(alive(pid) for pid in workers_seen):
        assert time.monotonic() < deadline, f"workers {workers_seen} outlived their parent"
        time.sleep(0.2)
    resumed = result_of(child(script, workdir, workers=workers))

    assert 0 < resumed["resumed_from_step"] < 40
    assert resumed["steps_done"] == 40 and resumed["status"] == "ok"
    for key in ("test_accuracy", "test_loss", "fewshot_accuracy", "train_loss",
                "router_dropped_fraction", "router_expert_load_cv"):
        assert resumed[key] == pytest.approx(unbroken[key], abs=1e-6), key
    assert [h["step"] for h in resumed["history"]] == [h["step"] for h in unbroken["history"]]
    for a, b in zip(resumed["history"], unbroken["history"], strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-6)
        assert a["test_accuracy"] == pytest.approx(b["test_accuracy"], abs=1e-6)


def test_datasets_type_is_what_fit_takes():
    data = load_data(DATA)
    assert isinstance(data, Datasets) and data.num_classes == 4
