"""Results store: atomic records under concurrent writers, stable schema, safe paths."""

import json
import multiprocessing as mp
import os
import time

import polars as pl
import pytest

from harness.errors import HarnessError
from harness.results.store import DONE, Store, results_root
from reports.export import runs_table
from reports.records import load_records


def statuses_in(store: Store, *allowed: str) -> set[str]:
    return {run_id for run_id, status in store.statuses().items() if status in allowed}


def _writer(root: str, worker: int, records: int) -> None:
    store = Store(root, "s")
    for i in range(records):
        # Every worker also rewrites one shared run id: the file must stay whole.
        store.write({"run_id": f"w{worker:02d}-{i:03d}", "status": "ok", "worker": worker,
                     "payload": "x" * 2000})
        store.write({"run_id": "shared", "status": "ok", "worker": worker, "payload": "y" * 5000})


def test_sixteen_concurrent_writers_lose_nothing(tmp_path):
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), w, 40)) for w in range(16)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    store = Store(tmp_path, "s")
    files = sorted(store.runs_dir.iterdir())
    assert len(files) == 16 * 40 + 1  # no temp files left behind, none lost
    for path in files:
        json.loads(path.read_text())  # every file is whole
    assert store.read("shared")["payload"] == "y" * 5000
    assert len(statuses_in(store, *DONE)) == 16 * 40 + 1


def test_load_has_a_stable_schema_when_keys_are_missing(tmp_path):
    store = Store(tmp_path, "s")
    store.write({"run_id": "a", "status": "ok", "test_accuracy": 0.9, "new_metric": 1.5})
    store.write({"run_id": "b", "status": "failed", "error": "boom"})  # an old, short record
    frame = runs_table(load_records(store.runs_dir))
    assert frame.schema["test_accuracy"] == pl.Float64
    assert frame.schema["num_experts"] == pl.Int64
    assert frame.filter(pl.col("run_id") == "b")["test_accuracy"].to_list() == [None]
    assert frame.filter(pl.col("run_id") == "a")["new_metric"].to_list() == [1.5]
    empty = runs_table(load_records(Store(tmp_path, "empty").runs_dir))
    assert empty.columns[:3] == ["study", "run_id", "status"]


def test_status_sets(tmp_path):
    store = Store(tmp_path, "s")
    for run_id, status in [("a", "ok"), ("b", "failed"), ("c", "diverged")]:
        store.write({"run_id": run_id, "status": status})
    assert statuses_in(store, *DONE) == {"a", "c"}
    assert statuses_in(store, "failed") == {"b"}
    with pytest.raises(ValueError, match="status must be one of"):
        store.write({"run_id": "d", "status": "maybe"})


def test_paths_stay_inside_the_root(tmp_path):
    with pytest.raises(HarnessError, match="outside the results root"):
        Store(tmp_path, "../elsewhere")


def test_results_root_from_env(tmp_path, monkeypatch):
    monkeypatch.setenv("MOE_HARNESS_RESULTS", str(tmp_path / "r"))
    assert results_root() == tmp_path / "r"
    assert results_root(tmp_path / "x") == tmp_path / "x"


def test_status_error_column_takes_the_first_line():
    from harness.views.runs import first_line

    assert first_line("boom\n  Traceback ...") == "boom"
    assert first_line(None) == first_line("") == first_line(" \n ") == ""  # blank errors too
    assert first_line("x" * 150) == "x" * 99 + "…"


def test_a_finished_record_is_replaced_only_by_a_newer_finished_one(tmp_path):
    store = Store(tmp_path, "s")
    ok = {"run_id": "r", "status": "ok", "test_accuracy": 0.9, "started_at": "2026-01-01T00:00"}
    store.write(ok)
    store.write({"run_id": "r", "status": "failed", "error": "killed", "started_at": None})
    store.write({"run_id": "r", "status": "failed", "error": "rerun killed",
                 "started_at": "2026-01-02T00:00"})
    store.write({**ok, "test_accuracy": 0.1, "started_at": "2025-12-31T00:00"})  # older attempt
    assert store.read("r") == ok  # still the result
    kept = [json.loads(p.read_text()) for p in store.history("r")]
    assert sorted(r.get("error") or "older" for r in kept) == ["killed", "older", "rerun killed"]
    newer = {**ok, "test_accuracy": 0.95, "started_at": "2026-01-03T00:00"}
    store.write(newer)
    assert store.read("r") == newer
    store.write({"run_id": "f", "status": "failed", "error": "a"})
    store.write({"run_id": "f", "status": "failed", "error": "b"})  # failed over failed: replaced
    assert store.read("f")["error"] == "b"


