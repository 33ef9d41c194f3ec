"""``execute`` under faults: a rerun trains from scratch and keeps what it replaces until it
has a result; no exception type leaves a run without a record."""

from __future__ import annotations

import json

import pytest

from harness.results.store import MeasureGate, Store
from harness.runtime.checkpoint import CHECKPOINT
from harness.runtime.run import execute
from harness.spec.study import load

STUDY = """\
name: faults
data: {name: synthetic, image_size: 8, num_classes: 4, train_size: 128, test_size: 32}
train: {steps: 6, batch_size: 16, lr: 0.003, warmup_steps: 2, eval_every: 3,
        checkpoint_every: 3, fewshot_shots: 0, threads: 1}
measure: {enabled: false}
tracking: {tensorboard: false}
grid: {model: [vit-w16d2h2m32/4], router: [soft], num_experts: [4], slots_per_expert: [1]}
"""


@pytest.fixture
def spec(tmp_path):
    path = tmp_path / "faults.yaml"
    path.write_text(STUDY)
    return load(path).expand()[0]


class Boom(Exception):
    pass


def _raise_at(step: int, error: BaseException):
    def on_progress(info: dict) -> None:
        if info["step"] == step:
            raise error

    return on_progress


# --- reruns ------------------------------------------------------------------------------------
def test_a_rerun_trains_from_scratch_and_drops_the_old_folder_once_ok(spec, tmp_path):
    root = tmp_path / "results"
    store = Store(root, spec.study)
    first = execute(spec, root)
    assert first["status"] == "ok" and first["resumed_from_step"] is None
    assert (store.work_path(spec.run_id) / CHECKPOINT).is_file()  # written at the last step
    again = execute(spec, root)  # what a rerun did: resumed at its final step, no training
    assert again["resumed_from_step"] == 6

    rerun = execute(spec, root, fresh=True)
    assert rerun["status"] == "ok" and rerun["resumed_from_step"] is None
    assert rerun["steps_done"] == 6 and rerun["test_loss"] == pytest.approx(first["test_loss"])
    assert store.read(spec.run_id)["started_at"] == rerun["started_at"]
    assert not store.replaced_path(spec.run_id).exists()  # removed: the new run is ok
    replaced = [json.loads(p.read_text()) for p in store.history(spec.run_id)]
    def key(record):
        return json.dumps(record, sort_keys=True)

    assert sorted(replaced, key=key) == sorted([first, again], key=key)


def test_a_failed_rerun_puts_the_old_folder_back(spec, tmp_path):
    root = tmp_path / "results"
    store = Store(root, spec.study)
    first = execute(spec, root)
    work = store.work_path(spec.run_id)
    before = {p.name: p.read_bytes() for p in work.iterdir() if p.is_file()}
    failed = execute(spec, root, fresh=True, on_progress=_raise_at(2, Boom("out of luck")))
    assert failed["status"] == "failed" and "Boom: out of luck" in failed["error"]
    assert store.read(spec.run_id) == first  # the result stays current
    after = {p.name: p.read_bytes() for p in work.iterdir() if p.is_file()}
    assert {k: v for k, v in after.items() if k != "run.lock"} == {
        k: v for k, v in before.items() if k != "run.lock"}
    assert not store.replaced_path(spec.run_id).exists()


def test_an_interrupted_rerun_keeps_the_old_folder_aside(spec, tmp_path):
    """Stopped from outside (Ctrl-C, a SLURM requeue): recorded in the run's history, the
    run's record and the folder set aside untouched; the next rerun starts over."""
    root = tmp_path / "results"
    store = Store(root, spec.study)
    first = execute(spec, root)
    with pytest.raises(KeyboardInterrupt):
        execute(spec, root, fresh=True, on_progress=_raise_at(2, KeyboardInterrupt()))
    assert store.read(spec.run_id) == first
    (attempt,) = [json.loads(p.read_text()) for p in store.history(spec.run_id)]
    assert attempt["status"] == "failed" and attempt["interrupted"] is True
    assert attempt["error"].startswith("interrupted (KeyboardInterrupt")
    assert (store.replaced_path(spec.run_id) / CHECKPOINT).is_file()
    rerun = execute(spec, root, fresh=True)
    assert rerun["status"] == "ok" and rerun["resumed_from_step"] is None
    assert not store.replaced_path(spec.run_id).exists()


