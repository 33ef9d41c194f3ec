"""The results store: one JSON record per run, ``ROOT/STUDY/runs/RUN_ID.json``.

``Store`` owns the study folder's layout; every other module asks it for a path:

    ROOT/STUDY/runs/RUN_ID.json          the current record of each run
    ROOT/STUDY/history/RUN_ID/           earlier, refused or invalid attempts
    ROOT/STUDY/work/RUN_ID/              scratch: run.lock, progress.json, checkpoints, logs
    ROOT/STUDY/replaced/RUN_ID/          a rerun's predecessor: its work folder, set aside
    ROOT/STUDY/sweep.lock                held by a local sweep
    ROOT/STUDY/measure.lock              held by the run that measures its cost (MeasureGate)
    ROOT/STUDY/submitit/JOB/             local and debug jobs (submitit's pickles and logs)
    ROOT/STUDY/slurm/JOB/, jobs.json     SLURM jobs, and run_id -> job handles
    ROOT/STUDY/tune/                     tuning: Optuna storage, its pointer, workers' jobs

Records are written atomically (a temporary file in the same folder, fsync, ``os.replace``),
so concurrent writers never corrupt or lose a record, and a reader never sees half a file.
A finished record (``ok``, ``diverged``, ``pruned``) is replaced only by a finished record of a
newer attempt (``--rerun``), and is then kept in ``ROOT/STUDY/history/RUN_ID/``; a failed attempt
over it, and any file that is not a valid record, goes there too instead of being lost.

A rerun starts from scratch (``set_aside``): the run's work folder (checkpoints, event files)
moves to ``ROOT/STUDY/replaced/RUN_ID/`` and stays there until the new attempt has a finished
record (``drop_aside``); when it fails instead, the folder is put back (``restore_aside``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import math
import os
import re
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

from harness.errors import HarnessError, shorten

ENV_ROOT = "MOE_HARNESS_RESULTS"
# finished: a result, not retried unless --rerun. "pruned": a tuning trial stopped early by its
# pruner (runners.tune); its record keeps the cost measured before training and pruned_step.
DONE = ("ok", "diverged", "pruned")
STATUSES = ("ok", "failed", "diverged", "pruned")

# The known columns and their types: a record's value of one of them must have that type
# (``check_record``); exported tables type these columns so (``reports.export``), and carry
# other keys along as found.
SCHEMA = {
    "study": "str", "run_id": "str", "status": "str", "error": "str", "spec": "str",
    "model": "str", "router": "str", "num_experts": "int", "slots_per_expert": "int", "k": "int",
    "capacity_factor": "float", "moe_layers": "str", "pool": "str", "gelu": "str",
    "capacity_rounding": "str", "router_noise": "float", "seed": "int", "lr": "float",
    "steps": "int", "batch_size": "int", "data": "str", "image_size": "int",
    "params_total": "int", "params_active": "int", "gflops_per_image": "float",
    "train_exaflops": "float", "train_exaflops_paper": "float", "train_step_ms": "float",
    "train_images_per_s": "float", "infer_images_per_s": "float", "infer_latency_ms": "float",
    "peak_memory_mb": "float", "test_accuracy": "float", "test_loss": "float",
    "fewshot_accuracy": "float", "diverged_step": "int", "steps_done": "int",
    "resumed_from_step": "int", "device": "str", "torch_version": "str",
    "attention_backend": "str", "git_sha": "str", "started_at": "str", "finished_at": "str",
}


def results_root(value: str | Path | None = None) -> Path:
    """--results, else $MOE_HARNESS_RESULTS, else ./results."""
    return Path(value or os.environ.get(ENV_ROOT) or "results").resolve()


def tune_dir(study_dir: Path) -> Path:
    """A study folder's tuning folder: the default Optuna storages, the pointer to the storage
    in use, the tuning summary."""
    return Path(study_dir) / "tune"


class Store:
    def __init__(self, root: str | Path, study: str):
        self.root = Path(root).resolve()
        self.dir = (self.root / study).resolve()
        if self.root not in self.dir.parents:
            raise HarnessError(f"study name {study!r} would write outside the results root "
                               f"{self.root}")
        self.runs_dir = self.dir / "runs"

    # --- writing ---------------------------------------------------------------------------
    def path(self, run_id: str) -> Path:
        return self.runs_dir / f"{run_id}.json"

    def write(self, record: dict[str, Any]) -> Path:
        """Write ``record`` as its run's current record; a failed attempt never replaces a
        finished one (it goes to the run's history), a finished one that a newer attempt
        replaces is kept there, and so is an invalid file."""
        if record.get("status") not in STATUSES:
            raise ValueError(f"record status must be one of {STATUSES}, got {record.get('status')}")
        path = self.path(record["run_id"])
        try:
            current = read_record(path)
        except FileNotFoundError:
            current = None
        except BadRecord:
            self._archive(path)
            current = None
        if current is not None and current["status"] in DONE and (
                record["status"] not in DONE
                or (record.get("started_at") or "") < (current.get("started_at") or "")):
            return atomic_write_json(self._history_path(record["run_id"], record), record)
        if current is not None and current["status"] in DONE and current != record:
            # a newer attempt's result: the one it replaces stays in the run's history
            atomic_write_json(self._history_path(record["run_id"], current), current)
        return atomic_write_json(path, record)

    def _history_path(self, run_id: str, record: dict | None = None) -> Path:
        stamp = (record or {}).get("finished_at") or dt.datetime.now(dt.timezone.utc).isoformat()
        stamp = re.sub(r"[^0-9A-Za-z]", "", str(stamp))[:20]
        return self.dir / "history" / run_id / f"{stamp}-{os.getpid()}-{time.monotonic_ns()}.json"

    def _archive(self, path: Path) -> None:
        target = self._history_path(path.stem)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, target.with_suffix(".invalid"))

    def history(self, run_id: str) -> list[Path]:
        """Earlier or refused attempts of a run, oldest first."""
        folder = self.dir / "history" / run_id
        return sorted(folder.iterdir()) if folder.is_dir() else []

    def lock_run(self, run_id: str):
        """Held while a process executes the run: two sweeps never train one run at once."""
        return hold_lock(self.work_path(run_id) / LOCK_FILE, f"run {run_id}")

    def lock_sweep(self):
        """Held by a local sweep of the study for its whole duration."""
        return hold_lock(self.dir / "sweep.lock", f"study {self.dir.name}")

    def measure_gate(self) -> MeasureGate:
        """The study's measuring gate: one run of this machine times at once, alone."""
        return MeasureGate(self.dir / "measure.lock", f"study {self.dir.name}")

    def workdir(self, run_id: str) -> Path:
        """Per-run scratch: checkpoints, progress. Kept after the run for inspection."""
        path = self.work_path(run_id)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def set_aside(self, run_id: str, attempt: str | None = None) -> None:
        """Before a rerun: move what the run's work folder holds (all but its lock, which the
        caller holds) to ``replaced/RUN_ID/``, so that the new attempt starts from scratch.

        When a folder is set aside already (a rerun that has not ended), that one is kept;
        the work folder is that rerun's: resumed from when ``attempt`` (e.g. a SLURM job id,
        the same after a requeue) is the one that set it aside, else emptied. Each step can be
        killed: the next call finishes what an earlier one left half done (a move aside, a
        move back, a removal) before it starts, and nothing set aside is lost."""
        work, aside = self.workdir(run_id), self.replaced_path(run_id)
        self._finish_aside(run_id)
        if aside.is_dir():
            if attempt is not None and _read(aside / ASIDE_MARKER) == attempt:
                return  # the same rerun, requeued: it resumes from its own checkpoint
            for entry in _entries(work):
                _remove(entry)
            (aside / ASIDE_MARKER).write_text(attempt or "")
            return
        moving = _beside(aside, "moving")  # renamed to ``aside`` once complete
        moving.mkdir(parents=True, exist_ok=True)
        for entry in _entries(work):
            os.replace(entry, moving / entry.name)
        (moving / ASIDE_MARKER).write_text(attempt or "")
        os.replace(moving, aside)

    def drop_aside(self, run_id: str) -> None:
        """The run has a new finished record: remove the folder its rerun set aside."""
        aside = self.replaced_path(run_id)
        if aside.exists():
            dropped = _beside(aside, "dropped")
            shutil.rmtree(dropped, ignore_errors=True)
            os.replace(aside, dropped)  # at once: never a half-removed folder in its place
            shutil.rmtree(dropped)

    def restore_aside(self, run_id: str) -> None:
        """A rerun failed: put the work folder it set aside back in place of its own files."""
        aside = self.replaced_path(run_id)
        if not aside.is_dir():
            return
        (aside / RESTORING).write_text("")
        for entry in _entries(self.workdir(run_id)):
            _remove(entry)
        self._finish_aside(run_id)

    def _finish_aside(self, run_id: str) -> None:
        """Finish a removal (``drop_aside``) or a move back (``restore_aside``) that was
        killed halfway; a move aside that was is finished by ``set_aside`` itself."""
        aside = self.replaced_path(run_id)
        shutil.rmtree(_beside(aside, "dropped"), ignore_errors=True)
        if not (aside / RESTORING).exists():
            return
        work = self.workdir(run_id)
        for entry in _entries(aside):
            if entry.name not in (ASIDE_MARKER, RESTORING):
                os.replace(entry, work / entry.name)
        for name in (ASIDE_MARKER, RESTORING):
            (aside / name).unlink(missing_ok=True)
        aside.rmdir()

    def keep_attempt(self, record: dict[str, Any]) -> Path:
        """Keep ``record`` in the run's history only, whatever its current record (an attempt
        stopped from outside, which does not change what the run has to do)."""
        return atomic_write_json(self._history_path(record["run_id"], record), record)

    def keep_study(self, text: str) -> Path:
        """Keep the study file the runs are made from (``STUDY/study.yaml``): the report shows
        the study as it ran, without reading the study file again."""
        path = self.dir / "study.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".study.", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
        return path

    # --- the layout (nothing created here) --------------------------------------------------
    def work_path(self, run_id: str) -> Path:
        return self.dir / "work" / run_id

    def replaced_path(self, run_id: str) -> Path:
        """Where a rerun keeps its predecessor's work folder until it has a finished record."""
        return self.dir / "replaced" / run_id

    def progress_path(self, run_id: str) -> Path:
        """What a running run reports (step, loss, ...), rewritten as it trains."""
        return self.work_path(run_id) / "progress.json"

    def jobs_folder(self, executor: str) -> Path:
        """Where submitit keeps the jobs of ``executor`` (``local``/``debug``, ``slurm``,
        ``tune``), one folder per job id: their pickles and logs."""
        base = {"local": self.dir / "submitit", "debug": self.dir / "submitit",
                "slurm": self.dir / "slurm", "tune": self.tune_dir / "submitit"}[executor]
        return base / "%j"

    @property
    def slurm_jobs_file(self) -> Path:
        """run_id -> SLURM job handle (job id, submission time, logs) of every submitted run."""
        return self.dir / "slurm" / "jobs.json"

    @property
    def tune_dir(self) -> Path:
        return tune_dir(self.dir)

    # --- reading ---------------------------------------------------------------------------
    def study_text(self) -> str | None:
        """The study file kept by the last ``run`` or ``tune``; None before any."""
        try:
            return (self.dir / "study.yaml").read_text()
        except FileNotFoundError:
            return None

    def read(self, run_id: str) -> dict[str, Any] | None:
        """The run's record; None when it has none or its file is not a valid record."""
        try:
            return read_record(self.path(run_id))
        except (FileNotFoundError, BadRecord):
            return None

    def scan(self) -> tuple[list[dict[str, Any]], list[tuple[Path, str]]]:
        """The valid records, and (file, what is wrong) for every other ``runs/*.json``."""
        records, problems = [], []
        if not self.runs_dir.is_dir():
            return records, problems
        for path in sorted(self.runs_dir.glob("*.json")):
            try:
                records.append(read_record(path))
            except FileNotFoundError:  # replaced or archived while we listed the folder
                continue
            except BadRecord as err:
                problems.append((path, str(err)))
        return records, problems

    def records(self) -> list[dict[str, Any]]:
        return self.scan()[0]

    def statuses(self) -> dict[str, str]:
        return {r["run_id"]: r.get("status", "failed") for r in self.records()}


LOCK_FILE = "run.lock"
ASIDE_MARKER = ".set-aside-by"  # in replaced/RUN_ID/: the attempt that set the folder aside
RESTORING = ".set-aside-restoring"  # in replaced/RUN_ID/: being moved back


def _beside(path: Path, what: str) -> Path:
    return path.with_name(f".{path.name}.{what}")


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _entries(folder: Path) -> list[Path]:
    """A work folder's entries but its lock."""
    return [p for p in folder.iterdir() if p.name != LOCK_FILE] if folder.is_dir() else []


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


class Busy(HarnessError):
    """Another process holds the lock (its message names the holder)."""


@contextlib.contextmanager
def hold_lock(path: Path, what: str, wait: float = 0.0):
    """An exclusive lock on ``path`` for the ``with`` block (flock: the kernel frees it when
    the holder dies, SIGKILL included); Busy if another process holds it for longer than
    ``wait`` seconds (0: do not wait)."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + wait
    with open(path, "a+") as f:
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() < deadline:
                    time.sleep(0.05)
                    continue
                f.seek(0)
                holder = f.read().strip() or "another process"
                waited = f" for {wait:g} s" if wait else ""
                raise Busy(f"{what} is in use by {holder} (lock {path}){waited}; wait for it "
                           f"to end or stop it") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        f.flush()
        try:
            yield
        finally:
            f.truncate(0)
            fcntl.flock(f, fcntl.LOCK_UN)


class MeasureGate:
    """Timings taken alone among the runs of one study on one machine (a local sweep runs
    several at once, and a timing taken while another run trains measures the contention).

    A run measures inside :meth:`measuring`, an exclusive lock on ``ROOT/STUDY/measure.lock``
    (it waits for the run measuring before it); a training run calls :meth:`wait` between
    steps, which takes and drops a shared lock on the same file, so it holds still while
    another run measures. flock: the kernel frees the lock of a process that dies.
    """

    def __init__(self, path: Path, what: str):
        self.path, self.what = path, what
        self._file: Any = None

    @contextlib.contextmanager
    def measuring(self):
        with hold_lock(self.path, f"measuring in {self.what}", wait=math.inf):
            yield

    def wait(self, _info: Any = None) -> None:
        """Return at once, or when the run measuring now is done (an ``on_progress`` hook)."""
        import fcntl

        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a+")  # noqa: SIM115 - held until close()
        fcntl.flock(self._file, fcntl.LOCK_SH)
        fcntl.flock(self._file, fcntl.LOCK_UN)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class BadRecord(ValueError):
    """A file of the runs folder that is not a valid record (its message says why)."""


_KINDS = {"str": (str,), "int": (int,), "float": (int, float)}


def check_record(record: Any, name: str | None = None) -> dict[str, Any]:
    """``record`` itself if it is a valid record (a JSON object with a run_id, a known status
    and the known columns of their types), else BadRecord naming the first problem."""
    if not isinstance(record, dict):
        raise BadRecord(f"expected a JSON object, found a JSON {type(record).__name__}")
    if not isinstance(record.get("run_id"), str):
        raise BadRecord("run_id: missing or not a string")
    if name is not None and record["run_id"] != name:
        raise BadRecord(f"run_id {record['run_id']!r} is not the file's name {name!r}")
    if record.get("status") not in STATUSES:
        raise BadRecord(f"status: {shorten(record.get('status'))}; allowed: {', '.join(STATUSES)}")
    for key, kind in SCHEMA.items():
        value = record.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, _KINDS[kind])):
            raise BadRecord(f"{key}: expected {'a number' if kind != 'str' else 'a string'}, "
                            f"got {shorten(value)}")
    _check_history(record.get("history"))
    _check_spec_json(record.get("spec_json"))
    return record


def _check_history(history: Any) -> None:
    """None, or a list of points: JSON objects each with an integer ``step``."""
    if history is None:
        return
    allowed = "allowed: a list of objects, each with an integer step"
    if not isinstance(history, list):
        raise BadRecord(f"history: {shorten(history)}; {allowed}")
    for i, point in enumerate(history):
        if not isinstance(point, dict):
            raise BadRecord(f"history[{i}]: {shorten(point)}; {allowed}")
        step = point.get("step")
        if isinstance(step, bool) or not isinstance(step, int):
            raise BadRecord(f"history[{i}].step: {shorten(step)}; {allowed}")


def _check_spec_json(spec_json: Any) -> None:
    """None, or the run spec as JSON text of an object."""
    if spec_json is None:
        return
    try:
        ok = isinstance(json.loads(spec_json), dict) if isinstance(spec_json, str) else False
    except ValueError:
        ok = False
    if not ok:
        raise BadRecord(f"spec_json: {shorten(spec_json, 60)}; allowed: the run spec as the "
                        f"JSON text of an object")


def read_record(path: Path) -> dict[str, Any]:
    """The valid record in ``path``; FileNotFoundError, or BadRecord saying what is wrong."""
    try:
        text = path.read_bytes().decode("utf-8")
        record = json.loads(text)
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as err:  # UnicodeDecodeError and JSONDecodeError included
        raise BadRecord(f"not a JSON record ({type(err).__name__}: {err})") from None
    return check_record(record, path.stem)


def atomic_write_json(path: Path, payload: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(payload, f, indent=1, sort_keys=True, default=str)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path

