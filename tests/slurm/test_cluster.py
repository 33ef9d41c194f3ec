"""submitit against the real one-node SLURM cluster of conftest.py: plain jobs, job arrays,
and requeues (through submitit's checkpoint path, and by an outside ``scontrol requeue``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cloudpickle
import pytest
import submitit
from submitit.slurm.slurm import SlurmJobEnvironment

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

# The jobs unpickle the callables below in a fresh interpreter, which cannot import this test
# module (pytest puts tests/slurm on sys.path only in its own process): ship them by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

STEP_S = 0.25  # one unit of "work" in the requeue tests


def _executor(folder: Path, cluster) -> submitit.AutoExecutor:
    # cluster="slurm": fail rather than fall back to local processes if srun is missing
    executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
    # timeout_min above 10 on purpose: submitit calls any signal in the first 80% of a job
    # (or before timeout - 10 min) a preemption, which does not use up slurm_max_num_timeout
    executor.update_parameters(
        slurm_partition=cluster.partition, timeout_min=60, cpus_per_task=1, mem_gb=1
    )
    return executor


def _wait(job: submitit.Job, timeout_s: float) -> None:
    """job.result() waits forever for a job that died without a result (submitit sees only
    state UNKNOWN when sacct does not work): wait with a deadline and show the job's log."""
    deadline = time.monotonic() + timeout_s
    while not job.done():
        if time.monotonic() > deadline:
            job.cancel(check=False)
            pytest.fail(
                f"job {job.job_id} not done after {timeout_s} s; state {job.state}\n"
                f"stdout:\n{job.stdout()}\nstderr:\n{job.stderr()}"
            )
        time.sleep(0.25)


def _result(job: submitit.Job):
    """job.result(), failing with the job's log if the job raised."""
    try:
        return job.result()
    except Exception as e:  # the job's own error, re-raised by submitit
        pytest.fail(f"job {job.job_id} failed: {e!r}\nstderr:\n{job.stderr()}", pytrace=False)


