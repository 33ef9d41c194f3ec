"""``moe-harness export``: Parquet/CSV tables read back by polars and duckdb; MLflow runs in a
real tracking server (``mlflow server`` on 127.0.0.1, started and stopped here), the embedded
SQLite store and the file store; live MLflow logging from a run."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import polars as pl
import pytest
from helpers import cli

from harness.results.store import Store
from harness.runtime.run import execute
from harness.spec.config import DataConfig
from harness.spec.study import load
from reports.export import export_mlflow, export_tables

STUDY = """\
name: exported
data: {name: synthetic, image_size: 8, num_classes: 4, train_size: 256, test_size: 64}
train: {steps: 20, batch_size: 16, eval_every: 5, checkpoint_every: 0, fewshot_shots: 2,
        threads: 1}
measure: {enabled: true, time: false, memory: false}
grid: {model: [vit-w16d2h2m32/4], router: [soft], num_experts: [4], slots_per_expert: [1]}
tracking: {tensorboard: false, mlflow: true}
"""


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A store with one real ok run (logged live to MLflow's default store under the results
    root) and one real failed run."""
    pytest.importorskip("mlflow", reason="the mlflow extra is not installed")
    folder = tmp_path_factory.mktemp("export")
    study_file = folder / "exported.yaml"
    study_file.write_text(STUDY)
    ok = load(study_file).expand()[0]
    broken = ok.model_copy(update={"data": DataConfig(name="imagefolder", path=str(folder / "no"),
                                                      image_size=8)})
    root = folder / "results"
    records = [execute(ok, root), execute(broken, root)]
    assert [r["status"] for r in records] == ["ok", "failed"], records[0].get("error")
    return {"file": study_file, "root": root, "store": Store(root, "exported"),
            "ok": records[0], "failed": records[1], "live": f"sqlite:///{root / 'mlflow.db'}"}


# --- tables ------------------------------------------------------------------------------------
@pytest.mark.slow
def test_parquet_and_csv_round_trip_through_polars_and_duckdb(exported, tmp_path):
    duckdb = pytest.importorskip("duckdb")
    ok = exported["ok"]
    for fmt in ("parquet", "csv"):
        out = tmp_path / f"t.{fmt}"
        aggregated = tmp_path / f"t-aggregated.{fmt}"
        if fmt == "parquet":  # the command once; the function behind it for CSV
            result = cli("export", exported["file"], "--to", fmt, "--out", out,
                         "--results", exported["root"])
            assert f"runs: {out}\naggregated: {aggregated}" in result.stdout
        else:
            assert export_tables(exported["store"], fmt, out) == (out, aggregated)
        read = pl.read_parquet if fmt == "parquet" else pl.read_csv
        runs = read(out)
        assert runs.height == 2 and set(runs["status"]) == {"ok", "failed"}
        row = runs.filter(pl.col("status") == "ok").row(0, named=True)
        assert row["run_id"] == ok["run_id"] and row["test_accuracy"] == pytest.approx(
            ok["test_accuracy"])
        assert runs.schema["params_total"] == pl.Int64
        assert runs.schema["test_accuracy"] == pl.Float64
        history = row["history"] if fmt == "parquet" else json.loads(row["history"])
        assert [h["step"] for h in history] == [5, 10, 15, 20]
        assert history[-1]["train_loss"] == pytest.approx(ok["history"][-1]["train_loss"])

        # duckdb reads the same files with SQL, the history unnested in parquet
        con = duckdb.connect()
        reader = "read_parquet" if fmt == "parquet" else "read_csv_auto"
        status = dict(con.execute(
            f"select status, count(*) from {reader}('{out}') group by status").fetchall())
        assert status == {"ok": 1, "failed": 1}
        agg = con.execute(f"select test_accuracy_mean, n_runs from {reader}('{aggregated}')"
                          ).fetchall()
        assert agg == [(pytest.approx(ok["test_accuracy"]), 1)]
        if fmt == "parquet":
            steps = con.execute(f"select h.step, h.train_loss from (select unnest(history) as h "
                                f"from read_parquet('{out}') where status = 'ok')").fetchall()
            assert [s for s, _ in steps] == [5, 10, 15, 20]
            assert steps[0][1] == pytest.approx(ok["history"][0]["train_loss"])
            started = con.execute(f"select typeof(started_at) from read_parquet('{out}') "
                                  "limit 1").fetchone()[0]
            assert started.startswith("TIMESTAMP")


def test_export_refuses_an_unknown_format(tmp_path):
    result = cli("export", tmp_path / "any.yaml", "--to", "xlsx", check=False)
    assert result.returncode == 2
    assert result.stderr.strip() == "error: --to 'xlsx': allowed: parquet, csv, mlflow"


def small_store(tmp_path) -> tuple[Path, Path]:
    """(study file, results root) of a store of 12 synthetic records; nothing trained."""
    from reports.synthetic import synthetic_records, write_store

    root = tmp_path / "results"
    write_store(synthetic_records(12, small=True, study="exported"), root / "exported" / "runs")
    study_file = tmp_path / "exported.yaml"
    study_file.write_text(STUDY)
    return study_file, root


def test_export_writes_into_existing_folders_only(tmp_path, capsys):
    from harness.cli import run_cli

    study_file, root = small_store(tmp_path)
    before = sorted(p for p in tmp_path.rglob("*"))
    for out, says in ((tmp_path / "missing" / "t.csv", "no such folder"),
                      (tmp_path, "is a folder")):
        assert run_cli(["export", str(study_file), "--to", "csv", "--out", str(out),
                        "--results", str(root)]) == 2
        [line] = capsys.readouterr().err.strip().splitlines()
        assert line.startswith(f"error: --out {out}: ") and says in line
    (tmp_path / "t-aggregated.csv").mkdir()  # the aggregated table's name taken by a folder
    assert run_cli(["export", str(study_file), "--to", "csv", "--out", str(tmp_path / "t.csv"),
                    "--results", str(root)]) == 2
    assert "t-aggregated.csv: is a folder" in capsys.readouterr().err
    assert sorted(p for p in tmp_path.rglob("*")) == [*before, tmp_path / "t-aggregated.csv"]


