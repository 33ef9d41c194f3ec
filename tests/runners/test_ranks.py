"""``train.gpus: N`` on the local executor: N gloo ranks on the CPU through PyTorch's elastic
launcher, rank 0 writing the record; the same losses as one rank; a rank killed mid-run fails
the run (naming the rank) with no process left, and ``--retry-failed`` resumes it; two
multi-rank runs side by side; ``max_parallel`` counting ranks."""

from __future__ import annotations

import json
import os
import signal
import textwrap
import time
from pathlib import Path

import pytest
from helpers import processes_with

from harness.errors import HarnessError
from harness.results.store import Store
from harness.runtime.launch import Slots, check_ranks
from harness.spec.study import load

STUDY = """
name: {name}
data: {{name: synthetic, image_size: 16, num_classes: 4, train_size: 128, test_size: 16}}
train: {{steps: {steps}, batch_size: 16, lr: 0.003, warmup_steps: 1, eval_every: 0,
        checkpoint_every: {checkpoint}, fewshot_shots: 0, eval_batch_size: 16, threads: 1,
        device: cpu, gpus: 2, layout: {layout}}}
measure: {{enabled: false}}
fixed: {{model: vit-w32d2h4m64/4, num_experts: 4, moe_layers: last_half, router_noise: 0.0}}
grid: {grid}
executor: {{max_parallel: {parallel}}}
"""
# float32 summation order differs between 1 and 2 ranks (tests/harness/test_layouts.py's TOL)
TOL = dict(abs=2e-5, rel=1e-4)


def study_of(tmp_path: Path, name: str, *, layout: str = "ddp", steps: int = 4,
             checkpoint: int = 0, grid: str = "{router: [soft]}", parallel: int = 2,
             overrides: tuple[str, ...] = ()):
    path = tmp_path / f"{name}.yaml"
    path.write_text(textwrap.dedent(STUDY).format(
        name=name, layout=layout, steps=steps, checkpoint=checkpoint, grid=grid,
        parallel=parallel))
    return load(path, list(overrides))


def sweep(study, root: Path, specs=None, **options):
    import runners

    return runners.dispatch(study, study.expand() if specs is None else specs,
                            results_root=root, show_progress=False, **options)


def records(root: Path, name: str) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((root / name / "runs").glob("*.json"))]


# --- the scheduling, without processes -------------------------------------------------------
def test_max_parallel_counts_ranks_and_gpu_runs_get_disjoint_devices(tmp_path):
    spec = study_of(tmp_path, "slots", overrides=("train.device=cuda",)).expand()[0]
    slots = Slots(capacity=4, gpus=4)
    slots_on_gpu = [slots.take(spec, busy=i > 0) for i in range(3)]
    assert slots_on_gpu[2] is None  # 2 + 2 ranks hold all 4
    (_, first), (_, second) = slots_on_gpu[:2]
    assert set(first).isdisjoint(second) and len(first) == len(second) == 2
    slots.give(slots_on_gpu[0])
    assert slots.take(spec, busy=True) == (2, first)  # the devices given back
    alone = Slots(capacity=1)  # wider than max_parallel: runs alone, when nothing else runs
    assert alone.take(spec, busy=True) is None and alone.take(spec, busy=False) == (2, ())


def test_more_ranks_than_gpus_are_refused_in_one_line(tmp_path, monkeypatch):
    import harness.runtime.launch as launch

    monkeypatch.setattr(launch, "gpu_count", lambda: 1)
    monkeypatch.setattr(launch, "on_gpus", lambda train: True)
    specs = [s.train for s in study_of(tmp_path, "refused").expand()]
    with pytest.raises(HarnessError, match=r"^train.gpus: 2 ranks, one per GPU, but this "
                                           r"machine has 1 GPU \(") as err:
        check_ranks(specs)
    assert "\n" not in str(err.value)


# --- runs on 2 gloo ranks --------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("layout", ["experts", "ddp", "fsdp"])
def test_a_two_rank_local_run_records_two_ranks_and_one_rank_losses(tmp_path, layout):
    """Every router (the sparse ones with router noise off) in every layout."""
    routers = "[soft, tokens_choice, experts_choice]"
    root, by = tmp_path / "results", {}
    for gpus in (1, 2):
        study = study_of(tmp_path, f"eq{layout}", layout=layout, grid=f"{{router: {routers}}}",
                         overrides=(f"train.gpus={gpus}",))
        summary = sweep(study, root)
        assert summary.ok == summary.submitted
    by = {(r["router"], r["ranks"]): r for r in records(root, study.name)}
    for router in routers.strip("[]").split(", "):
        one, two = by[(router, 1)], by[(router, 2)]
        assert two["world_size"] == 2 and two["status"] == "ok"
        assert two["train_loss"] == pytest.approx(one["train_loss"], **TOL), router
        assert two["test_loss"] == pytest.approx(one["test_loss"], **TOL), router