def _wait_for_line(path: Path, prefix: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not (path.exists() and any(x.startswith(prefix) for x in path.read_text().split("\n"))):
        if time.monotonic() > deadline:
            text = path.read_text() if path.exists() else "(no file)"
            pytest.fail(f"no line {prefix!r} in {path} after {timeout_s} s:\n{text}")
        time.sleep(0.1)


# ---------------------------------------------------------------- jobs


def _requeue_ignoring_sigterm(env, countdown: int) -> None:
    """submitit's SlurmJobEnvironment._requeue, but `scontrol requeue` ignores SIGTERM.

    submitit runs `scontrol requeue` from inside the job, in its USR2 handler. SLURM sends
    SIGTERM to every process of the job, that scontrol included: the requeue itself does, and
    so does a preemption (or submitit's _interrupt(), whose TERM may be delivered after its
    USR2). If it lands before scontrol has exited (2 runs in about 20 on this machine),
    scontrol dies, submitit's check_call raises, and the job stores that error as its result
    and exits 1 although SLURM did requeue it: the caller sees a failed job (the requeued run
    later replaces the result). An ignored signal (SIG_IGN, unlike a Python handler) survives
    exec, so scontrol finishes its call.
    """
    subprocess.check_call(
        ["scontrol", "requeue", env.job_id],
        timeout=60,
        preexec_fn=lambda: signal.signal(signal.SIGTERM, signal.SIG_IGN),
    )


def answer(x: int) -> dict:
    return {
        "value": 6 * x,
        "job_id": os.environ.get("SLURM_JOB_ID"),
        "array_job_id": os.environ.get("SLURM_ARRAY_JOB_ID"),
        "array_task_id": os.environ.get("SLURM_ARRAY_TASK_ID"),
        "python": sys.executable,
    }


class _Counter(submitit.helpers.Checkpointable):
    """Counts to `steps`, one step per STEP_S. In its first run it stops at `hold_at` and
    waits (at most `hold_s`) to be interrupted, so that the tests requeue it at a known point
    whatever the machine's speed. Every line it writes goes to the file `log`."""

    def __init__(self, log: str, steps: int, hold_at: int, hold_s: float = 120) -> None:
        self.log = log
        self.steps = steps
        self.hold_at = hold_at
        self.hold_s = hold_s
        self.done = 0

    def _write(self, line: str) -> None:
        with open(self.log, "a") as f:
            f.write(line + "\n")

    def _count(self, done: int, restarts: int) -> int:
        while done < self.steps:
            if restarts == 0 and done == self.hold_at:
                time.sleep(self.hold_s)  # interrupted in here
                raise RuntimeError(f"not interrupted within {self.hold_s} s")
            time.sleep(STEP_S)
            done = self.done = done + 1  # on self too, for checkpoint() to pickle
            self._write(f"step {done}")
        return done

    def checkpoint(self, *args, **kwargs) -> submitit.helpers.DelayedSubmission:
        self._write("checkpoint")
        return super().checkpoint(*args, **kwargs)


class CheckpointedCounter(_Counter):
    """Keeps its progress in memory only: it can resume after a requeue only through
    submitit's checkpoint (the object pickled with its attributes)."""

    def __init__(self, log: str, steps: int, hold_at: int) -> None:
        super().__init__(log, steps, hold_at)
        self.starts = 0

    def __call__(self) -> dict:
        SlurmJobEnvironment._requeue = _requeue_ignoring_sigterm  # see its docstring
        self.starts += 1
        restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
        self._write(f"start {self.starts} at {self.done} restarts {restarts}")
        done = self._count(self.done, restarts)
        return {"starts": self.starts, "done": done, "restarts": restarts}


class FileCounter(_Counter):
    """Keeps its progress in the file only: it resumes after any restart, also one that
    submitit's checkpoint never saw."""

    def __init__(self, log: str, steps: int, hold_at: int) -> None:
        super().__init__(log, steps, hold_at)
        self.starts_in_memory = 0

    def __call__(self) -> dict:
        self.starts_in_memory += 1
        lines = Path(self.log).read_text().split("\n") if os.path.exists(self.log) else []
        done = sum(x.startswith("step ") for x in lines)
        restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
        self._write(f"start at {done} restarts {restarts}")
        done = self._count(done, restarts)
        return {"starts_in_memory": self.starts_in_memory, "done": done}


# ---------------------------------------------------------------- tests


def test_submit_and_array(slurm_cluster, tmp_path):
    executor = _executor(tmp_path, slurm_cluster)
    job = executor.submit(answer, 7)
    jobs = executor.map_array(answer, [1, 2, 3])
    _wait(job, 60)
    for j in jobs:
        _wait(j, 60)

    out = _result(job)
    assert out["value"] == 42
    assert out["job_id"] == job.job_id
    assert out["python"] == sys.executable  # the job runs this interpreter (the venv's)

    outs = [_result(j) for j in jobs]
    assert [o["value"] for o in outs] == [6, 12, 18]
    array_id = jobs[0].job_id.split("_")[0]
    assert [j.job_id for j in jobs] == [f"{array_id}_{i}" for i in range(3)]
    assert {o["array_job_id"] for o in outs} == {array_id}
    assert sorted(o["array_task_id"] for o in outs) == ["0", "1", "2"]
    assert len({o["job_id"] for o in outs}) == 3

    if slurm_cluster.accounting:
        # sacct works, so submitit sees the real states (slurmctld sends them to slurmdbd a
        # moment after the job ends: the result file can come first)
        deadline = time.monotonic() + 20
        while True:
            states = [j.get_info(mode="force").get("State") for j in [job, *jobs]]
            if states == ["COMPLETED"] * 4 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert states == ["COMPLETED"] * 4


def _sacct_states(job_id: str, expected: list[str], timeout_s: float = 20) -> list[str]:
    """The states sacct lists for the job's runs, once they are `expected` or after timeout_s:
    slurmctld tells slurmdbd that a job ended a moment after the job wrote its result."""
    deadline = time.monotonic() + timeout_s
    while True:
        out = subprocess.run(
            ["sacct", "-n", "-X", "-D", "-P", "-o", "State", "-j", job_id],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        states = out.stdout.split()
        if states == expected or time.monotonic() > deadline:
            return states
        time.sleep(0.5)


def test_requeue_through_submitit_checkpoint(slurm_cluster, tmp_path):
    """SIGUSR2, as SLURM sends before a time limit (--signal) or on preemption: submitit calls
    checkpoint(), pickles the object, runs `scontrol requeue`; the job starts again and resumes
    from the pickled state."""
    log = tmp_path / "progress.txt"
    executor = _executor(tmp_path / "logs", slurm_cluster)
    job = executor.submit(CheckpointedCounter(str(log), steps=8, hold_at=4))
    _wait_for_line(log, "step 4", 60)
    job._interrupt()  # submitit's own test hook: scancel --signal TERM, then --signal USR2
    _wait(job, 90)

    out = _result(job)
    lines = log.read_text().split("\n")
    assert out == {"starts": 2, "done": 8, "restarts": 1}, lines
    # the second run starts where the checkpoint left off, not from 0
    assert lines[: lines.index("checkpoint") + 2] == [
        "start 1 at 0 restarts 0",
        "step 1",
        "step 2",
        "step 3",
        "step 4",
        "checkpoint",
        "start 2 at 4 restarts 1",
    ]
    assert "Bypassing signal SIGTERM" in job.stderr()
    if slurm_cluster.accounting:
        expected = ["REQUEUED", "COMPLETED"]
        assert _sacct_states(job.job_id, expected) == expected


def test_requeue_by_scontrol(slurm_cluster, tmp_path):
    """An outside `scontrol requeue` (an admin, a node failure): SLURM sends SIGTERM, which
    submitit ignores, then SIGKILL after KillWait; checkpoint() is not called, so the job
    starts again from the pickle as first submitted and can resume only from its own files."""
    log = tmp_path / "progress.txt"
    executor = _executor(tmp_path / "logs", slurm_cluster)
    job = executor.submit(FileCounter(str(log), steps=8, hold_at=4))
    _wait_for_line(log, "step 4", 60)
    subprocess.run(["scontrol", "requeue", job.job_id], check=True, timeout=30)
    _wait(job, 90)

    out = _result(job)
    lines = log.read_text().split("\n")
    assert [x for x in lines if x.startswith("start")] == [
        "start at 0 restarts 0",
        "start at 4 restarts 1",
    ], lines
    assert "checkpoint" not in lines
    # the in-memory state was not carried over: the job ran again from the original pickle
    assert out == {"starts_in_memory": 1, "done": 8}
    assert "Bypassing signal SIGTERM" in job.stderr()
    if slurm_cluster.accounting:
        expected = ["REQUEUED", "COMPLETED"]
        assert _sacct_states(job.job_id, expected) == expected
