"""`moe-harness doctor`: one line per check, the GPU's absence reported as such, exit 1 only
when something a run needs fails."""

import json
import os
import stat

import pytest
import torch
from typer.testing import CliRunner

from harness.cli import app
from harness.runtime import doctor

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")


@pytest.fixture(scope="module")
def checks(tmp_path_factory):
    return doctor.run_checks(tmp_path_factory.mktemp("results"))


def by_name(checks):
    return {c.name: c for c in checks}


def test_every_check_reports_once_in_order(checks):
    assert [c.name for c in checks] == ["python", "torch", "cpu", "gpu", "xformers", "fvcore",
                                        "results", "slurm"]
    assert all(c.status in ("ok", "warn", "fail") for c in checks)
    found = by_name(checks)
    assert found["python"].status == found["torch"].status == found["fvcore"].status == "ok"
    assert torch.__version__ in found["torch"].detail
    assert found["results"].status == "ok" and "writable" in found["results"].detail


@no_cuda
def test_missing_gpu_warns_and_fails_only_when_required(checks, tmp_path):
    gpu = by_name(checks)["gpu"]
    assert gpu.status == "warn" and "no CUDA device" in gpu.detail and gpu.fix
    assert "a local run of train.gpus: N starts N gloo ranks on the CPU" in gpu.detail
    required = doctor.check_gpus(required=True)
    assert required.status == "fail" and "no CUDA device" in required.detail


@no_cuda
def test_cli_exit_status_and_json(tmp_path):
    runner = CliRunner()
    plain = runner.invoke(app, ["doctor", "--results", str(tmp_path)])
    assert plain.exit_code == 0, plain.output
    lines = plain.output.strip().splitlines()
    assert lines[-1].startswith("ready")
    assert any(line.startswith("warn  gpu") and "no CUDA device" in line for line in lines)
    strict = runner.invoke(app, ["doctor", "--results", str(tmp_path), "--gpu", "--json"])
    assert strict.exit_code == 1
    rows = json.loads(strict.output)
    assert {r["name"]: r["status"] for r in rows}["gpu"] == "fail"


def test_unwritable_results_root_fails_with_a_fix(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    check = doctor.check_results(blocker / "results")
    assert check.status == "fail" and "not writable" in check.detail
    assert "--results" in check.fix


def test_file_system_of_a_path(tmp_path):
    fs, mount = doctor.file_system(tmp_path)
    assert fs != "unknown" and str(tmp_path).startswith(mount)


def test_sinfo_partitions_and_gpus_per_node(tmp_path, monkeypatch):
    sinfo = tmp_path / "sinfo"
    sinfo.write_text("#!/bin/sh\nprintf 'gpu*|up|4|gpu:h100:8(S:0-1)\\ncpu|up|10|(null)\\n"
                     "a100|down|2|gpu:a100:4,shard:8\\n'\n")
    sinfo.chmod(sinfo.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    check = doctor.check_slurm(required=True)
    assert check.status == "ok"
    assert check.detail == ("partitions: gpu (default) up, 4 nodes, 8 GPUs per node (h100); "
                            "cpu up, 10 nodes, no GPUs; a100 down, 2 nodes, 4 GPUs per node "
                            "(a100)")
    sinfo.write_text("#!/bin/sh\necho 'slurm_load_partitions: Unable to contact' >&2\nexit 1\n")
    down = doctor.check_slurm(required=True)
    assert down.status == "fail" and "did not answer" in down.detail


def test_no_slurm_client_warns_unless_required(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sinfo anywhere
    assert doctor.check_slurm(required=False).status == "warn"
    assert doctor.check_slurm(required=True).status == "fail"


def test_storage_urls(tmp_path):
    assert doctor.check_storage(f"sqlite:///{tmp_path}/optuna.db").status == "ok"
    assert doctor.check_storage(f"journal:{tmp_path}/optuna.journal").status == "ok"
    assert not list(tmp_path.iterdir())  # nothing created
    refused = doctor.check_storage("postgresql+psycopg2://user:secret@127.0.0.1:1/db")
    assert refused.status == "fail" and "cannot connect" in refused.detail
    assert "secret" not in refused.detail
    assert doctor.check_storage("nonsense").status == "fail"


def test_a_crashing_check_is_a_failure_not_a_traceback(monkeypatch, tmp_path):
    def broken():
        raise RuntimeError("boom")

    monkeypatch.setattr(doctor, "check_fvcore", broken)
    found = by_name(doctor.run_checks(tmp_path))
    assert found["fvcore"].status == "fail" and "RuntimeError: boom" in found["fvcore"].detail


def test_the_gpus_of_a_local_multi_rank_run(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert doctor.local_ranks(2) == ("a local run of train.gpus: N (N <= 2) uses N of "
                                     "cuda:0..1, one rank each (CUDA_VISIBLE_DEVICES=2,3)")

def test_doctor_and_tune_check_a_storage_the_same_way(tmp_path, capsys):
    """What ``tune`` refuses, ``doctor --storage`` reports failed, with the same words; what
    doctor finds writable, tune takes."""
    from harness.cli import run_cli

    study = "studies/tune_slots.yaml"
    results = tmp_path / "results"
    for url, says in [(f"sqlite:///{tmp_path}/missing/optuna.db", "no such folder"),
                      (f"journal:{tmp_path}/missing/optuna.journal", "no such folder"),
                      (f"{tmp_path}/missing/optuna.journal", "no such folder"),
                      (f"sqlite:///{tmp_path}", "is a folder"),
                      ("nonsense", "expected an SQLAlchemy URL")]:
        check = doctor.check_storage(url)
        assert check.status == "fail" and says in check.detail, (url, check)
        assert run_cli(["tune", study, "--storage", url, "--results", str(results),
                        "--show"]) == 2
        [line] = capsys.readouterr().err.strip().splitlines()
        assert line == f"error: {check.detail}"
        assert run_cli(["tune", study, "--set", f"tune.storage={url}", "--results",
                        str(results), "--trials", "1"]) == 2
        [line] = capsys.readouterr().err.strip().splitlines()
        assert line.startswith(f"error: {study}: tune.storage") and says in line
    assert not (tmp_path / "missing").exists()
    url = f"sqlite:///{tmp_path}/optuna.db"
    assert doctor.check_storage(url).status == "ok"
    assert run_cli(["tune", study, "--storage", url, "--results", str(results), "--show"]) == 2
    assert "no tuning storage yet" in capsys.readouterr().err  # taken: nothing tuned there yet
