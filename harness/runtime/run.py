"""``execute(spec, results_root) -> record``: the one function every runner calls.

Build the model, measure its cost, train and evaluate it, and write one record to the store.
Any exception inside, of any type, becomes a ``failed`` record with the error; the caller
decides retries. ``KeyboardInterrupt`` and ``SystemExit`` (Ctrl-C, SIGTERM in a sweep, a SLURM
job requeued by submitit) stop the attempt from outside: its ``failed`` record (with
``interrupted: true``) goes to the run's history, which leaves the run as it was (pending, or
its earlier record current; a requeued job resumes), and the exception goes on.

``execute(..., fresh=True)`` (``run --rerun``) trains from scratch: the run's work folder is
set aside first (``Store.set_aside``), removed once the new attempt has a finished record,
put back if it fails (an interrupted attempt leaves both as they are: the same SLURM job,
requeued, resumes from its own checkpoint; a later rerun starts over).

A multi-process run (several SLURM tasks, one per GPU, or ``torchrun``; see
``harness.runtime.distributed``) calls ``execute`` on every rank: all ranks train, rank 0
alone reports progress and writes the record; the other ranks return None (and re-raise their
errors, which end the job step, rather than writing a record of their own).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import os
import platform
import socket
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from harness.results.store import DONE, Busy, Store, atomic_write_json
from harness.runtime import distributed
from harness.spec.study import RunSpec


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


def environment(device) -> dict[str, Any]:
    import torch

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (
        f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)")
    return {
        "device": name, "device_type": device.type, "torch_version": torch.__version__,
        "python_version": platform.python_version(), "hostname": socket.gethostname(),
        "git_sha": git_sha(), "slurm_job_id": slurm_job_id(),
        "slurm_restarts": int(os.environ.get("SLURM_RESTART_COUNT") or 0)
        if os.environ.get("SLURM_JOB_ID") else None,  # requeues before this (last) attempt
    }


def slurm_job_id() -> str | None:
    """The SLURM job id as squeue and submitit name it: ``ARRAY_TASK`` for an array task."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array and task:
        return f"{array}_{task}"
    return os.environ.get("SLURM_JOB_ID")


def job_log_path() -> str | None:
    """The stderr log of the submitit job running this (None outside a job)."""
    try:
        import submitit

        return str(submitit.JobEnvironment().paths.stderr)
    except Exception:  # noqa: BLE001 - not inside a submitit job
        return None


def failed_record(spec: RunSpec, error: str | None, **fields: Any) -> dict[str, Any]:
    """The record of a run that failed (or has not finished yet): the spec's columns, status
    ``failed``, ``error``, and ``fields`` (e.g. ``started_at``, ``log_path``, ``slurm_job_id``).
    ``finished_at`` is now unless given."""
    return {**spec.flat(), "spec_json": spec.canonical_json(), "started_at": None,
            "finished_at": now(), **fields, "status": "failed", "error": error}


def progress_writer(path: Path, spec: RunSpec, every_s: float = 1.0):
    """A throttled ``on_progress`` callback writing ``progress.json`` for the CLI to show."""
    last = [0.0]

    def on_progress(info: dict[str, Any]) -> None:
        if time.monotonic() - last[0] >= every_s or info.get("step") == info.get("steps"):
            last[0] = time.monotonic()
            atomic_write_json(path, {"run_id": spec.run_id, "label": spec.label, **info})

    return on_progress


class Pruned(Exception):
    """Raised by an ``on_progress`` callback to end a run early (a tuning pruner's verdict).

    ``execute`` then writes the run's record with status ``pruned``: what was measured before
    (parameters, cost, environment) is kept, ``pruned_step`` says when it stopped.
    """

    def __init__(self, step: int, reason: str = ""):
        super().__init__(reason or f"pruned at step {step}")
        self.step = step


def _chain(*callbacks):
    callbacks = [c for c in callbacks if c is not None]

    def on_progress(info: dict[str, Any]) -> None:
        for callback in callbacks:
            callback(info)

    return on_progress


