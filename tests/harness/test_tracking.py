"""Live trackers: TensorBoard event files written while a run trains, read back with
TensorBoard's own event reader; the study switch that turns them off."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.results.store import Store
from harness.runtime.run import execute
from harness.spec.study import load

pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")

STUDY = """\
name: tracked
data: {name: synthetic, image_size: 8, num_classes: 4, train_size: 256, test_size: 64}
train: {steps: 24, batch_size: 16, lr: 0.003, warmup_steps: 4, eval_every: 8,
        checkpoint_every: 0, fewshot_shots: 2, threads: 1}
measure: {enabled: false}
grid: {model: [vit-w16d2h2m32/4], router: [soft], num_experts: [4], slots_per_expert: [1]}
"""


def scalars(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(logdir))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)]
            for tag in events.Tags()["scalars"]}


@pytest.fixture
def study_file(tmp_path):
    path = tmp_path / "tracked.yaml"
    path.write_text(STUDY)
    return path


def test_event_files_hold_the_loss_curve_with_its_steps(study_file, tmp_path):
    spec = load(study_file).expand()[0]
    record = execute(spec, tmp_path / "results")
    assert record["status"] == "ok", record.get("error")
    workdir = Store(tmp_path / "results", "tracked").workdir(spec.run_id)
    assert list(workdir.glob("events.out.tfevents.*"))
    curves = scalars(workdir)

    # every step is a point (24 steps: progress every step), and the history's train loss is
    # the mean of the logged points in its window
    loss = curves["train/loss"]
    assert [step for step, _ in loss] == list(range(1, 25))
    for entry in record["history"]:
        window = [v for s, v in loss if entry["step"] - 8 < s <= entry["step"]]
        assert sum(window) / len(window) == pytest.approx(entry["train_loss"], rel=1e-5)
    assert curves["eval/test_accuracy"] == [
        (h["step"], pytest.approx(h["test_accuracy"])) for h in record["history"]]
    # warm-up: the learning rate of step 1 (logged before it) is a quarter of the peak
    lr = dict(curves["train/lr"])
    assert lr[0] == pytest.approx(0.003 / 4) and lr[4] == pytest.approx(0.003, rel=1e-3)
    assert all(v > 0 for _, v in curves["train/images_per_s"])
    assert {"router/slot_entropy", "router/combine_entropy"} <= set(curves)
    assert dict(curves["final/test_accuracy"]) == {24: pytest.approx(record["test_accuracy"])}
    assert dict(curves["final/fewshot_accuracy"]) == {
        24: pytest.approx(record["fewshot_accuracy"])}


def test_one_switch_turns_event_files_off_without_changing_the_run(study_file, tmp_path):
    on = load(study_file).expand()[0]
    off = load(study_file, ["tracking.tensorboard=false"]).expand()[0]
    assert off.run_id == on.run_id and not off.tracking.tensorboard
    execute(off, tmp_path / "results")
    workdir = Store(tmp_path / "results", "tracked").workdir(off.run_id)
    assert (workdir / "progress.json").is_file()
    assert not list(workdir.glob("events.out.tfevents.*"))


def test_a_resumed_run_replaces_the_points_after_its_checkpoint(study_file, tmp_path):
    """A requeued attempt resumes at step 20: its points from 20 on replace the first
    attempt's, and each point is on disk as soon as ``log`` returns."""
    from harness.runtime.tracking import TensorBoardLog

    spec = load(study_file).expand()[0]
    first = TensorBoardLog(tmp_path, spec)
    for step in range(0, 40, 5):
        first.log(step, {"train/loss": 1.0})
    assert [s for s, _ in scalars(tmp_path)["train/loss"]] == list(range(0, 40, 5))
    first.close()
    second = TensorBoardLog(tmp_path, spec)
    for step in range(20, 50, 5):
        second.log(step, {"train/loss": 2.0})
    second.close()
    assert scalars(tmp_path)["train/loss"] == [
        *((s, 1.0) for s in range(0, 20, 5)), *((s, 2.0) for s in range(20, 50, 5))]


# --- trackers that fail ----------------------------------------------------------------------
MLFLOW_STUDY = STUDY.replace("steps: 24,", "steps: 8,").replace("eval_every: 8", "eval_every: 4")


def test_an_unreachable_tracker_costs_seconds_and_the_run_is_ok(tmp_path, capfd):
    """A tracking server out of reach: the run ends ok within seconds, says why in the record
    (and a warning) and keeps the points for a later export."""
    pytest.importorskip("mlflow", reason="the mlflow extra is not installed")
    import time

    from helpers import free_ports

    from harness.results.mlflow import PENDING, pending_metrics

    (port,) = free_ports(1)  # nothing listens there
    path = tmp_path / "t.yaml"
    path.write_text(MLFLOW_STUDY + f"tracking: {{tensorboard: false, mlflow: true, "
                                   f"mlflow_uri: 'http://127.0.0.1:{port}'}}\n")
    spec = load(path).expand()[0]
    tic = time.monotonic()
    record = execute(spec, tmp_path / "results")
    assert time.monotonic() - tic < 60  # MLflow's own retries took about 4 minutes
    assert record["status"] == "ok", record.get("error")
    assert f"http://127.0.0.1:{port}" in record["tracking_error"]
    assert "tracking off" in capfd.readouterr().err
    workdir = Store(tmp_path / "results", "tracked").work_path(spec.run_id)
    kept = pending_metrics(workdir)
    assert (workdir / PENDING).is_file()
    assert {"train/loss", "eval/test_accuracy", "final/test_accuracy"} <= {k for k, *_ in kept}
    assert sorted({s for k, _, s, _ in kept if k == "train/loss"}) == list(range(1, 9))