def test_set_aside_by_the_same_attempt_resumes(tmp_path):
    store = Store(tmp_path, "s")
    work = store.workdir("r")
    (work / "run.lock").write_text("")
    (work / CHECKPOINT).write_text("old")
    store.set_aside("r", "job-7")
    assert sorted(p.name for p in work.iterdir()) == ["run.lock"]
    (work / CHECKPOINT).write_text("rerun, step 3")
    store.set_aside("r", "job-7")  # the same SLURM job, requeued: goes on from its step 3
    assert (work / CHECKPOINT).read_text() == "rerun, step 3"
    store.set_aside("r", None)  # another rerun: starts over, the old folder still aside
    assert sorted(p.name for p in work.iterdir()) == ["run.lock"]
    store.restore_aside("r")
    assert (work / CHECKPOINT).read_text() == "old"
    assert not store.replaced_path("r").exists()


# --- every exception is a record -----------------------------------------------------------
class Fatal(BaseException):
    """Not an Exception (as torch.distributed.checkpoint's CheckpointException)."""


def test_a_base_exception_in_training_is_a_failed_record(spec, tmp_path):
    root = tmp_path / "results"
    record = execute(spec, root, on_progress=_raise_at(2, Fatal("shards unreadable")))
    assert record["status"] == "failed"
    assert record["error"] == "Fatal: shards unreadable" and "Fatal" in record["traceback"]
    assert Store(root, spec.study).read(spec.run_id) == record


@pytest.mark.parametrize("error", [KeyboardInterrupt(), SystemExit(3)])
def test_interrupts_are_recorded_and_raised_again(spec, tmp_path, error):
    root = tmp_path / "results"
    store = Store(root, spec.study)
    with pytest.raises(type(error)):
        execute(spec, root, on_progress=_raise_at(2, error))
    assert store.read(spec.run_id) is None  # still pending: the same command resumes it
    (attempt,) = [json.loads(p.read_text()) for p in store.history(spec.run_id)]
    assert attempt["status"] == "failed" and attempt["interrupted"] is True
    assert type(error).__name__ in attempt["error"]
    resumed = execute(spec, root)
    assert resumed["status"] == "ok" and resumed["resumed_from_step"] is None  # no ckpt at 2


def test_setting_aside_survives_being_killed_halfway(tmp_path):
    """Each step of setting aside, dropping and restoring can be killed between two of its
    file operations: the next rerun finishes it, and no file set aside is lost."""
    store = Store(tmp_path, "s")
    work = store.workdir("r")
    (work / "run.lock").write_text("")
    for name in ("a", "b", CHECKPOINT):
        (work / name).write_text(f"old {name}")
    # a move aside killed after one file: the next one goes on with the others
    moving = store.replaced_path("r").with_name(".r.moving")
    moving.mkdir(parents=True)
    (work / "a").rename(moving / "a")
    store.set_aside("r")
    assert sorted(p.name for p in store.replaced_path("r").iterdir()) == sorted(
        [".set-aside-by", CHECKPOINT, "a", "b"])
    assert not moving.exists()
    # a move back killed after one file: the next rerun first finishes it, then sets aside
    (work / CHECKPOINT).write_text("new, failed")
    (store.replaced_path("r") / ".set-aside-restoring").write_text("")
    (work / CHECKPOINT).unlink()
    (store.replaced_path("r") / "a").rename(work / "a")
    store.set_aside("r")
    assert sorted(p.name for p in work.iterdir()) == ["run.lock"]
    assert {p.name: p.read_text() for p in store.replaced_path("r").iterdir()
            if not p.name.startswith(".")} == {n: f"old {n}" for n in ("a", "b", CHECKPOINT)}
    # a removal killed halfway leaves a hidden folder, never a half-removed one in place;
    # the next rerun removes it
    store.drop_aside("r")
    assert not list(store.replaced_path("r").parent.iterdir())
    dropped = store.replaced_path("r").with_name(".r.dropped")
    dropped.mkdir()
    (dropped / "half").write_text("")
    store.set_aside("r")
    assert not dropped.exists() and store.replaced_path("r").is_dir()


def test_a_run_measures_under_the_study_measure_lock_and_trains_through_the_gate(
        spec, tmp_path, monkeypatch):
    import fcntl

    from harness.runtime import run

    root = tmp_path / "results"
    lock = Store(root, spec.study).dir / "measure.lock"
    seen = {}

    def held() -> bool:  # another open file cannot take the lock while the run holds it
        with open(lock, "a+") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(f, fcntl.LOCK_UN)
            return False

    def fake_measure(model, cfg, spec_, device):
        seen["measuring"] = held()
        return {}

    waits = []
    monkeypatch.setattr(run, "measure_cost", fake_measure)
    monkeypatch.setattr(MeasureGate, "wait", lambda self, info=None: waits.append(info))
    measured = spec.model_copy(update={"measure": spec.measure.model_copy(
        update={"enabled": True})})
    assert execute(measured, root)["status"] == "ok"
    assert seen == {"measuring": True} and not held()
    assert waits and all(w["step"] for w in waits)  # training passed the gate between steps