def execute(spec: RunSpec, results_root: str | Path, *, on_progress=None,
            tags: dict[str, Any] | None = None, fresh: bool = False) -> dict[str, Any]:
    """Run one grid point end to end and write its record; returns the record.

    ``on_progress`` (optional) gets each progress dict of training (step, steps, loss, and
    evaluation results when there are some) and may raise :class:`Pruned` to stop the run.
    ``tags`` are extra record columns (e.g. ``tune_trial``). ``fresh``: start from scratch,
    not from the run's checkpoint (a rerun); its earlier work folder is kept aside until this
    attempt has a finished record, and put back if it has not.

    In a multi-process run only rank 0 calls ``on_progress`` (so a pruner cannot stop one rank
    alone: runs that may be pruned are single-process) and writes the record; other ranks
    return None. Rank 0 holds the run's lock while it runs: when another process holds it (a
    second sweep of the same study), this returns None at once and writes nothing.
    """
    store = Store(results_root, spec.study)
    if not distributed.env_context().is_main:
        return _execute(spec, store, on_progress, tags)
    try:
        with store.lock_run(spec.run_id):
            return _attempt(spec, store, on_progress, tags, fresh)
    except Busy as busy:
        print(f"skipped: {busy}", file=sys.stderr, flush=True)
        return None


def _attempt(spec: RunSpec, store: Store, on_progress, tags, fresh: bool) -> dict[str, Any]:
    """Rank 0's attempt, the run's lock held: a fresh one sets the work folder aside first
    (before the other ranks can read a checkpoint: they wait for rank 0 in the session)."""
    set_aside = functools.partial(store.set_aside, spec.run_id, slurm_job_id()) if fresh \
        else None
    record = _execute(spec, store, on_progress, tags, set_aside)  # interrupted: raises
    if record["status"] in DONE:
        store.drop_aside(spec.run_id)
    elif fresh:
        store.restore_aside(spec.run_id)
    return record


def _execute(spec: RunSpec, store: Store, on_progress, tags,
             before=None) -> dict[str, Any] | None:
    # what is recorded if the run fails early; its results replace status and error
    record = failed_record(spec, None, **(tags or {}), started_at=now(),
                           slurm_job_id=slurm_job_id())
    partial: dict[str, Any] = {}
    main = distributed.env_context().is_main
    try:
        if before is not None:
            before()
        with distributed.session(distributed.pick_device(spec.train.device).type) as ctx:
            record.update(_run(spec, store, partial, on_progress if main else None, ctx))
    except Pruned as stop:
        record.update(partial)
        record.update(status="pruned", pruned_step=stop.step, prune_reason=str(stop))
    except (KeyboardInterrupt, SystemExit) as err:
        if main:  # kept in the run's history when possible; it goes on stopping the process
            record.update(status="failed", interrupted=True, log_path=job_log_path(),
                          error=f"interrupted ({type(err).__name__}{_args(err)})",
                          finished_at=now())
            with contextlib.suppress(Exception):
                store.keep_attempt(record)
        raise
    except BaseException as err:  # noqa: BLE001 - a failed run is a record, not a crashed sweep
        # (BaseException: torch.distributed.checkpoint's CheckpointException is one)
        if not main:
            raise  # rank 0 records the run; this rank's error ends the job step (its log)
        record.update(status="failed", error=f"{type(err).__name__}: {err}",
                      traceback=traceback.format_exc(limit=20), log_path=job_log_path())
        if partial.get("tracking_error"):
            record["tracking_error"] = partial["tracking_error"]
    if not main:
        return None
    record["finished_at"] = now()
    store.write(record)
    return record


def _args(err: BaseException) -> str:
    return f": {err}" if str(err) else ""


def measure_cost(model, cfg, spec: RunSpec, device) -> dict[str, Any]:
    """The study's ``measure`` section applied through ``harness.runtime.measure.measure``."""
    from harness.runtime.measure import measure

    m = spec.measure
    bf16 = spec.train.precision == "bf16" or (spec.train.precision == "auto"
                                              and device.type == "cuda")  # as training runs
    out = measure(model, cfg, batch_size=m.batch_size, device=device, repeats=m.repeats,
                  warmup=m.warmup, flops_counter="fvcore" if m.flops else "analytic",
                  timing=m.time, memory=m.memory, latency_batch_size=m.latency_batch_size,
                  threads=spec.train.threads, precision="bf16" if bf16 else "fp32")
    out.pop("device", None)  # the environment names the device in words
    return out


