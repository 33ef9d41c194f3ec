"""``moe-harness run --executor slurm`` end to end on the real one-node cluster of conftest.py.

The commands run as a user would type them (a fresh ``python -m harness.cli`` each time, so
``status`` and ``cancel`` read only what is on disk), on studies of tiny models (16 px, a few
steps, one thread, no cost measurement). Checked: a 4-run sweep as one job array ending in 4
``ok`` records that name their jobs; requeued jobs (an outside ``scontrol requeue`` and
submitit's USR2 path) resuming from their training checkpoints; real failures recorded with
their error and log, and ``--retry-failed`` resubmitting only them; ``cancel``, and jobs that
end without a record; a 2-task job training one run with DDP; sbatch refusals.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from harness.results.store import Store
from harness.spec.study import load
from runners.slurm import executor_parameters, live_view, load_jobs

REPO = Path(__file__).resolve().parents[2]

TINY_TRAIN = dict(steps=6, batch_size=16, lr=0.003, warmup_steps=2, eval_every=0,
                  checkpoint_every=3, eval_batch_size=64, fewshot_shots=0, threads=1,
                  device="cpu")
SYNTHETIC = dict(name="synthetic", image_size=16, num_classes=4, train_size=256, test_size=64)


def write_study(folder: Path, name: str, *, grid: dict, data: dict | None = None,
                train: dict | None = None, slurm: dict | None = None,
                fixed: dict | None = None) -> Path:
    study = {
        "name": name, "data": data or SYNTHETIC, "train": {**TINY_TRAIN, **(train or {})},
        "measure": {"enabled": False}, "fixed": {"model": "vit-w32d2h4m64/4", **(fixed or {})},
        "grid": grid,
        "executor": {"name": "local", "slurm": {"time_min": 60, "cpus_per_run": 1,
                                                "mem_gb": 1, **(slurm or {})}},
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def diagnose(results: Path) -> str:
    """squeue and the tail of every job log under ``results``, for failure messages."""
    queue = subprocess.run(["squeue", "-r", "-O", "JobArrayID,State,TimeUsed,RestartCnt,Reason"],
                           capture_output=True, text=True, timeout=30).stdout
    logs = []
    for log in sorted(results.glob("*/slurm/*/*_log.*")):
        logs.append(f"--- {log}\n" + "\n".join(log.read_text().splitlines()[-15:]))
    return f"squeue:\n{queue}\n" + "\n".join(logs)


def cli(*args: str | Path, results: Path, timeout: float = 240,
        ok_codes: tuple[int, ...] = (0,)) -> str:
    """Run ``moe-harness ARGS --results RESULTS`` in a fresh process; returns its output."""
    cmd = [sys.executable, "-m", "harness.cli", *map(str, args), "--results", str(results)]
    env = {**os.environ, "COLUMNS": "250"}  # rich tables unwrapped, for the asserts
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env,
                             cwd=REPO)
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"{' '.join(cmd[3:])} still running after {timeout} s\n"
                    f"{err.stdout}\n{err.stderr}\n{diagnose(results)}", pytrace=False)
    text = out.stdout + out.stderr
    if out.returncode not in ok_codes:
        pytest.fail(f"{' '.join(cmd[3:])} exited {out.returncode}:\n{text}\n"
                    f"{diagnose(results)}", pytrace=False)
    return text


def records(results: Path, study: str) -> dict[str, dict]:
    runs = results / study / "runs"
    return {p.stem: json.loads(p.read_text()) for p in sorted(runs.glob("*.json"))}


# ---------------------------------------------------------------- without a cluster
def test_executor_parameters_from_the_slurm_section(tmp_path):
    path = write_study(tmp_path, "params", grid={"seed": [0]}, slurm={
        "partition": "gpu", "account": "proj", "qos": "high", "constraint": "h100",
        "gpus_per_run": 4, "cpus_per_run": 32, "mem_gb": 200, "array_parallelism": 8,
        "extra_sbatch": {"exclusive": True}, "setup": ["module load cuda"],
        "signal_delay_s": 300})
    params = executor_parameters(load(path, ["executor.slurm.time_min=1440"]))
    assert params == {
        "name": "moe-params", "timeout_min": 1440, "cpus_per_task": 8,  # 32 per run / 4 tasks
        "slurm_array_parallelism": 8, "slurm_signal_delay_s": 300,
        "slurm_additional_parameters": {"exclusive": True}, "slurm_setup": ["module load cuda"],
        "slurm_partition": "gpu", "slurm_account": "proj", "slurm_qos": "high",
        "slurm_constraint": "h100", "mem_gb": 200, "gpus_per_node": 4, "tasks_per_node": 4}
    cpu_only = executor_parameters(load(write_study(tmp_path, "cpu", grid={"seed": [0]}), []))
    assert "tasks_per_node" not in cpu_only and "slurm_partition" not in cpu_only
    assert cpu_only["cpus_per_task"] == 1


def test_live_view_leaves_out_runs_whose_job_only_exits(tmp_path, monkeypatch):
    """squeue still shows a job RUNNING for a moment after it wrote its run's record: that
    run is done. A record of an older job (a retried failure) does not end the new one."""
    import runners.slurm as S

    store = Store(tmp_path, "lv")
    index = {run: {"job_id": job, "submitted_at": "2026-01-01T00:00:00",
                   "stdout": f"{job}.out", "stderr": f"{job}.err"}
             for run, job in (("done", "11"), ("retried", "12"), ("busy", "13"))}
    S.atomic_write_json(store.slurm_jobs_file, index)
    store.write({"run_id": "done", "status": "ok", "slurm_job_id": "11",
                 "slurm_restarts": 0})
    store.write({"run_id": "retried", "status": "failed", "slurm_job_id": "7"})
    running = {"state": "running", "elapsed": "0:04", "restarts": 0, "reason": "None"}
    monkeypatch.setattr(S, "scheduler_states", lambda ids: dict.fromkeys(ids, running))
    assert set(live_view(store)) == {"retried", "busy"}
    assert live_view(store)["busy"]["log"] == "13.err"


# ---------------------------------------------------------------- on the cluster
@pytest.mark.slurm
@pytest.mark.slow
def test_sweep_as_one_job_array(slurm_cluster, tmp_path):
    results = tmp_path / "results"
    study = write_study(tmp_path, "sweep", grid={"router": ["dense", "soft"], "seed": [0, 1]},
                        slurm={"partition": slurm_cluster.partition, "array_parallelism": 4,
                               "extra_sbatch": {"comment": "moe-harness-test"},
                               "setup": ["export MOE_HARNESS_SETUP=ran"]})
    tic = time.monotonic()
    out = cli("run", study, "--executor", "slurm", "--wait", "--quiet",
              "--set", "executor.slurm.time_min=30", results=results)
    wall = time.monotonic() - tic
    assert "submitted 4 runs as job array" in out, out
    assert "4 runs: 4 ok, 0 failed" in out, out

    index = load_jobs_at(results, "sweep")
    arrays = {e["job_id"].split("_")[0] for e in index.values()}
    assert len(arrays) == 1, index
    array = arrays.pop()
    assert sorted(e["job_id"] for e in index.values()) == [f"{array}_{i}" for i in range(4)]
    assert f"job array {array} ({array}_0 .. {array}_3)" in out
    assert str(results / "sweep" / "slurm") in out  # where the logs go

    recs = records(results, "sweep")
    assert len(recs) == 4
    for run_id, record in recs.items():
        assert record["status"] == "ok", record.get("error")
        assert record["slurm_job_id"] == index[run_id]["job_id"]  # the array form, A_T
        assert record["slurm_restarts"] == 0 and record["resumed_from_step"] is None
        assert Path(index[run_id]["stderr"]).exists()

    # the study's slurm section and the --set override reached sbatch
    script = (results / "sweep" / "slurm" / array / f"{array}_submission.sh").read_text()
    for line in (f"#SBATCH --partition={slurm_cluster.partition}", "#SBATCH --time=30",
                 "#SBATCH --comment=moe-harness-test", "#SBATCH --cpus-per-task=1",
                 "#SBATCH --mem=1GB", "#SBATCH --array=0-3%4", "#SBATCH --signal=USR2@120",
                 "export MOE_HARNESS_SETUP=ran"):
        assert line in script.splitlines(), (line, script)

    status = cli("status", study, results=results)
    assert "sweep: 4 ok" in status, status
    for entry in index.values():
        assert entry["job_id"] in status
    assert "Nothing to do" in cli("run", study, "--executor", "slurm", results=results)
    print(f"4-run sweep: submit + wait {wall:.1f} s")


def wait_for_records(results: Path, study: str, n: int, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while len(records(results, study)) < n:
        if time.monotonic() > deadline:
            pytest.fail(f"{study}: not {n} records after {timeout_s} s\n{diagnose(results)}")
        time.sleep(0.5)


def load_jobs_at(results: Path, study: str) -> dict[str, dict]:
    return json.loads((results / study / "slurm" / "jobs.json").read_text())


@pytest.mark.slurm
@pytest.mark.slow
def test_requeued_jobs_resume_from_their_checkpoint(slurm_cluster, tmp_path):
    """Two runs, each requeued after its first checkpoint: one by an outside `scontrol
    requeue` (SIGTERM, then SIGKILL; submitit's checkpoint is not called), one by USR2, the
    signal SLURM sends before a time limit and, with preempt_send_user_signal, before a
    preemption (submitit checkpoints and requeues it from inside). Both must resume from the
    training checkpoint, not from zero, and `run --wait` must follow them, not resubmit."""
    steps = 800  # long enough to be caught mid-run: a first checkpoint at step 5
    results = tmp_path / "results"
    study = write_study(tmp_path, "preempt", grid={"seed": [0, 1]},
                        train={"steps": steps, "batch_size": 32, "checkpoint_every": 5},
                        slurm={"partition": slurm_cluster.partition})
    out = cli("run", study, "--executor", "slurm", results=results)  # returns at once
    assert "submitted 2 runs" in out, out
    index = load_jobs_at(results, "preempt")
    work = results / "preempt" / "work"
    how = dict(zip(sorted(index, key=lambda r: index[r]["job_id"]), ("scontrol", "usr2"),
                   strict=True))

    deadline = time.monotonic() + 180
    pending = dict(how)
    while pending:
        for run_id, kind in list(pending.items()):
            if not (work / run_id / "checkpoint.pt").exists():
                continue
            assert run_id not in records(results, "preempt"), "finished before the requeue"
            job = index[run_id]["job_id"]
            if kind == "scontrol":
                subprocess.run(["scontrol", "requeue", job], check=True, timeout=30)
            else:
                subprocess.run(["scancel", "--signal=USR2", job], check=True, timeout=30)
            del pending[run_id]
        if time.monotonic() > deadline:
            pytest.fail(f"no checkpoint of {list(pending)} after 180 s\n{diagnose(results)}")
        time.sleep(0.05)

    # the scheduler's view, as `status` shows it: requeued (pending again, restart count 1)
    store = Store(results, "preempt")
    seen: dict[str, set[str]] = {r: set() for r in how}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not all("requeued" in s for s in seen.values()):
        for run_id, view in live_view(store).items():
            seen[run_id].add(view["state"])
        time.sleep(0.2)
    assert all("requeued" in s for s in seen.values()), seen

    out = cli("run", study, "--executor", "slurm", "--wait", "--quiet", results=results)
    assert "2 runs already have a live job (not submitted again)" in out, out
    assert "2 runs: 2 ok" in out, out
    assert load_jobs_at(results, "preempt") == index  # nothing resubmitted

    for run_id, record in records(results, "preempt").items():
        assert record["status"] == "ok", record.get("error")
        assert record["steps_done"] == steps
        assert record["slurm_restarts"] == 1, (how[run_id], record["slurm_restarts"])
        assert record["resumed_from_step"] > 0, (how[run_id], record)  # not from zero
        assert record["resumed_from_step"] % 5 == 0
        log = Path(index[run_id]["stdout"]).read_text()
        if how[run_id] == "usr2":  # through submitit's checkpoint-and-requeue path
            assert "Caught signal SIGUSR2" in log and f"Requeued job {index[run_id]['job_id']}" \
                in log, log
            assert record["resumed_from_step"] < steps  # submitit exits at once: mid-run
        else:
            # SIGTERM is ignored (as submitit does) until SIGKILL, KillWait later: the first
            # attempt trains on meanwhile (here ~4 s), on a fast machine maybe to the end;
            # the second attempt then resumes from the last checkpoint it wrote
            assert "Caught signal SIGUSR2" not in log, log
            assert record["resumed_from_step"] <= steps


@pytest.mark.slurm
@pytest.mark.slow
def test_failures_are_recorded_and_only_they_are_retried(slurm_cluster, tmp_path):
    results = tmp_path / "results"
    slurm = {"partition": slurm_cluster.partition}
    broken = write_study(tmp_path, "broken", grid={"seed": [0]}, slurm=slurm,
                         data={"name": "imagefolder", "path": "/nonexistent", "image_size": 16})
    # the xformers attention backend needs CUDA: that run fails on this CPU node, the other not
    mixed = write_study(tmp_path, "mixed", grid={"attention": ["sdpa", "xformers"]},
                        slurm=slurm)
    cli("run", mixed, "--executor", "slurm", results=results)  # returns at once
    out = cli("run", broken, "--executor", "slurm", "--wait", "--quiet", results=results,
              ok_codes=(1,))  # failures: exit 1
    assert "1 runs: 0 ok, 1 failed" in out, out
    wait_for_records(results, "mixed", 2)

    [failed] = records(results, "broken").values()
    assert failed["status"] == "failed"
    assert "/nonexistent" in failed["error"], failed["error"]
    assert failed["traceback"]
    assert Path(failed["log_path"]).exists()
    assert failed["log_path"] == load_jobs_at(results, "broken")[failed["run_id"]]["stderr"]

    index = load_jobs_at(results, "mixed")
    by_attention = {r["attention"]: r for r in records(results, "mixed").values()}
    good, bad = by_attention["sdpa"], by_attention["xformers"]
    assert good["status"] == "ok" and bad["status"] == "failed"
    assert "xformers" in bad["error"] and Path(bad["log_path"]).exists()
    status = cli("status", mixed, results=results)
    assert re.search(r"mixed: 1 failed, 1 ok", status), status
    assert index[bad["run_id"]]["job_id"] in status and "xformers" in status, status

    good_file = results / "mixed" / "runs" / f"{good['run_id']}.json"
    good_bytes = good_file.read_bytes()
    out = cli("run", mixed, "--executor", "slurm", "--retry-failed", "--wait", "--quiet",
              results=results, ok_codes=(1,))  # it fails again: no CUDA here either
    assert "submitted 1 run as job" in out and "1 runs: 0 ok, 1 failed" in out, out
    after = load_jobs_at(results, "mixed")
    assert after[good["run_id"]] == index[good["run_id"]]  # the ok run: not resubmitted
    new_job = after[bad["run_id"]]["job_id"]
    assert new_job != index[bad["run_id"]]["job_id"]
    assert good_file.read_bytes() == good_bytes  # its record untouched
    retried = records(results, "mixed")[bad["run_id"]]
    assert retried["status"] == "failed" and retried["slurm_job_id"] == new_job
    assert live_view(Store(results, "mixed")) == {}


@pytest.mark.slurm
@pytest.mark.slow
def test_cancel_ends_the_live_jobs(slurm_cluster, tmp_path, monkeypatch):
    results = tmp_path / "results"
    study = write_study(tmp_path, "cancelme", grid={"seed": [0, 1]}, train={"steps": 100000},
                        slurm={"partition": slurm_cluster.partition})
    cli("run", study, "--executor", "slurm", results=results)
    store = Store(results, "cancelme")
    ids = sorted(e["job_id"] for e in load_jobs(store).values())
    assert set(live_view(store)) == set(load_jobs(store))  # pending or running
    out = cli("cancel", study, results=results)
    assert f"cancelled 2 jobs: {' '.join(ids)}" in out, out
    deadline = time.monotonic() + 60
    while live_view(store) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert live_view(store) == {}, diagnose(results)
    assert "no live jobs" in cli("cancel", study, results=results)
    assert records(results, "cancelme") == {}

    # a job that ends without a record (cancelled here; killed for memory, ...) becomes a
    # failed record naming its job and log when followed
    import runners.slurm
    from runners import Summary

    monkeypatch.setattr(runners.slurm, "VANISHED_AFTER_S", 0.5)
    runner = runners.slurm.SlurmRunner(load(study), store, show_progress=False, poll_s=0.2)
    summary = Summary()
    runner.follow(load(study).expand(), summary)
    assert summary.failed == 2
    for run_id, record in records(results, "cancelme").items():
        entry = load_jobs(store)[run_id]
        assert record["status"] == "failed" and record["slurm_job_id"] == entry["job_id"]
        assert "ended without a record" in record["error"]
        assert record["log_path"] == entry["stderr"]


@pytest.mark.slurm
@pytest.mark.slow
def test_sbatch_refusal_is_one_line(slurm_cluster, tmp_path):
    results = tmp_path / "results"
    study = write_study(tmp_path, "refused", grid={"seed": [0]},
                        slurm={"partition": slurm_cluster.partition})
    out = cli("run", study, "--executor", "slurm", "--set",
              "executor.slurm.partition=no-such-partition", results=results, ok_codes=(2,))
    assert "error: sbatch refused the jobs of refused: " in out, out
    assert "no-such-partition" in out.splitlines()[-1], out
    assert not (results / "refused" / "slurm" / "jobs.json").exists()


@pytest.mark.slurm
@pytest.mark.slow
def test_two_task_job_trains_one_run_with_ddp(slurm_cluster, tmp_path):
    """A run whose job has 2 tasks trains with DDP across them (gloo here: the test node has
    no GPUs, so the tasks come from --ntasks-per-node, where gpus_per_run: 2 would also ask
    for 2 GPUs): one record, from rank 0, with the single-process run's logged losses."""
    from harness.runtime.run import execute

    results = tmp_path / "results"
    train = {"steps": 8, "batch_size": 32, "eval_every": 4, "checkpoint_every": 4}
    study = write_study(tmp_path, "ddp", grid={"seed": [0]}, train=train,
                        fixed={"router": "soft", "num_experts": 4},
                        slurm={"partition": slurm_cluster.partition, "mem_gb": 2,
                               "extra_sbatch": {"ntasks_per_node": 2}})
    out = cli("run", study, "--executor", "slurm", "--wait", "--quiet", results=results)
    assert "1 runs: 1 ok" in out, out
    [record] = records(results, "ddp").values()
    assert record["status"] == "ok" and record["world_size"] == 2
    job = load_jobs_at(results, "ddp")[record["run_id"]]["job_id"]
    logs = results / "ddp" / "slurm" / job
    assert (logs / f"{job}_0_log.out").exists() and (logs / f"{job}_1_log.out").exists()

    [spec] = load(study).expand()
    single = execute(spec.model_copy(update={"study": "single"}), tmp_path / "single")
    assert record["train_loss"] == pytest.approx(single["train_loss"], rel=1e-5)
    for a, b in zip(record["history"], single["history"], strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)


@pytest.mark.slurm
@pytest.mark.slow
def test_two_task_job_with_experts_sharded_equals_one_process(slurm_cluster, tmp_path):
    """``train.layout: experts`` over a job's 2 tasks: each rank holds 2 of the 4 experts of
    every MoE layer and the slots travel by all-to-all. One record, with the layout it used
    and the all-to-all share, and the single-process run's losses and test scores."""
    from harness.runtime.run import execute

    results = tmp_path / "results"
    train = {"steps": 8, "batch_size": 32, "eval_every": 4, "checkpoint_every": 4,
             "layout": "experts"}
    study = write_study(tmp_path, "ep", grid={"seed": [0]}, train=train,
                        fixed={"router": "soft", "num_experts": 4},
                        slurm={"partition": slurm_cluster.partition, "mem_gb": 2,
                               "extra_sbatch": {"ntasks_per_node": 2}})
    out = cli("run", study, "--executor", "slurm", "--wait", "--quiet", results=results)
    assert "1 runs: 1 ok" in out, out
    [record] = records(results, "ep").values()
    assert record["status"] == "ok" and record["world_size"] == 2
    assert record["layout"] == "experts" and record["ranks"] == 2
    assert 0 < record["all_to_all_share"] < 1
    assert record["peak_memory_rank_mb"] > 0

    [spec] = load(study).expand()
    single = execute(spec.model_copy(update={"study": "single"}), tmp_path / "single")
    assert single["layout"] == "experts" and single["ranks"] == 1
    assert single["all_to_all_share"] is None
    for key in ("train_loss", "test_loss", "test_accuracy"):
        assert record[key] == pytest.approx(single[key], rel=1e-5), key
    for a, b in zip(record["history"], single["history"], strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
