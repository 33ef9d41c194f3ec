"""``moe-harness tune`` end to end with real (tiny) training: several local workers on a shared
journal file or a real PostgreSQL, resuming, pruning, and a worker killed mid-trial.

The storage-parametrized tests run on a journal file and, marked ``postgres``, on the private
PostgreSQL server of ``tests/fixtures/postgres.py`` (Optuna's RDB storage with heartbeats).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fixtures.studies import tiny_tune_study, write_study
from helpers import cli

from harness.results.store import DONE, Store
from harness.spec.study import load
from runners import tune as T

pytestmark = pytest.mark.slow

GRACE_S = 6


def study(steps: int = 6) -> dict:
    """The tiny tune study ``tw``: 256 training images, 6 steps of 16 (~1 s of training), a
    wider learning-rate range, heartbeats every second."""
    raw = tiny_tune_study(
        "tw", tune={"sampler": {"startup_trials": 4},
                    "heartbeat": {"interval_s": 1, "grace_s": GRACE_S}},
        data={"train_size": 256, "test_size": 128},
        train={"steps": steps, "batch_size": 16, "warmup_steps": 0, "checkpoint_every": 0,
               "fewshot_shots": 0, "eval_batch_size": 128, "threads": 1})
    raw["tune"]["space"]["lr"]["high"] = 0.01
    return raw


def write(tmp_path: Path, raw: dict | None = None, **tune) -> Path:
    raw = raw or study()
    raw["tune"].update(tune)
    return write_study(tmp_path, raw)


@pytest.fixture(params=["journal", pytest.param("postgres", marks=pytest.mark.postgres)])
def storage(request, tmp_path) -> str:
    if request.param == "journal":
        (tmp_path / "shared").mkdir()  # a storage given by the user goes into an existing folder
        return f"journal:{tmp_path / 'shared' / 'optuna.journal'}"
    return request.getfixturevalue("pg_url")


def optuna_study(path: Path, storage: str):
    study = load(path)
    return T.open_study(study, T.parse(study), storage, heartbeats=False)


def check_trials(ostudy, store: Store, finished: int) -> list:
    """``finished`` trials, none left running or queued, each with its record."""
    from optuna.trial import TrialState as S

    trials = ostudy.get_trials()
    c = T.counts(trials)
    assert c["finished"] == finished, c
    assert c["running"] == 0 and c["waiting"] == 0, c
    numbers = [t.number for t in trials]
    assert numbers == sorted(set(numbers))  # no duplicate trial
    surplus = [t for t in trials if t.user_attrs.get("outcome") == "surplus"]
    assert len(trials) == finished + c["stale"] + len(surplus)  # none lost
    for t in trials:
        if (t.state in (S.COMPLETE, S.PRUNED) or T.ran(t)) and "run_id" in t.user_attrs:
            record = store.read(t.user_attrs["run_id"])
            assert record is not None, f"trial {t.number} has no record"
            if "reused_record" not in t.user_attrs:
                assert record["tune_trial"] == t.number or record["status"] == "ok"
            if t.state == S.COMPLETE:
                assert record["status"] == "ok"
                assert t.values == [record["test_accuracy"], record["gflops_per_image"]]
    return trials


def test_two_workers_complete_the_trials_then_tune_continues(tmp_path, storage):
    path, root = write(tmp_path), tmp_path / "results"
    t0 = time.monotonic()
    out = cli("tune", path, "--trials", 12, "--workers", 2, "--storage", storage,
              "--results", root, "--quiet")
    elapsed = time.monotonic() - t0
    assert "12 of 12 trials finished" in out.stderr, out.stderr
    store = Store(root, "tw")
    ostudy = optuna_study(path, storage)
    first = check_trials(ostudy, store, 12)
    assert {t.user_attrs["worker"] for t in first} == {0, 1}  # both workers pulled trials
    assert {r["tune_trial"] for r in store.records()} <= {t.number for t in first}
    # a second call continues the same Optuna study
    out = cli("tune", path, "--trials", 14, "--storage", storage, "--results", root, "--quiet")
    assert "12 of 14 trials finished" in out.stderr
    again = check_trials(optuna_study(path, storage), store, 14)
    assert [(t.number, t.values) for t in again[:len(first)]] == \
        [(t.number, t.values) for t in first]
    # --show: the Pareto set and importances; the storage is remembered
    shown = cli("tune", path, "--show", "--results", root).stdout
    assert "Pareto set" in shown and "Parameter importances" in shown, shown
    assert "14 trials finished" in shown
    print(f"12 trials, 2 workers, {storage.split(':')[0]}: {elapsed:.0f} s")


def test_a_worker_killed_mid_trial_is_recovered(tmp_path, storage):
    from optuna.trial import TrialState as S

    path, root = write(tmp_path), tmp_path / "results"
    proc = subprocess.Popen(
        [sys.executable, "-m", "harness.cli", "tune", str(path), "--trials", "3", "--storage",
         storage, "--results", str(root), "--quiet", "--set", "train.steps=5000"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        victim = _running_trial(path, storage, proc)
        os.kill(victim.user_attrs["worker_pid"], signal.SIGKILL)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1 and "ended early" in err, err
    if not storage.startswith("journal"):
        time.sleep(GRACE_S + 1)  # heartbeats: stale once older than the grace period
    cli("tune", path, "--trials", 3, "--storage", storage, "--results", root, "--quiet")
    trials = check_trials(optuna_study(path, storage), Store(root, "tw"), 3)
    killed = trials[victim.number]
    assert killed.state == S.FAIL
    if storage.startswith("journal"):
        assert "is gone" in killed.user_attrs["stale"]  # our pid check
    else:
        assert "stale" not in killed.user_attrs  # Optuna's heartbeat failed it
    retried = [t for t in trials if t.system_attrs.get("failed_trial") == victim.number]
    assert len(retried) == 1 and retried[0].state == S.COMPLETE
    assert retried[0].params == victim.params


def _running_trial(path: Path, storage: str, proc, timeout: float = 300):
    """The first RUNNING trial whose worker is known (and has trained for a moment)."""
    from optuna.trial import TrialState as S

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        try:
            ostudy = optuna_study(path, storage)
        except Exception:  # noqa: BLE001 - not created yet
            time.sleep(0.5)
            continue
        for t in ostudy.get_trials(states=(S.RUNNING,)):
            if t.user_attrs.get("worker_pid") and t.user_attrs.get("run_id"):
                time.sleep(1.0)
                return t
        time.sleep(0.5)
    raise AssertionError("no trial started")


def test_pruning_stops_bad_trials_and_records_them(tmp_path):
    """One objective; learning rates from 1e-6 (hopeless in 30 steps) to 1e-2; a median
    pruner judging the smoothed training loss: some trials are pruned, recorded as such."""
    path = write(tmp_path, study(steps=30), space={"lr": {"low": 1e-6, "high": 1e-2,
                                                              "log": True}},
                 objectives=[{"metric": "test_accuracy", "direction": "maximize"}],
                 pruner={"name": "median", "startup_trials": 2, "warmup_steps": 4})
    root = tmp_path / "results"
    out = cli("tune", path, "--trials", 8, "--executor", "debug", "--results", root, "--quiet")
    assert "8 of 8 trials finished" in out.stderr
    from optuna.trial import TrialState as S

    loaded = T.load_tuning(load(path), root)
    assert loaded is not None and loaded[2].startswith("sqlite:///")  # the default storage
    trials = loaded[1].get_trials()
    pruned = [t for t in trials if t.state == S.PRUNED]
    assert pruned, [(t.number, t.state.name, t.params) for t in trials]
    store = Store(root, "tw")
    for t in pruned:
        record = store.read(t.user_attrs["run_id"])
        assert record["status"] == "pruned" and record["tune_trial"] == t.number
        assert 4 <= record["pruned_step"] < 30 and t.intermediate_values
        assert record["params_total"] > 0  # what was measured before training is kept
    done = {run_id for run_id, status in store.statuses().items() if status in DONE}
    assert done >= {t.user_attrs["run_id"] for t in pruned}  # counted as done
    # the report's tuning section
    cli("report", path, "--results", root)
    html = (root / "tw" / "report.html").read_text()
    assert 'id="tuning"' in html and 'id="fig-tune-history-test_accuracy"' in html
    assert "Study file" in html and "name: tw" in html  # kept in the store by `tune`
    assert (root / "tw" / "tune" / "summary.json").is_file()
