"""``execute(spec, results_root) -> record``: the one function every runner calls.

Build the model, measure its cost, train and evaluate it, and write one record to the store.
Any exception inside becomes a ``failed`` record with the error; the caller decides retries.
"""

from __future__ import annotations

import datetime as dt
import functools
import os
import platform
import socket
import subprocess
import time
import traceback
from pathlib import Path
from typing import Any

from harness.store import Store, atomic_write_json
from harness.study import RunSpec


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


@functools.cache
def git_sha() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True,
                             text=True, cwd=Path(__file__).parent, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def pick_device(name: str):
    import torch

    from harness.errors import HarnessError

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise HarnessError("train.device: 'cuda' was asked for but no CUDA device is visible; "
                           "use 'auto' or 'cpu'")
    return torch.device(name)


def environment(device) -> dict[str, Any]:
    import torch

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (
        f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)")
    return {
        "device": name, "device_type": device.type, "torch_version": torch.__version__,
        "python_version": platform.python_version(), "hostname": socket.gethostname(),
        "git_sha": git_sha(), "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
    }


def progress_writer(path: Path, spec: RunSpec, every_s: float = 1.0):
    """A throttled ``on_progress`` callback writing ``progress.json`` for the CLI to show."""
    last = [0.0]

    def on_progress(info: dict[str, Any]) -> None:
        if time.monotonic() - last[0] >= every_s or info.get("step") == info.get("steps"):
            last[0] = time.monotonic()
            atomic_write_json(path, {"run_id": spec.run_id, "label": spec.label, **info})

    return on_progress


def execute(spec: RunSpec, results_root: str | Path) -> dict[str, Any]:
    """Run one grid point end to end and write its record; returns the record."""
    store = Store(results_root, spec.study)
    record: dict[str, Any] = {**spec.flat(), "status": "failed", "error": None,
                              "started_at": now(), "spec_json": spec.canonical_json()}
    workdir = store.workdir(spec.run_id)
    try:
        record.update(_run(spec, workdir))
    except Exception as err:  # noqa: BLE001 - a failed run is a record, not a crashed sweep
        record.update(status="failed", error=f"{type(err).__name__}: {err}",
                      traceback=traceback.format_exc(limit=20))
    record["finished_at"] = now()
    store.write(record)
    return record


def _run(spec: RunSpec, workdir: Path) -> dict[str, Any]:
    import torch

    from harness import cost
    from harness.data import load_data
    from harness.models import build
    from harness.train import fit

    if spec.train.threads:
        torch.set_num_threads(spec.train.threads)
    device = pick_device(spec.train.device)
    out: dict[str, Any] = environment(device)
    data = load_data(spec.data)
    cfg = spec.model_config_(data.num_classes)
    torch.manual_seed(spec.seed)
    model = build(cfg).to(device)
    out.update(cost.parameter_counts(model, cfg.num_tokens))
    if spec.measure.enabled:
        out.update(cost.measure(model, cfg, spec.measure, device=device))
    torch.manual_seed(spec.seed)  # training starts from the same state, measured or not
    quality = fit(model, spec, data, workdir=workdir, device=device,
                  on_progress=progress_writer(workdir / "progress.json", spec))
    out.update(quality)
    out["attention_backend"] = getattr(model, "attention_backend", None)
    if out.get("gflops_per_image") is not None:
        images = spec.train.batch_size * out.get("steps_done", spec.train.steps)
        out.update(cost.train_exaflops(out["gflops_per_image"], images))
    return out