def sharded_cost(cfg) -> dict[str, Any]:
    """The cost columns of a model whose experts are spread over the ranks: its FLOPs from
    the closed form; no rank holds the whole model to time alone (the run's all-to-all share
    and per-rank peak memory measure the sharded training itself)."""
    from harness.cost.flops import CONVENTION, KINDS, analytic_flops

    flops = analytic_flops(cfg)
    by_kind = {kind: flops.by_kind.get(kind, 0.0) / 1e9 for kind in KINDS}
    return {"gflops_per_image": flops.gflops, **{f"gflops_{k}": v for k, v in by_kind.items()},
            "gflops_by_kind": by_kind, "flops_counter": flops.counter,
            "flop_convention": CONVENTION,
            "cost_note": "experts sharded over the ranks: FLOPs counted in closed form, "
                         "speed and memory not measured on one rank"}


def memory_estimate(spec: RunSpec, device, ctx: distributed.Context) -> dict[str, Any]:
    """The record's layout and estimated peak memory per rank (``harness.cost.memory``), against
    this GPU's memory (none on a CPU)."""
    import torch

    from harness.cost.memory import plan_for, record_fields

    limit = (torch.cuda.get_device_properties(device).total_memory / 1e9
             if device.type == "cuda" else None)
    nodes = int(os.environ.get("SLURM_JOB_NUM_NODES") or 1) if slurm_job_id() else 1
    return record_fields(plan_for(spec, gpu=device.type == "cuda", ranks=ctx.world_size,
                                  nodes=nodes, limit_gb=limit))


def _run(spec: RunSpec, store: Store, out: dict[str, Any], on_progress,
         ctx: distributed.Context) -> dict[str, Any]:
    import torch

    from harness.cost.flops import train_exaflops
    from harness.cost.params import closed_form_params
    from harness.data import load_data
    from harness.nn.vit import build
    from harness.runtime import parallel
    from harness.runtime.measure import parameter_counts
    from harness.runtime.tracking import open_log
    from harness.runtime.train import fit, seed_everything

    if spec.train.threads:
        torch.set_num_threads(spec.train.threads)
    device = distributed.device_for(distributed.pick_device(spec.train.device), ctx)
    # out is filled as we go: a pruned run keeps what it measured
    out.update(environment(device))
    data = load_data(spec.data)
    cfg = spec.model_config_(data.num_classes)
    out.update(memory_estimate(spec, device, ctx))
    if spec.train.layout == "auto":  # train in the layout the memory plan chose
        spec = spec.model_copy(update={"train": spec.train.model_copy(
            update={"layout": out["layout"]})})
    # experts sharded over several ranks: each MoE layer is sharded as soon as it is built,
    # so no rank ever holds the whole model (L/16 with 128 experts is 52 GB in fp32)
    shard = ctx.enabled and parallel.resolve_layout(spec.train, ctx.world_size).experts_sharded
    seed_everything(spec.seed)  # the initial weights; fit reseeds before training
    model = build(cfg, on_moe_layer=parallel.shard_layer if shard else None).to(device)
    out.update(closed_form_params(cfg) if shard else parameter_counts(model, cfg))
    # runs on one machine (not a SLURM job) measure one at a time, the others held still
    gate = store.measure_gate() if slurm_job_id() is None else None
    if spec.measure.enabled and ctx.is_main:  # rank 0 measures; the others wait in DDP's init
        with gate.measuring() if gate is not None else contextlib.nullcontext():
            out.update(sharded_cost(cfg) if shard else measure_cost(model, cfg, spec, device))
    workdir = store.workdir(spec.run_id)
    distributed.barrier()  # no rank reads a checkpoint before rank 0 set a rerun's aside
    progress = progress_writer(store.progress_path(spec.run_id), spec) if ctx.is_main else None
    log, close_log = open_log(spec, workdir, store.root) if ctx.is_main \
        else (None, lambda status: {})
    try:
        quality = fit(model, spec, data, workdir=workdir, device=device,
                      on_progress=_chain(gate and gate.wait, progress, on_progress), log=log)
    except BaseException as err:
        out.update(close_log("pruned" if isinstance(err, Pruned) else "failed"))
        raise
    finally:
        if gate is not None:
            gate.close()
    out.update(close_log(quality["status"] if quality else "ok"))
    if not ctx.is_main:
        return out  # rank 0 has the results
    out.update(quality)
    if ctx.enabled:
        out["world_size"] = ctx.world_size
        out["nodes"] = int(os.environ.get("SLURM_JOB_NUM_NODES") or 1)
    out["attention_backend"] = getattr(model, "attention_backend", None)
    if out.get("gflops_per_image") is not None:
        images = spec.train.batch_size * out.get("steps_done", spec.train.steps)
        out.update(train_exaflops(out["gflops_per_image"], images))
    return out
