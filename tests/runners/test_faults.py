"""Faults during a local sweep: the sweep killed by each signal, two sweeps of one study, a
killed --rerun, a full disk. Every ``ok`` record stays, no process is left behind, and the
user reads one line, never a traceback."""

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

from harness.results.store import Store
from harness.spec.study import load

pytestmark = pytest.mark.slow

STUDY = """
name: sweep
data: {name: synthetic, image_size: 16, num_classes: 10, train_size: 512, test_size: 256}
train: {steps: 100000, batch_size: 32, eval_every: 0, checkpoint_every: 0, fewshot_shots: 0}
measure: {enabled: false}
fixed: {model: vit-w32d2h4m64/4}
grid: {seed: [0, 1]}
executor: {max_parallel: 2}
"""


def study_file(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(textwrap.dedent(STUDY) + textwrap.dedent(extra))
    return path


def processes_under(folder: Path) -> list[int]:
    """PIDs of submitit controllers and jobs working in ``folder``."""
    return processes_with("submitit", str(folder))


def start_sweep(study: Path, root: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "harness.cli", "run", str(study),
                             "--results", str(root), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_until(predicate, what: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def training(root: Path, runs: int = 2) -> bool:
    return len(list((root / "sweep" / "work").glob("*/progress.json"))) >= runs


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL])
def test_killing_the_sweep_leaves_no_process_behind(tmp_path, sig):
    root = tmp_path / "results"
    sweep = start_sweep(study_file(tmp_path), root)
    wait_until(lambda: training(root), "both runs to train")
    assert len(processes_under(root)) >= 4  # a controller and a job per run
    sweep.send_signal(sig)
    out, err = sweep.communicate(timeout=120)
    wait_until(lambda: not processes_under(root), "the jobs to end", timeout=30)
    assert not list((root / "sweep" / "runs").glob("*.json"))  # no run recorded as failed
    if sig != signal.SIGKILL:
        assert sweep.returncode == 130 and "Traceback" not in err
        assert "interrupted: stopped 2 running run(s) of sweep" in err
        assert "Run the same command again to resume" in err


def test_a_second_sweep_of_the_same_study_is_refused(tmp_path):
    root, study = tmp_path / "results", study_file(tmp_path)
    first = start_sweep(study, root)
    try:
        wait_until(lambda: training(root), "the first sweep to train")
        second = cli("run", study, "--results", root, check=False)
        assert second.returncode == 2 and "Traceback" not in second.stderr
        assert "study sweep is in use by pid" in second.stderr
        assert len(processes_under(root)) == 4  # the first sweep's two runs only
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=120)


def test_a_run_held_by_another_process_is_skipped_without_a_record(tmp_path):
    from harness.runtime.run import execute

    spec = load(study_file(tmp_path)).expand()[0]
    store = Store(tmp_path / "results", "sweep")
    with store.lock_run(spec.run_id):
        assert execute(spec, store.root) is None
    assert store.read(spec.run_id) is None


def fake_ok(store: Store, spec) -> bytes:
    """An ``ok`` record of the run from an earlier attempt (the training itself is not what
    these tests are about)."""
    store.write({**spec.flat(), "status": "ok", "test_accuracy": 0.5,
                 "started_at": "2026-01-01T00:00:00+00:00",
                 "finished_at": "2026-01-01T01:00:00+00:00"})
    return store.path(spec.run_id).read_bytes()


def test_a_killed_rerun_keeps_the_ok_records(tmp_path):
    root, study = tmp_path / "results", study_file(tmp_path)
    store = Store(root, "sweep")
    before = {s.run_id: fake_ok(store, s) for s in load(study).expand()}
    sweep = start_sweep(study, root, "--rerun", "--quiet")
    wait_until(lambda: training(root), "the rerun to train")
    for pid in processes_under(root):
        if "core._submit" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
            os.kill(pid, signal.SIGKILL)  # the training jobs die, the sweep records it
    sweep.communicate(timeout=120)
    assert sweep.returncode == 1
    for run_id, content in before.items():
        assert store.path(run_id).read_bytes() == content
        (attempt,) = store.history(run_id)
        assert json.loads(attempt.read_text())["status"] == "failed"


@pytest.fixture
def small_disk(tmp_path):
    """A 6 MiB tmpfs (root only): room for the sweep's small files, not for a checkpoint."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mount)], check=True)
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_fails_the_runs_keeps_the_records_and_leaves_no_temporary_file(
        tmp_path, small_disk):
    study = study_file(tmp_path, """
        train: {steps: 5, batch_size: 32, eval_every: 0, checkpoint_every: 1, fewshot_shots: 0}
        fixed: {model: vit-w64d4h4m256/4, router: soft, num_experts: 32, moe_layers: 'last:2'}
    """)  # 2 x 32 experts of 64 x 256 x 2: a checkpoint (weights + Adam) of about 13 MB
    store = Store(small_disk, "sweep")
    before = {s.run_id: fake_ok(store, s) for s in load(study).expand()}
    out = cli("run", study, "--results", small_disk, "--rerun", check=False)
    assert out.returncode in (1, 2) and "Traceback" not in out.stderr
    for run_id, content in before.items():
        assert store.path(run_id).read_bytes() == content
        attempts = [json.loads(p.read_text()) for p in store.history(run_id)]
        assert attempts and "No space left on device" in attempts[-1]["error"]
    assert not [p for p in small_disk.rglob("*") if p.name.endswith(".tmp")]


def test_progress_off_a_terminal_is_one_line_per_event(tmp_path):
    study = study_file(tmp_path, "train: {steps: 3, batch_size: 32, eval_every: 0, "
                                 "checkpoint_every: 0, fewshot_shots: 0}\n")
    out = cli("run", study, "--results", tmp_path / "results")
    lines = out.stderr.splitlines()
    assert sum(" started vit-w32d2h4m64/4@16#seed" in line for line in lines) == 2
    assert sum(" ok vit-w32d2h4m64/4@16#seed" in line for line in lines) == 2
    assert any("2 of 2 done (ok 2" in line for line in lines)  # the closing summary
