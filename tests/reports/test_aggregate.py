"""Aggregation over seeds, failed runs kept apart, and loading the store's JSON files."""

import json
import math

import polars as pl
import pytest

from reports.aggregate import aggregate, problems, spec_keys, status_counts
from reports.metrics import SEED_KEY, SPEC_KEYS
from reports.records import UNREADABLE, load_records, records_frame


def record(run_id, seed, *, router="soft", num_experts=8, acc=0.5, status="ok", **extra):
    out = {"study": "s", "run_id": run_id, "status": status, "error": None,
           "model": "vit-s/16", "router": router, "num_experts": num_experts,
           "slots_per_expert": 1 if router == "soft" else None, "k": None,
           "capacity_factor": None, "moe_layers": "last_half", "seed": seed, "lr": 1e-3,
           "steps": 100, "batch_size": 32, "data": "synthetic",
           "test_accuracy": acc, "gflops_per_image": 2.0, "device": "cpu"}
    out.update(extra)
    return out


def frame(records):
    return records_frame(records)


def test_mean_std_and_count_over_seeds():
    df = frame([record("a", 0, acc=0.5), record("b", 1, acc=0.7), record("c", 2, acc=0.6),
                record("d", 0, num_experts=16, acc=0.9)])
    agg = aggregate(df)
    assert agg.height == 2
    row = agg.filter(pl.col("num_experts") == 8).row(0, named=True)
    assert row["n_runs"] == 3
    assert row["seeds"] == [0, 1, 2]
    assert row["run_ids"] == ["a", "b", "c"]
    assert row["test_accuracy_mean"] == pytest.approx(0.6)
    assert row["test_accuracy_std"] == pytest.approx(0.1)  # sample std (ddof=1)
    assert row["test_accuracy_n"] == 3
    assert row["gflops_per_image_std"] == 0
    single = agg.filter(pl.col("num_experts") == 16).row(0, named=True)
    assert single["n_runs"] == 1 and single["test_accuracy_std"] is None


def test_seed_is_not_a_group_key_but_every_spec_key_is():
    df = frame([record("a", 0), record("b", 1, lr=3e-4)])
    assert SEED_KEY not in spec_keys(df)
    assert aggregate(df).height == 2  # different lr: different configurations


def test_null_keys_group_together():
    dense = dict(router="dense", num_experts=None)
    df = frame([record("a", 0, **dense, acc=0.4), record("b", 1, **dense, acc=0.6),
                record("c", 0, acc=0.7)])
    agg = aggregate(df)
    assert agg.height == 2
    row = agg.filter(pl.col("router") == "dense").row(0, named=True)
    assert row["num_experts"] is None and row["n_runs"] == 2
    assert row["test_accuracy_mean"] == pytest.approx(0.5)


def test_failed_and_diverged_runs_are_kept_apart_never_averaged():
    df = frame([
        record("a", 0, acc=0.5),
        record("b", 1, acc=0.7),
        record("c", 2, acc=None, status="failed", error="RuntimeError: boom"),
        record("d", 3, acc=0.01, status="diverged", diverged_step=42, error="loss is NaN"),
        record("e", 4, acc=0.99, status=None),
    ])
    agg = aggregate(df)
    assert agg["n_runs"].to_list() == [2]
    assert agg["test_accuracy_mean"][0] == pytest.approx(0.6)
    bad = problems(df)
    assert bad["run_id"].to_list() == ["d", "c", "e"]  # by status (nulls last), then run id
    assert bad["status"].to_list() == ["diverged", "failed", None]
    assert bad.filter(pl.col("run_id") == "d")["diverged_step"].item() == 42
    assert bad.columns[:5] == ["study", "run_id", "status", "error", "diverged_step"]
    assert status_counts(df) == {"diverged": 1, "failed": 1, "ok": 2, "none": 1}


def test_a_missing_metric_in_one_seed_counts_only_the_others():
    df = frame([record("a", 0, acc=0.5), record("b", 1, acc=None)])
    row = aggregate(df).row(0, named=True)
    assert row["n_runs"] == 2 and row["test_accuracy_n"] == 1
    assert row["test_accuracy_mean"] == pytest.approx(0.5)


def test_nan_metrics_are_ignored_like_nulls():
    df = frame([record("a", 0, acc=0.5), record("b", 1, acc=math.nan)])
    assert aggregate(df)["test_accuracy_mean"][0] == pytest.approx(0.5)


def test_unknown_columns_are_carried():
    df = frame([record("a", 0, my_metric_ms=2.0, note="x"),
                record("b", 1, my_metric_ms=4.0, note="y")])
    row = aggregate(df).row(0, named=True)
    assert row["my_metric_ms_mean"] == pytest.approx(3.0)  # a float: averaged
    assert row["note"] == "x, y"  # text: carried as its distinct values
    assert row["device"] == "cpu"