@pytest.mark.slow
def test_two_two_rank_runs_side_by_side_on_four_ranks(tmp_path):
    study = study_of(tmp_path, "sides", grid="{seed: [0, 1]}", parallel=4)
    root = tmp_path / "results"
    summary = sweep(study, root)
    assert summary.ok == 2
    spans = [(r["started_at"], r["finished_at"]) for r in records(root, "sides")]
    assert max(s for s, _ in spans) < min(f for _, f in spans)  # they overlapped


def rank_pids(root: Path) -> list[int]:
    """The ranks of the study's runs (spawned by the launcher: 'spawn_main' processes whose
    parent is a job of ``root``)."""
    jobs = set(processes_with("submitit", str(root)))
    return [pid for pid in processes_with("multiprocessing.spawn")
            if int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]) in jobs]


@pytest.mark.slow
def test_a_killed_rank_fails_the_run_and_retry_failed_resumes_it(tmp_path):
    import threading

    study = study_of(tmp_path, "killed", steps=400, checkpoint=5)
    root = tmp_path / "results"
    store = Store(root, "killed")
    spec = study.expand()[0]
    killed: dict = {}

    def kill_a_rank_once_past_a_checkpoint():
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            progress = store.progress_path(spec.run_id)
            step = json.loads(progress.read_text()).get("step", 0) if progress.exists() else 0
            pids = rank_pids(root)
            if step >= 20 and len(pids) == 2:
                killed.update(at=time.monotonic(), ranks=pids)
                os.kill(max(pids), signal.SIGKILL)  # the later-started rank
                return
            time.sleep(0.2)

    killer = threading.Thread(target=kill_a_rank_once_past_a_checkpoint)
    killer.start()
    summary = sweep(study, root)
    ended = time.monotonic()
    killer.join()
    assert "at" in killed, "the run never reached step 20 on two ranks"
    assert summary.failed == 1 and ended - killed["at"] < 30
    record = store.read(spec.run_id)
    assert record["status"] == "failed" and "a rank failed: rank" in record["error"]
    assert "SIGKILL" in record["error"]
    assert not processes_with("submitit", str(root))
    assert not [pid for pid in killed["ranks"] if Path(f"/proc/{pid}").exists()]

    import runners

    retry = runners.select(study, store, retry_failed=True).todo
    assert [s.run_id for s in retry] == [spec.run_id]
    summary = sweep(study, root, specs=retry)
    record = store.read(spec.run_id)
    assert summary.ok == 1 and record["status"] == "ok" and record["ranks"] == 2
    assert record.get("resumed_from_step", 0) >= 5


# --- one statement of the ranks: SLURM, the plan, the dry run ---------------------------------
def test_slurm_gpus_per_run_disagreeing_with_train_gpus_is_refused(tmp_path):
    with pytest.raises(HarnessError, match=r"train.gpus: 2 but executor.slurm.gpus_per_run: 1 "
                                           r".*set executor.slurm.gpus_per_run: 2"):
        study_of(tmp_path, "disagree", overrides=("executor.name=slurm",
                                                  "executor.slurm.gpus_per_run=1"))
    with pytest.raises(HarnessError, match=r"train.gpus: 2 but executor.slurm.gpus_per_run: 0"):
        study_of(tmp_path, "cpu", overrides=("executor.name=slurm",))


def test_the_plan_and_the_slurm_job_have_the_same_ranks(tmp_path):
    from harness.cost.memory import run_plan
    from runners.slurm import executor_parameters

    study = study_of(tmp_path, "agree", overrides=("executor.name=slurm",
                                                   "executor.slurm.gpus_per_run=2"))
    [spec] = study.expand()
    assert run_plan(study, spec).ranks == executor_parameters(study)["tasks_per_node"] == 2


def test_the_dry_run_says_how_many_ranks_on_this_machine(tmp_path):
    from helpers import cli

    study_of(tmp_path, "dry")
    out = cli("run", str(tmp_path / "dry.yaml"), "--results", str(tmp_path / "r"),
              "--dry-run").stdout
    assert "2 ranks on this machine per run (train.gpus; local executor" in " ".join(out.split())


def test_status_shows_each_runs_ranks(tmp_path):
    from harness.views.runs import status_table

    study = study_of(tmp_path, "status")
    table = status_table(study, Store(tmp_path / "r", "status"))
    column = next(c for c in table.columns if c.header == "ranks")
    assert list(column.cells) == ["2"]
    one = study_of(tmp_path, "status", overrides=("train.gpus=1",))
    assert "ranks" not in [c.header for c in status_table(one, Store(tmp_path / "r",
                                                                         "status")).columns]


