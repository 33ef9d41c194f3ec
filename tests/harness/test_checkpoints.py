"""Checkpoints under faults: a truncated or corrupt checkpoint falls back to the previous one
(or a fresh start) and says so; a failed write (a full disk) leaves no temporary file."""

import errno

import pytest
import torch
from test_train import run, spec_for

from harness.runtime.checkpoint import CHECKPOINT, previous_checkpoint, save_checkpoint


def test_a_truncated_checkpoint_falls_back_to_the_previous_one(tmp_path):
    spec = spec_for("soft", checkpoint_every=5)  # checkpoints at steps 5, 10 and 12
    reference = run(spec, tmp_path / "unbroken")
    first = run(spec, tmp_path)
    ckpt = tmp_path / CHECKPOINT
    assert previous_checkpoint(ckpt).is_file()
    ckpt.write_bytes(ckpt.read_bytes()[:1000])  # truncated, as by a crash of the file system
    again = run(spec, tmp_path)
    assert again["resumed_from_step"] == 10  # the previous checkpoint, step 10 of 12
    assert "unreadable" in again["checkpoint_note"]
    assert "resumed from checkpoint.previous.pt" in again["checkpoint_note"]
    assert again["test_loss"] == pytest.approx(reference["test_loss"], rel=1e-6)
    assert first["checkpoint_note"] is None


def test_no_readable_checkpoint_starts_afresh(tmp_path):
    spec = spec_for("dense", checkpoint_every=5, fewshot_shots=0)
    reference = run(spec, tmp_path / "unbroken")
    run(spec, tmp_path)
    for path in (tmp_path / CHECKPOINT, previous_checkpoint(tmp_path / CHECKPOINT)):
        path.write_bytes(b"garbage")
    again = run(spec, tmp_path)
    assert again["resumed_from_step"] is None and again["steps_done"] == 12
    assert again["checkpoint_note"].endswith("started afresh")
    assert again["test_loss"] == pytest.approx(reference["test_loss"], rel=1e-6)


def test_a_failed_write_leaves_no_temporary_file(tmp_path, monkeypatch):
    path = tmp_path / CHECKPOINT
    save_checkpoint(path, {"state": {"step": 1}})

    def full_disk(obj, f):
        f.write(b"x" * 100_000)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(path, {"state": {"step": 2}})
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT]
    monkeypatch.undo()
    assert torch.load(path, weights_only=False)["state"]["step"] == 1


def test_corrupt_sharded_checkpoints_fall_back_as_single_files_do(tmp_path):
    """A sharded layout (FSDP, here on one process) keeps its weights in a folder of shards
    that the small checkpoint file names: shards that cannot be read make that checkpoint
    unreadable (the previous one is used, else a fresh start, said in checkpoint_note),
    never a crash of the run."""
    from harness.runtime.checkpoint import SHARDED_DIR

    spec = spec_for("soft", checkpoint_every=5, layout="fsdp", fewshot_shots=0)
    reference = run(spec, tmp_path / "unbroken")
    run(spec, tmp_path)
    shards = tmp_path / SHARDED_DIR
    (last,) = (shards / "step-000000012").glob("*.distcp")
    last.write_bytes(last.read_bytes()[:1000])  # truncated
    again = run(spec, tmp_path)
    assert again["resumed_from_step"] == 10
    assert "step-000000012: rank 0: EOFError" in again["checkpoint_note"]
    assert again["checkpoint_note"].endswith("resumed from checkpoint.previous.pt")
    assert again["test_loss"] == pytest.approx(reference["test_loss"], rel=1e-6)
    for folder in shards.iterdir():
        for part in folder.glob("*.distcp"):
            part.write_bytes(b"garbage")
    fresh = run(spec, tmp_path)
    assert fresh["resumed_from_step"] is None and fresh["steps_done"] == 12
    assert fresh["checkpoint_note"].endswith("started afresh")
    # the failed reads left neither weights nor optimizer moments behind
    assert fresh["test_loss"] == pytest.approx(reference["test_loss"], rel=1e-6)
