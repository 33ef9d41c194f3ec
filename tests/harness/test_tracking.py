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