def test_a_failing_event_file_turns_tensorboard_off_not_the_run(study_file, tmp_path,
                                                                 monkeypatch):
    from harness.runtime import tracking

    def full_disk(self, step, values):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tracking.TensorBoardLog, "log", full_disk)
    record = execute(load(study_file).expand()[0], tmp_path / "results")
    assert record["status"] == "ok", record.get("error")
    assert record["tracking_error"].startswith("tensorboard: OSError")


def _live_and_export(args: tuple) -> tuple[dict, list[str]]:
    """One process: a live tracker of its own run (one point), then find-or-create the MLflow
    runs of shared run ids, as an export does."""
    from harness.results.mlflow import mlflow_client, mlflow_run_for, prepare_tracking
    from harness.runtime.tracking import open_log

    spec, root = args
    log, close = open_log(spec, root / "work" / spec.run_id, root)
    log(1, {"train/loss": 1.0})
    fields = close("ok")
    uri = spec.tracking.mlflow_uri or f"sqlite:///{root / 'mlflow.db'}"
    experiment = prepare_tracking(uri, root, spec.study)
    client = mlflow_client(uri)
    made = [mlflow_run_for(client, experiment, f"shared-{i}", uri=uri, results_root=root,
                           create=lambda i=i: client.create_run(
                               experiment, tags={"run_id": f"shared-{i}"})).info.run_id
            for i in range(4)]
    return fields, made


@pytest.mark.slow
def test_parallel_runs_share_one_default_store_without_duplicates(tmp_path):
    """Three processes start at once on a fresh default store (SQLite, which two migrations
    at once leave half-migrated): the first creates it, the others wait; each live run logs;
    finding or creating the MLflow run of one harness run makes exactly one."""
    pytest.importorskip("mlflow", reason="the mlflow extra is not installed")
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from harness.results.mlflow import mlflow_client, mlflow_runs, mlflow_uri

    path = tmp_path / "t.yaml"
    path.write_text(STUDY.replace("grid: {", "grid: {seed: [0, 1, 2], ")
                    + "tracking: {tensorboard: false, mlflow: true}\n")
    specs = load(path).expand()
    root = tmp_path / "results"
    with ProcessPoolExecutor(3, mp_context=multiprocessing.get_context("spawn")) as pool:
        results = list(pool.map(_live_and_export, [(spec, root) for spec in specs]))
    assert [fields for fields, _ in results] == [{}, {}, {}]
    assert len({tuple(made) for _, made in results}) == 1  # the same 4 runs for everyone
    client = mlflow_client(mlflow_uri(None, root))
    runs = mlflow_runs(client, client.get_experiment_by_name("tracked").experiment_id)
    assert set(runs) == {s.run_id for s in specs} | {f"shared-{i}" for i in range(4)}
    assert len(client.search_runs([client.get_experiment_by_name("tracked").experiment_id])
               ) == 7


def test_a_sweep_prepares_the_store_once_or_warns(tmp_path):
    pytest.importorskip("mlflow", reason="the mlflow extra is not installed")
    from helpers import free_ports

    from harness.results.mlflow import mlflow_client, mlflow_uri, prepare_sweep_tracking
    from harness.spec.config import TrackingConfig

    assert prepare_sweep_tracking(TrackingConfig(), tmp_path, "s") is None  # off: nothing
    assert not (tmp_path / "mlflow.db").exists()
    assert prepare_sweep_tracking(TrackingConfig(mlflow=True), tmp_path, "s") is None
    assert mlflow_client(mlflow_uri(None, tmp_path)).get_experiment_by_name("s") is not None
    (port,) = free_ports(1)
    down = TrackingConfig(mlflow=True, mlflow_uri=f"http://127.0.0.1:{port}")
    warning = prepare_sweep_tracking(down, tmp_path, "s")
    assert warning.startswith(f"warning: MLflow http://127.0.0.1:{port} not ready (")
    assert "\n" not in warning


def test_an_embedded_store_keeps_every_artifact_under_the_results_root(tmp_path, monkeypatch):
    """Created by a live run or by an export, from whatever folder: no experiment of the
    SQLite store (MLflow's Default one included) has its artifacts in the working folder."""
    pytest.importorskip("mlflow", reason="the mlflow extra is not installed")
    from harness.results.mlflow import mlflow_client, mlflow_uri, prepare_tracking
    from harness.runtime.tracking import open_log

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    path = tmp_path / "t.yaml"
    path.write_text(STUDY + "tracking: {tensorboard: false, mlflow: true}\n")
    [spec] = load(path).expand()
    live, exported = tmp_path / "live", tmp_path / "exported"
    for root in (live, exported):
        root.mkdir()
    log, close = open_log(spec, live / "work", live)  # a live run creates the store
    log(1, {"train/loss": 1.0})
    assert close("ok") == {}
    prepare_tracking(mlflow_uri(None, exported), exported, "tracked")  # as export does
    for root in (live, exported):
        client = mlflow_client(mlflow_uri(None, root))
        locations = {e.name: e.artifact_location for e in client.search_experiments()}
        assert set(locations) == {"Default", "tracked"}
        assert all(where.startswith((root / "mlflow-artifacts").resolve().as_uri())
                   for where in locations.values()), locations
    assert not list(elsewhere.iterdir())