def test_per_run_text_is_not_carried_into_the_aggregate():
    df = frame([record("a", 0, spec_json='{"seed": 0}', traceback=None, slurm_job_id="12"),
                record("b", 1, spec_json='{"seed": 1}', traceback=None, slurm_job_id="13")])
    agg = aggregate(df)
    assert "spec_json" not in agg.columns and "traceback" not in agg.columns
    assert agg["slurm_job_id"][0] == "12, 13" and agg["n_runs"][0] == 2


def test_same_run_id_twice_keeps_the_latest():
    df = frame([record("a", 0, acc=0.1, finished_at="2026-01-02"),
                record("a", 0, acc=0.9, finished_at="2026-01-03")])
    row = aggregate(df).row(0, named=True)
    assert row["n_runs"] == 1 and row["test_accuracy_mean"] == pytest.approx(0.9)


def test_empty_and_all_failed_frames():
    assert aggregate(pl.DataFrame()).height == 0
    df = frame([record("a", 0, status="failed")])
    assert aggregate(df).height == 0
    assert problems(df).height == 1


def test_load_records_missing_keys_extra_keys_and_unreadable_files(tmp_path):
    runs = tmp_path / "study" / "runs"
    runs.mkdir(parents=True)
    new = record("aaaaaaaaaaaa", 0, extra_key="kept", history=[
        {"step": 0, "train_loss": 2.0, "test_accuracy": None},
        {"step": 10, "train_loss": 1.0, "test_accuracy": 0.5}])
    old = {"study": "s", "run_id": "bbbbbbbbbbbb", "status": "ok", "model": "vit-s/16",
           "router": "dense", "seed": 1, "test_accuracy": 1}  # old: few keys, an int accuracy
    (runs / "aaaaaaaaaaaa.json").write_text(json.dumps(new, indent=1))
    (runs / "bbbbbbbbbbbb.json").write_text(json.dumps(old))
    (runs / "cccccccccccc.json").write_text('{"study": "s", "run_id": "cc')  # torn file
    (runs / "dddddddddddd.json").write_text("[1, 2]")  # not an object
    (runs / ".eeeeeeeeeeee.json").write_text("{}")  # a store's temporary file: skipped
    (runs / "ffffffffffff.json.tmp").write_text("{}")

    for path in (runs, runs.parent):  # the runs folder, or the study folder holding it
        df = load_records(path)
        assert sorted(df["run_id"].to_list()) == ["aaaaaaaaaaaa", "bbbbbbbbbbbb",
                                                  "cccccccccccc", "dddddddddddd"]
    by_id = {r["run_id"]: r for r in df.iter_rows(named=True)}
    assert by_id["bbbbbbbbbbbb"]["extra_key"] is None
    assert by_id["bbbbbbbbbbbb"]["num_experts"] is None
    assert by_id["aaaaaaaaaaaa"]["extra_key"] == "kept"
    assert df.schema["test_accuracy"] == pl.Float64
    assert by_id["aaaaaaaaaaaa"]["history"][1]["test_accuracy"] == 0.5
    assert by_id["cccccccccccc"]["status"] == UNREADABLE
    assert "cccccccccccc.json" in by_id["cccccccccccc"]["error"]
    assert "JSON object" in by_id["dddddddddddd"]["error"]
    assert set(problems(df)["run_id"]) == {"cccccccccccc", "dddddddddddd"}
    assert aggregate(df)["n_runs"].sum() == 2


def test_load_records_of_a_missing_folder_is_empty(tmp_path):
    df = load_records(tmp_path / "nothing" / "runs")
    assert df.height == 0 and "run_id" in df.columns
    assert aggregate(df).height == 0 and problems(df).height == 0


def test_nested_values_that_polars_cannot_unify_become_json_text():
    df = records_frame([
        {"run_id": "a", "history": [{"step": 1, "train_loss": 0.5}]},
        {"run_id": "b", "history": "not a list"},
    ])
    assert df.schema["history"] == pl.String
    assert json.loads(df["history"][0]) == [{"step": 1, "train_loss": 0.5}]


def test_spec_keys_cover_the_study_axes():
    """A new axis in harness.spec.study must be a group key here, or seeds of different
    configurations would be averaged together."""
    study = pytest.importorskip("harness.spec.study")
    axes = {*study.AXES, *study.TRAIN_AXES} - {SEED_KEY}
    assert axes <= set(SPEC_KEYS), sorted(axes - set(SPEC_KEYS))