# --- tuning: trials of several ranks --------------------------------------------------------
def test_tuning_workers_of_several_ranks_fit_the_gpus(tmp_path, monkeypatch):
    import harness.runtime.launch as launch
    from runners.tune.driver import trial_workers

    study = study_of(tmp_path, "tw")
    monkeypatch.setattr(launch, "gpu_count", lambda: 5)
    monkeypatch.setattr(launch, "on_gpus", lambda train: True)
    assert trial_workers(study, "local", 4) == 2  # 2 workers x 2 ranks <= 5 GPUs
    monkeypatch.setattr(launch, "on_gpus", lambda train: False)
    assert trial_workers(study, "local", 4) == 4  # on the CPU: threads are split instead
    with pytest.raises(HarnessError, match="multi-rank trials run on the local executor"):
        trial_workers(study, "slurm", 4)


@pytest.mark.slow
def test_a_tuning_trial_of_two_ranks(tmp_path):
    from fixtures.studies import tiny_tune_study, write_study

    from runners import tune as T

    raw = tiny_tune_study("tr", train={"gpus": 2, "device": "cpu", "threads": 1,
                                       "fewshot_shots": 0})
    raw["tune"]["space"] = {"lr": {"low": 0.0003, "high": 0.003, "log": True}}
    study = load(write_study(tmp_path, raw))
    summary = T.tune(study, results_root=tmp_path / "results", trials=1, executor="local",
                     show_progress=False)
    assert summary["after"]["finished"] == 1
    [record] = records(tmp_path / "results", "tr")
    assert record["status"] == "ok" and record["ranks"] == 2 and record["tune_trial"] == 0


def test_tuning_workers_of_several_ranks_get_disjoint_gpus(tmp_path, monkeypatch):
    """2-rank trials on 4 GPUs: worker 0 has GPUs 0 and 1, worker 1 GPUs 2 and 3 (a debug
    worker, in this process, runs both trials as worker 0)."""
    from fixtures.studies import tiny_tune_study, write_study

    import harness.runtime.launch as launch
    from runners import tune as T

    seen = []

    def fake_launch(self, spec, results_root, fresh=False, tags=None):
        seen.append(os.environ.get("CUDA_VISIBLE_DEVICES"))
        record = {**spec.flat(), **(tags or {}), "status": "ok", "test_accuracy": 0.5,
                  "ranks": spec.train.gpus}
        Store(results_root, spec.study).write(record)
        return record

    monkeypatch.setattr(launch, "gpu_count", lambda: 4)
    monkeypatch.setattr(launch, "on_gpus", lambda train: True)
    monkeypatch.setattr(launch.RankJob, "__call__", fake_launch)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    raw = tiny_tune_study("tg", train={"gpus": 2})
    raw["tune"] = {"space": {"lr": {"low": 0.0003, "high": 0.003, "log": True}},
                   "objectives": [{"metric": "test_accuracy", "direction": "maximize"}]}
    study = load(write_study(tmp_path, raw))
    T.tune(study, results_root=tmp_path / "results", trials=2, workers=2, executor="debug",
           show_progress=False)
    assert seen == ["0,1", "0,1"]
    train = study.train
    assert [launch.worker_devices(w, train) for w in (0, 1)] == [(0, 1), (2, 3)]


@pytest.mark.slow
def test_a_run_another_process_holds_is_skipped_without_a_hang(tmp_path):
    study = study_of(tmp_path, "held")
    root = tmp_path / "results"
    [spec] = study.expand()
    with Store(root, "held").lock_run(spec.run_id):
        summary = sweep(study, root)
    assert summary.skipped == 1 and not records(root, "held")
    assert not processes_with("submitit", str(root))


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_ctrl_c_or_a_killed_sweep_stops_every_rank(tmp_path, sig):
    """Ctrl-C: the sweep kills each job's tree; SIGKILL: each rank's lifeline ends it."""
    import subprocess
    import sys

    study_of(tmp_path, "stopped", steps=100000)
    root = tmp_path / "results"
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "run",
                             str(tmp_path / "stopped.yaml"), "--results", str(root), "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while len(ranks := rank_pids(root)) < 2 or not list(root.glob("stopped/work/*/progress.json")):
        assert time.monotonic() < deadline, "the run never trained on two ranks"
        time.sleep(0.2)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    if sig == signal.SIGINT:
        assert proc.returncode == 130 and "interrupted: stopped 1 running run(s)" in err
    deadline = time.monotonic() + 30
    while [pid for pid in ranks if Path(f"/proc/{pid}").exists()]:
        assert time.monotonic() < deadline, "a rank outlived the sweep"
        time.sleep(0.2)
