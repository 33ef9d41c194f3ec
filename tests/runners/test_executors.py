"""Run bookkeeping: executor names and executors made in one place, the failure record, the
sweep summary, and dispatch refusing options it does not know."""

from __future__ import annotations

import pytest
import submitit
import yaml

from harness.errors import HarnessError
from harness.results.store import Store, check_record
from harness.runtime.run import failed_record
from harness.spec.study import load
from runners import Summary, dispatch
from runners.executors import EXECUTORS, check_executor, make_executor


@pytest.fixture
def study(tmp_path):
    path = tmp_path / "books.yaml"
    path.write_text(yaml.safe_dump({
        "name": "books", "fixed": {"model": "vit-w32d2h4m64/4"}, "grid": {"seed": [0, 1]},
        "data": {"name": "synthetic", "image_size": 16, "num_classes": 4, "train_size": 64,
                 "test_size": 32},
        "train": {"steps": 2, "batch_size": 8, "device": "cpu"}}))
    return load(path)


def test_executor_names_come_from_the_study_schema():
    assert EXECUTORS == ("local", "debug", "slurm")
    assert check_executor("slurm") == "slurm"
    with pytest.raises(HarnessError, match=r"^--executor 'lokal': allowed: local, debug, slurm$"):
        check_executor("lokal")


def test_executors_are_made_in_the_folder_the_store_names(study, tmp_path):
    store = Store(tmp_path / "results", study.name)
    debug = make_executor("debug", store.jobs_folder("debug"), study)
    assert isinstance(debug, submitit.DebugExecutor)
    local = make_executor("local", store.jobs_folder("local"), study, timeout_min=7)
    assert isinstance(local, submitit.LocalExecutor)
    assert local.parameters["timeout_min"] == 7
    assert local.folder == (store.dir / "submitit" / "%j").resolve()
    with pytest.raises(HarnessError, match="allowed: local, debug, slurm"):
        make_executor("ssh", store.jobs_folder("local"), study)


def test_dispatch_refuses_a_misspelt_option(study, tmp_path):
    with pytest.raises(TypeError, match="max_paralel"):
        dispatch(study, study.expand(), results_root=tmp_path, max_paralel=2)


def test_the_failure_record_is_a_valid_record_of_the_run(study):
    spec = study.expand()[0]
    record = failed_record(spec, "job 12 ended without a record", log_path="/tmp/log",
                           slurm_job_id="12_0")
    assert check_record(record, spec.run_id) is record
    assert record["status"] == "failed" and record["error"] == "job 12 ended without a record"
    assert record["seed"] == spec.seed and record["spec_json"] == spec.canonical_json()
    assert record["started_at"] is None and record["finished_at"]
    assert record["log_path"] == "/tmp/log" and record["slurm_job_id"] == "12_0"
    # fields never override what makes it a failure
    assert failed_record(spec, "boom", status="ok")["status"] == "failed"


def test_the_summary_counts_each_status():
    summary = Summary(submitted=4)
    for status in ("ok", "ok", "diverged", "failed", "pruned"):
        summary.count({"status": status})
    summary.count({})  # a record without a status counts as failed
    assert (summary.ok, summary.failed, summary.diverged) == (2, 2, 1)
    assert summary.statuses["pruned"] == 1
