"""Single-file training checkpoints: written atomically, the one before kept, read back with a
fallback to it; every RNG state a resume needs. Sharded layouts write their weights through
``harness.runtime.parallel.checkpoint`` into ``SHARDED_DIR`` and name the folder here.
"""

from __future__ import annotations

import errno
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

CHECKPOINT = "checkpoint.pt"


SHARDED_DIR = "checkpoint-shards"  # sharded layouts: one folder per checkpoint, all ranks'


def previous_checkpoint(path: Path) -> Path:
    return path.with_name(f"{path.stem}.previous{path.suffix}")


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically (temporary file, fsync, os.replace); the checkpoint
    it replaces is kept as ``previous_checkpoint(path)``. A failed write (a full disk) leaves no
    temporary file behind and the earlier checkpoints as they were."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        if path.exists():
            os.replace(path, previous_checkpoint(path))
        os.replace(tmp, path)
    except BaseException as err:
        full = shutil.disk_usage(path.parent).free < 1 << 20  # before the space is freed
        tmp.unlink(missing_ok=True)
        if full and isinstance(err, Exception):
            # torch's writer reports a full disk as "unexpected pos": say what happened
            raise OSError(errno.ENOSPC, f"No space left on device writing {path}") from err
        raise


def load_checkpoint(path: Path, device: torch.device, restore=None
                    ) -> tuple[dict[str, Any] | None, str | None]:
    """The newest readable checkpoint (``path``, else the previous one), and a note saying
    what was wrong with any that could not be read (None when all was well). Neither
    readable: (None, note), and the run starts afresh.

    ``restore(saved)`` (sharded layouts: read the shards the file names into the model) is
    part of reading a candidate: when it raises (anything but a ``HarnessError``, a
    ``KeyboardInterrupt`` or ``SystemExit``, which go on), the candidate counts as
    unreadable; it must then leave the model and optimizer as they were."""
    from harness.errors import HarnessError

    for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a process killed mid-write
        stale.unlink(missing_ok=True)
    problems = []
    for candidate in (path, previous_checkpoint(path)):
        if not candidate.is_file():
            continue
        try:
            # Our own file (it holds numpy and python RNG states, which weights_only refuses).
            saved = torch.load(candidate, map_location=device, weights_only=False)
            if not isinstance(saved, dict) or "state" not in saved:
                raise ValueError("not a training checkpoint")
            if restore is not None:
                restore(saved)
        except (HarnessError, KeyboardInterrupt, SystemExit):
            raise
        except BaseException as err:  # noqa: BLE001 - truncated or corrupt: fall back
            problems.append(f"{candidate} unreadable ({first_line(err)})")
            continue
        if problems:
            return saved, f"{'; '.join(problems)}: resumed from {candidate.name}"
        return saved, None
    return None, f"{'; '.join(problems)}: started afresh" if problems else None


def first_line(err: BaseException) -> str:
    """``Type: first line of the message``; for torch.distributed.checkpoint's
    CheckpointException, that of the first rank's error it wraps."""
    failures = getattr(err, "failures", None)
    if isinstance(failures, dict) and failures:
        rank, wrapped = sorted(failures.items())[0]
        inner = wrapped[0] if isinstance(wrapped, tuple) and wrapped else wrapped
        if isinstance(inner, BaseException):
            return f"rank {rank}: {first_line(inner)}"
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__


def rng_state(gen: torch.Generator) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
             "python": random.getstate(), "sampler": gen.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any], gen: torch.Generator) -> None:
    torch.set_rng_state(state["torch"].cpu())
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    gen.set_state(state["sampler"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def remove_unreferenced_shards(ckpt_path: Path) -> None:
    """Delete the sharded checkpoint folders that neither the checkpoint nor the previous one
    names (older ones, or one left by a run killed while writing)."""
    keep = set()
    for candidate in (ckpt_path, previous_checkpoint(ckpt_path)):
        if candidate.is_file():
            try:
                keep.add(torch.load(candidate, weights_only=False).get("sharded"))
            except Exception:  # noqa: BLE001 - unreadable: it names nothing
                pass
    for folder in (ckpt_path.parent / SHARDED_DIR).glob("step-*"):
        if f"{SHARDED_DIR}/{folder.name}" not in keep:
            shutil.rmtree(folder, ignore_errors=True)
