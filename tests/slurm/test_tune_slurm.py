"""``moe-harness tune --executor slurm``: workers are SLURM jobs of the real one-node cluster
(``slurm_cluster`` in conftest.py) pulling trials from one shared storage."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from harness.results.store import Store
from harness.spec.study import load
from runners import tune as T

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

STUDY = """
name: tslurm
data: {name: synthetic, image_size: 16, num_classes: 10, train_size: 256, test_size: 128}
train: {steps: 6, batch_size: 16, warmup_steps: 0, eval_every: 0, checkpoint_every: 0,
        fewshot_shots: 0, eval_batch_size: 128, threads: 1}
measure: {time: false, memory: false}
fixed: {model: vit-w32d4h4m64/4, router: soft, num_experts: 4}
executor:
  name: slurm
  slurm: {time_min: 30, cpus_per_run: 1}
tune:
  space:
    slots_per_expert: {low: 1, high: 4}
    moe_layers: ["last:1", "last_half"]
    lr: {low: 0.0003, high: 0.01, log: true}
  objectives:
    - {metric: test_accuracy, direction: maximize}
    - {metric: gflops_per_image, direction: minimize}
  sampler: {startup_trials: 3}
  heartbeat: {interval_s: 2, grace_s: 30}
"""


def test_two_slurm_workers_complete_a_small_study(slurm_cluster, tmp_path):
    from optuna.trial import TrialState as S

    raw = yaml.safe_load(textwrap.dedent(STUDY))
    raw["executor"]["slurm"]["partition"] = slurm_cluster.partition
    path = tmp_path / "tslurm.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    root = tmp_path / "results"  # on the node's file system: the jobs see it
    proc = subprocess.run(
        [sys.executable, "-m", "harness.cli", "tune", str(path), "--trials", "4", "--workers",
         "2", "--wait", "--results", str(root), "--quiet"],
        capture_output=True, text=True, timeout=600)
    logs = "\n".join(p.read_text()[-2000:] for p in sorted(
        (root / "tslurm").rglob("*_log.err")))
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}\n{logs}"
    assert "4 of 4 trials finished" in proc.stderr, proc.stderr
    # SLURM workers default to a journal file (SQLite's locks are unsafe on shared FS)
    journal = root / "tslurm" / "tune" / "optuna.journal"
    assert journal.exists()
    study = load(path)
    ostudy = T.open_study(study, T.parse(study), f"journal:{journal}", heartbeats=False)
    trials = ostudy.get_trials()
    assert [t.state for t in trials] == [S.COMPLETE] * 4
    jobs = {t.user_attrs["slurm_job_id"] for t in trials}
    assert None not in jobs and len(jobs) <= 2  # every trial ran inside a SLURM job
    store = Store(root, "tslurm")
    for t in trials:
        record = store.read(t.user_attrs["run_id"])
        assert record is not None and record["status"] == "ok"
        if "reused_record" not in t.user_attrs:
            assert record["tune_trial"] == t.number
            assert record["slurm_job_id"] == t.user_attrs["slurm_job_id"]
    assert Path(T.recorded_storage(store.dir).removeprefix("journal:")) == journal