@pytest.mark.parametrize("content, says", [
    (b"\xff\xfe not utf-8", "not a JSON record (UnicodeDecodeError"),
    (b"[1, 2]", "expected a JSON object, found a JSON list"),
    (b'{"run_id": "bad", "status": "ok", "test_accuracy": "high"}',
     "test_accuracy: expected a number, got 'high'"),
    (b'{"run_id": "bad", "status": "maybe"}', "status: 'maybe'; allowed"),
    (b'{"run_id": "other", "status": "ok"}', "is not the file's name 'bad'"),
    (b'{"run_id": "bad", "status": "ok", "seed": true}', "seed: expected a number, got True"),
    (b'{"run_id": "bad", "status": "ok", "history": [0.5, 0.7]}', "history[0]: 0.5; allowed"),
    (b'{"run_id": "bad", "status": "ok", "history": [{"train_loss": 1}]}',
     "history[0].step: None; allowed: a list of objects, each with an integer step"),
    (b'{"run_id": "bad", "status": "ok", "history": [{"step": "3"}]}', "history[0].step: '3'"),
    (b'{"run_id": "bad", "status": "ok", "history": {"step": 3}}', "history: {'step': 3}"),
    (b'{"run_id": "bad", "status": "ok", "spec_json": "{not json"}',
     "spec_json: '{not json'; allowed: the run spec as the JSON text of an object"),
    (b'{"run_id": "bad", "status": "ok", "spec_json": {"model": "vit"}}', "spec_json: {'model'"),
    (b'{"run_id": "bad", "status": "ok", "spec_json": "[1]"}', "spec_json: '[1]'"),
])
def test_invalid_records_are_problems_not_crashes(tmp_path, content, says):
    store = Store(tmp_path, "s")
    store.write({"run_id": "good", "status": "ok"})
    (store.runs_dir / "bad.json").write_bytes(content)
    records, problems = store.scan()
    assert [r["run_id"] for r in records] == ["good"]
    assert [(p.name, says in why) for p, why in problems] == [("bad.json", True)], problems
    assert store.read("bad") is None and store.statuses() == {"good": "ok"}
    store.write({"run_id": "bad", "status": "ok"})  # a new record: the invalid file is kept aside
    assert store.read("bad")["status"] == "ok"
    assert [p.read_bytes() for p in store.history("bad")] == [content]


def test_the_store_names_every_path_of_the_study_folder(tmp_path):
    store = Store(tmp_path, "s")
    study = (tmp_path / "s").resolve()
    assert store.progress_path("r1") == study / "work" / "r1" / "progress.json"
    assert store.workdir("r1") == study / "work" / "r1" and (study / "work" / "r1").is_dir()
    assert store.slurm_jobs_file == study / "slurm" / "jobs.json"
    assert store.tune_dir == study / "tune"
    assert {kind: str(store.jobs_folder(kind).relative_to(study))
            for kind in ("local", "debug", "slurm", "tune")} == {
        "local": "submitit/%j", "debug": "submitit/%j", "slurm": "slurm/%j",
        "tune": "tune/submitit/%j"}
    assert not (study / "slurm").exists() and not (study / "tune").exists()  # named, not made


def test_record_params_refuses_a_bad_record_before_mlflow_is_called():
    """The MLflow export's parameters come from a checked record: a bad one is BadRecord
    (a problem row), never a half-made MLflow run."""
    from harness.results.mlflow import record_params
    from harness.results.store import BadRecord

    good = {"run_id": "r", "status": "ok", "spec_json": '{"router": "soft", "train": {"lr": 1}}',
            "history": [{"step": 5, "train_loss": 1.0}]}
    assert record_params(good) == {"router": "soft", "train.lr": "1"}
    for bad in ({**good, "spec_json": "{"}, {**good, "history": [1.0]},
                {**good, "history": [{"train_loss": 1.0}]}, {**good, "status": "done"}):
        with pytest.raises(BadRecord):
            record_params(bad)


def test_a_lock_can_be_waited_for(tmp_path):
    import threading

    from harness.results.store import Busy, hold_lock

    path = tmp_path / "x.lock"
    held, release = threading.Event(), threading.Event()

    def holder():
        with hold_lock(path, "x"):
            held.set()
            release.wait(5)

    thread = threading.Thread(target=holder)
    thread.start()
    held.wait(5)
    try:
        with pytest.raises(Busy, match="x is in use by pid .* for 0.2 s"):
            with hold_lock(path, "x", wait=0.2):
                pass
        threading.Timer(0.2, release.set).start()
        with hold_lock(path, "x", wait=5):
            pass
    finally:
        release.set()
        thread.join()


def test_the_tracking_lock_nests_in_one_process(tmp_path):
    from harness.results.mlflow import tracking_lock, tracking_lock_path

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert tracking_lock_path(uri, tmp_path / "elsewhere") == tmp_path / "mlflow.db.lock"
    assert tracking_lock_path("http://h:5000", tmp_path) == tmp_path / "mlflow.lock"
    with tracking_lock(uri, tmp_path, wait=0), tracking_lock(uri, tmp_path, wait=0):
        pass  # an export holding it may call prepare_tracking and mlflow_run_for inside


# --- the measuring gate: one run measures at a time, training runs hold still meanwhile ------
def _measure_and_log(root, log, pause):
    gate = Store(root, "gate").measure_gate()
    with gate.measuring():
        with open(log, "a") as f:
            f.write(f"enter {os.getpid()}\n")
        time.sleep(pause)
        with open(log, "a") as f:
            f.write(f"exit {os.getpid()}\n")


def _train_step_and_log(root, log):
    gate = Store(root, "gate").measure_gate()
    gate.wait({"step": 1})
    gate.close()
    with open(log, "a") as f:
        f.write("stepped\n")


def test_no_two_runs_measure_at_once(tmp_path):
    log = tmp_path / "log"
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_measure_and_log, args=(tmp_path, log, 0.2)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    lines = log.read_text().split()
    events = [(lines[i], lines[i + 1]) for i in range(0, len(lines), 2)]
    assert len(events) == 6
    for enter, leave in zip(events[::2], events[1::2], strict=True):  # never interleaved
        assert enter[0] == "enter" and leave == ("exit", enter[1])


def test_a_training_run_waits_while_another_measures(tmp_path):
    log = tmp_path / "log"
    gate = Store(tmp_path, "gate").measure_gate()
    with gate.measuring():
        child = mp.get_context("fork").Process(
            target=_train_step_and_log, args=(tmp_path, log))
        child.start()
        time.sleep(0.3)
        with open(log, "a") as f:
            f.write("measured\n")
    child.join(30)
    assert log.read_text().split() == ["measured", "stepped"]
    _train_step_and_log(tmp_path, log)  # nobody measuring: no wait
    assert log.read_text().split()[-1] == "stepped"