def test_a_full_disk_leaves_no_partial_export(tmp_path, monkeypatch):
    import errno

    study_file, root = small_store(tmp_path)

    def full(self, path, *args, **kwargs):
        Path(path).write_text("half a tab")
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    for fmt, method in (("csv", "write_csv"), ("parquet", "write_parquet")):
        monkeypatch.setattr(pl.DataFrame, method, full)
        with pytest.raises(OSError, match="No space left"):
            export_tables(Store(root, "exported"), fmt, tmp_path / f"t.{fmt}")
        monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exported.yaml", "results"]


# --- MLflow ------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """``mlflow server`` with a SQLite backend on 127.0.0.1 and a free port; stopped after."""
    pytest.importorskip("mlflow", reason="the mlflow extra is not installed")
    folder = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    log = open(folder / "server.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", "--backend-store-uri", f"sqlite:///{folder / 'server.db'}",
         "--default-artifact-root", (folder / "artifacts").as_uri()],
        stdout=log, stderr=subprocess.STDOUT, cwd=folder, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not start:\n{(folder / 'server.log').read_text()}")
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(server.pid, 15)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, 9)
            server.wait()
        log.close()


def _runs(client, study):
    exp = client.get_experiment_by_name(study)
    return {r.data.tags["run_id"]: r for r in client.search_runs([exp.experiment_id])}


def _check_exported(uri, exported):
    from harness.results.mlflow import mlflow_client

    client = mlflow_client(uri)
    runs = _runs(client, "exported")
    ok, failed = exported["ok"], exported["failed"]
    assert set(runs) == {ok["run_id"], failed["run_id"]}
    run = runs[ok["run_id"]]
    assert run.info.status == "FINISHED" and run.data.tags["status"] == "ok"
    assert run.data.params["router"] == "soft" and run.data.params["num_experts"] == "4"
    assert run.data.params["train.steps"] == "20" and run.data.params["data.name"] == "synthetic"
    assert run.data.tags["git_commit"] == str(ok["git_sha"])
    assert run.data.tags["device"] == ok["device"]
    assert run.data.metrics["test_accuracy"] == pytest.approx(ok["test_accuracy"])
    assert run.data.metrics["params_total"] == ok["params_total"]
    history = client.get_metric_history(run.info.run_id, "history/train_loss")
    assert [(m.step, m.value) for m in history] == [
        (h["step"], pytest.approx(h["train_loss"])) for h in ok["history"]]
    bad = runs[failed["run_id"]]
    assert bad.info.status == "FAILED" and bad.data.tags["status"] == "failed"
    assert "imagefolder" in bad.data.tags["error"] or "no" in bad.data.tags["error"]
    return client, runs


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["server", "file"])
def test_mlflow_export_is_complete_and_idempotent(backend, exported, tmp_path, request,
                                                  monkeypatch):
    if backend == "server":
        uri = request.getfixturevalue("mlflow_server")
    else:  # MLflow 3 keeps its ./mlruns file store behind an opt-in
        monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
        uri = (tmp_path / "mlruns").as_uri()
    store = exported["store"]
    assert export_mlflow(store, "exported", uri) == {"created": 2, "updated": 0, "unchanged": 0}
    client, runs = _check_exported(uri, exported)
    points = len(client.get_metric_history(runs[exported["ok"]["run_id"]].info.run_id,
                                           "history/train_loss"))
    assert export_mlflow(store, "exported", uri) == {"created": 0, "updated": 0, "unchanged": 2}
    again = _runs(client, "exported")
    assert {k: r.info.run_id for k, r in again.items()} == {
        k: r.info.run_id for k, r in runs.items()}
    assert len(client.get_metric_history(again[exported["ok"]["run_id"]].info.run_id,
                                         "history/train_loss")) == points


@pytest.mark.slow
def test_live_run_default_store_export_and_rerun(exported, tmp_path):
    """A run logged live to the default store (SQLite under the results root); the command's
    export joins it; a rerun's changed record replaces its MLflow run."""
    import shutil

    from harness.results.mlflow import mlflow_client

    client = mlflow_client(exported["live"])
    (run,) = _runs(client, "exported").values()  # the ok run; the failed one never trained
    assert run.data.tags["run_id"] == exported["ok"]["run_id"]
    assert run.info.status == "FINISHED" and run.data.params["router"] == "soft"
    loss = client.get_metric_history(run.info.run_id, "train/loss")
    assert [m.step for m in loss] == list(range(1, 21))

    result = cli("export", exported["file"], "--to", "mlflow", "--results", exported["root"])
    assert "1 created, 1 updated, 0 unchanged" in result.stdout
    _, runs = _check_exported(exported["live"], exported)
    assert runs[exported["ok"]["run_id"]].info.run_id == run.info.run_id

    copy = Store(tmp_path / "results", "exported")  # leave the shared store as it is
    shutil.copytree(exported["store"].runs_dir, copy.runs_dir)
    copy.write(dict(exported["ok"], test_accuracy=0.5))  # as if rerun
    assert export_mlflow(copy, "exported", exported["live"]) == {
        "created": 1, "updated": 0, "unchanged": 1}
    runs = _runs(client, "exported")
    assert len(runs) == 2 and runs[exported["ok"]["run_id"]].data.metrics["test_accuracy"] == 0.5
