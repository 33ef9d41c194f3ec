"""Results store: atomic records under concurrent writers, stable schema, safe paths."""

import json
import multiprocessing as mp

import polars as pl
import pytest

from harness.errors import HarnessError
from harness.store import Store, results_root


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
    assert len(store.done_ids()) == 16 * 40 + 1


def test_load_has_a_stable_schema_when_keys_are_missing(tmp_path):
    store = Store(tmp_path, "s")
    store.write({"run_id": "a", "status": "ok", "test_accuracy": 0.9, "new_metric": 1.5})
    store.write({"run_id": "b", "status": "failed", "error": "boom"})  # an old, short record
    frame = store.load()
    assert frame.schema["test_accuracy"] == pl.Float64
    assert frame.schema["num_experts"] == pl.Int64
    assert frame.filter(pl.col("run_id") == "b")["test_accuracy"].to_list() == [None]
    assert frame.filter(pl.col("run_id") == "a")["new_metric"].to_list() == [1.5]
    assert Store(tmp_path, "empty").load().columns[:3] == ["study", "run_id", "status"]


def test_status_sets(tmp_path):
    store = Store(tmp_path, "s")
    for run_id, status in [("a", "ok"), ("b", "failed"), ("c", "diverged")]:
        store.write({"run_id": run_id, "status": status})
    assert store.done_ids() == {"a", "c"}
    assert store.failed_ids() == {"b"}
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
    from runners.views import first_line

    assert first_line("boom\n  Traceback ...") == "boom"
    assert first_line(None) == first_line("") == first_line(" \n ") == ""  # blank errors too
    assert first_line("x" * 150) == "x" * 99 + "…"
