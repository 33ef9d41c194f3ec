"""Local sweeps end to end: records on disk, resume, retries, failures and kills."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from helpers import cli, processes_with

pytestmark = pytest.mark.slow

STUDY = """
name: sweep
data: {name: synthetic, image_size: 16, num_classes: 10, train_size: 512, test_size: 256}
train: {steps: 6, batch_size: 32, lr: 0.003, warmup_steps: 2, eval_every: 0,
        checkpoint_every: 0, fewshot_shots: 2, eval_batch_size: 128}
measure: {time: false, memory: false}
executor: {max_parallel: 2}
"""


def make_study(tmp_path: Path, grid: str, extra: str = "") -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(textwrap.dedent(STUDY) + textwrap.dedent(extra) + textwrap.dedent(grid))
    return path


def records(root: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in (root / "sweep" / "runs").glob("*.json")}


def test_sweep_runs_resumes_and_redoes_only_what_is_missing(tmp_path):
    study = make_study(tmp_path, """
        grid:
          model: [vit-w32d2h4m64/4]
          router: [dense, soft, tokens_choice]
          num_experts: [4]
          moe_layers: ['last:1']
    """)
    root = tmp_path / "results"
    out = cli("run", study, "--results", root, "--quiet")
    assert "3 runs: 3 ok, 0 failed, 0 diverged" in out.stdout
    first = records(root)
    assert {r["status"] for r in first.values()} == {"ok"}
    assert {r["router"] for r in first.values()} == {"dense", "soft", "tokens_choice"}
    for r in first.values():  # each record is complete: spec, cost, quality, environment
        assert r["params_total"] > 0 and r["gflops_per_image"] > 0
        assert 0 <= r["test_accuracy"] <= 1 and r["attention_backend"] == "sdpa"
        assert r["device"].startswith("cpu") and r["torch_version"]

    again = cli("run", study, "--results", root, "--quiet")
    assert "Nothing to do" in again.stdout and "3 of 3 runs of sweep are done" in again.stdout

    victim = sorted(first)[0]
    keep = {p: p.stat().st_mtime_ns for p in (root / "sweep" / "runs").glob("*.json")
            if p.stem != victim}
    (root / "sweep" / "runs" / f"{victim}.json").unlink()
    redo = cli("run", study, "--results", root, "--quiet")
    assert "1 to run, 2 done of 3" in redo.stdout
    assert victim in records(root)
    assert all(p.stat().st_mtime_ns == t for p, t in keep.items())  # the others untouched

    status = cli("status", study, "--results", root)
    assert "3 ok" in status.stdout


def test_failed_and_diverged_runs_do_not_stop_the_sweep(tmp_path):
    study = make_study(tmp_path, """
        grid:
          model: [vit-w32d2h4m64/4]
          attention: [sdpa, xformers]      # xformers cannot run on CPU: a failed run
          lr: [0.003, 1.0e+9]              # an absurd learning rate: a diverged run
    """, extra="train: {steps: 6, batch_size: 32, warmup_steps: 0, grad_clip: null, "
               "eval_every: 0, checkpoint_every: 0, fewshot_shots: 0}\n")
    root = tmp_path / "results"
    out = cli("run", study, "--results", root, "--quiet", check=False)
    assert out.returncode == 1  # some runs failed
    recs = records(root)
    by = {(r["attention"], r["lr"]): r for r in recs.values()}
    assert by[("sdpa", 0.003)]["status"] == "ok"
    assert by[("sdpa", 1e9)]["status"] == "diverged"
    assert by[("sdpa", 1e9)]["diverged_step"] >= 1
    for lr in (0.003, 1e9):
        assert by[("xformers", lr)]["status"] == "failed"
        assert "needs a CUDA device" in by[("xformers", lr)]["error"]

    ok_files = {p: p.stat().st_mtime_ns for p in (root / "sweep" / "runs").glob("*.json")
                if json.loads(p.read_text())["status"] != "failed"}
    retry = cli("run", study, "--results", root, "--quiet", "--retry-failed", check=False)
    assert "2 to run" in retry.stdout
    assert all(p.stat().st_mtime_ns == t for p, t in ok_files.items())


def _job_pids(folder: Path) -> list[int]:
    return processes_with("submitit.core._submit", str(folder))


def test_killed_run_resumes_from_its_checkpoint_to_the_same_result(tmp_path):
    grid = """
        grid:
          model: [vit-w32d2h4m64/4]
          router: [soft]
          num_experts: [4]
    """
    extra = ("train: {steps: 40, batch_size: 32, warmup_steps: 2, eval_every: 0, "
             "checkpoint_every: 10, fewshot_shots: 2}\n")
    study = make_study(tmp_path, grid, extra)
    unbroken = tmp_path / "unbroken"
    cli("run", study, "--results", unbroken, "--quiet")
    reference = next(iter(records(unbroken).values()))

    root = tmp_path / "killed"
    sweep = subprocess.Popen([sys.executable, "-m", "harness.cli", "run", str(study),
                              "--results", str(root), "--quiet"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    checkpoint = root / "sweep" / "work" / reference["run_id"] / "checkpoint.pt"
    deadline = time.monotonic() + 300
    while not checkpoint.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert checkpoint.exists(), "no checkpoint written"
    for pid in _job_pids(root / "sweep"):
        os.kill(pid, signal.SIGKILL)
    sweep.communicate(timeout=300)
    killed = records(root)[reference["run_id"]]
    assert killed["status"] == "failed" and "ended without a record" in killed["error"]

    cli("run", study, "--results", root, "--quiet", "--retry-failed")
    resumed = records(root)[reference["run_id"]]
    assert resumed["status"] == "ok"
    assert resumed["resumed_from_step"] >= 10
    assert resumed["test_accuracy"] == pytest.approx(reference["test_accuracy"], abs=1e-9)
    assert resumed["test_loss"] == pytest.approx(reference["test_loss"], rel=1e-6)
