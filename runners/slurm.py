"""Run specs as one SLURM job array through submitit.

``run`` submits and returns at once (job ids and log folder printed); ``--wait`` follows the
jobs until each has a record. Each job is ``submitit.helpers.Checkpointable``: on the signal
before preemption or the time limit (USR2, submitit's default; USR1 is NCCL's), submitit
requeues it and the run resumes from its last training checkpoint, not from zero.

Job handles are kept in ``STUDY/slurm/jobs.json`` (run_id -> job id, submission time), so that
``status`` and ``cancel`` work from a new shell days later; the submitit folder (pickles and
logs) is ``STUDY/slurm/JOBID/``, under the results root, which must be on the shared file
system of the cluster.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import submitit

from harness.errors import HarnessError
from harness.run import execute, now
from harness.store import Store, atomic_write_json
from harness.study import RunSpec, Study
from runners.progress import SweepProgress

# Scheduler states that mean "not finished yet", mapped to what ``status`` shows.
LIVE_STATES = {
    "PENDING": "pending (queued)", "CONFIGURING": "running", "RUNNING": "running",
    "COMPLETING": "running", "REQUEUED": "requeued", "REQUEUE_HOLD": "requeued",
    "REQUEUE_FED": "requeued", "RESIZING": "running", "SUSPENDED": "suspended",
    "PREEMPTED": "requeued", "SIGNALING": "running", "STAGE_OUT": "running",
}


class RunJob(submitit.helpers.Checkpointable):
    """The job's callable: ``execute`` resumes from the run's checkpoint when requeued."""

    def __call__(self, spec: RunSpec, results_root: str) -> dict:
        return execute(spec, results_root)


class SlurmRunner:
    def __init__(self, study: Study, store: Store, *, wait: bool = False,
                 show_progress: bool = True, poll_s: float = 2.0, **_ignored):
        if not shutil.which("sbatch"):
            raise HarnessError("--executor slurm: 'sbatch' is not on PATH; is this a SLURM "
                               "login node (or is SLURM_CONF set)?")
        self.study, self.store = study, store
        self.wait_, self.show_progress, self.poll_s = wait, show_progress, poll_s
        self.folder = store.dir / "slurm"

    def executor(self) -> submitit.AutoExecutor:
        cfg = self.study.executor.slurm
        executor = submitit.AutoExecutor(folder=self.folder / "%j", cluster="slurm")
        params = {
            "name": f"moe-{self.study.name}", "timeout_min": cfg.time_min,
            "cpus_per_task": cfg.cpus_per_run, "slurm_array_parallelism": cfg.array_parallelism,
            "slurm_signal_delay_s": cfg.signal_delay_s,
            "slurm_additional_parameters": dict(cfg.extra_sbatch),
            "slurm_setup": list(cfg.setup),
        }
        optional = {"slurm_partition": cfg.partition, "slurm_account": cfg.account,
                    "slurm_qos": cfg.qos, "slurm_constraint": cfg.constraint,
                    "mem_gb": cfg.mem_gb}
        params.update({k: v for k, v in optional.items() if v is not None})
        if cfg.gpus_per_run:  # one task per GPU: DDP across them, rank 0 writes the record
            params.update(gpus_per_node=cfg.gpus_per_run, tasks_per_node=cfg.gpus_per_run)
        executor.update_parameters(**params)
        return executor

    def run(self, specs: list[RunSpec]):
        from runners import Summary

        submitted = now()
        jobs = self.executor().map_array(RunJob(), specs, [str(self.store.root)] * len(specs))
        index = load_jobs(self.store)
        for spec, job in zip(specs, jobs):
            index[spec.run_id] = {"job_id": job.job_id, "submitted_at": submitted,
                                  "stdout": str(job.paths.stdout), "stderr": str(job.paths.stderr)}
        atomic_write_json(jobs_file(self.store), index)
        summary = Summary(submitted=len(specs), job_ids=[j.job_id for j in jobs],
                          waited=self.wait_)
        print(f"submitted {len(jobs)} jobs (array {jobs[0].job_id.split('_')[0]}); "
              f"logs in {self.folder}/")
        if self.wait_:
            self.follow(specs, summary)
        return summary

    def follow(self, specs: list[RunSpec], summary) -> None:
        """Poll until every run has a record newer than its submission (or its job vanished)."""
        index = load_jobs(self.store)
        left = {s.run_id: s for s in specs}
        with SweepProgress(self.store, len(specs), enabled=self.show_progress) as progress:
            started: set[str] = set()
            while left:
                live = scheduler_states([index[r]["job_id"] for r in left])
                for run_id, spec in list(left.items()):
                    entry = index[run_id]
                    record = self.store.read(run_id)
                    state = live.get(entry["job_id"])
                    if record and (record.get("finished_at") or "") >= entry["submitted_at"]:
                        pass
                    elif state is None and _gone_long_enough(entry):
                        record = job_vanished(self.store, spec, entry)
                    else:
                        if state is not None:
                            entry.pop("_gone_since", None)
                        if state == "running" and run_id not in started:
                            started.add(run_id)
                            progress.started(spec)
                        continue
                    summary.count(record)
                    if run_id not in started:
                        progress.started(spec)
                    progress.finished(spec, record)
                    del left[run_id]
                progress.refresh([left[r] for r in started if r in left])
                if left:
                    time.sleep(self.poll_s)


def _gone_long_enough(entry: dict) -> bool:
    """squeue forgets a finished job at once; give its record a moment to land first."""
    entry.setdefault("_gone_since", time.monotonic())
    return time.monotonic() - entry["_gone_since"] > 15


def job_vanished(store: Store, spec: RunSpec, entry: dict) -> dict:
    record = {**spec.flat(), "status": "failed", "finished_at": now(), "started_at": None,
              "spec_json": spec.canonical_json(), "slurm_job_id": entry["job_id"],
              "log_path": entry["stderr"],
              "error": f"SLURM job {entry['job_id']} ended without a record "
                       f"(killed, out of memory or time?); see {entry['stderr']}"}
    store.write(record)
    return record


# --- the scheduler's view --------------------------------------------------------------------
def jobs_file(store: Store) -> Path:
    return store.dir / "slurm" / "jobs.json"


def load_jobs(store: Store) -> dict[str, dict]:
    try:
        return json.loads(jobs_file(store).read_text())
    except FileNotFoundError:
        return {}


def scheduler_states(job_ids: list[str]) -> dict[str, str]:
    """job id -> shown state for jobs the scheduler still knows as live.

    ``squeue`` (always there) lists pending, running and requeued jobs; finished ones vanish.
    ``sacct`` is not needed: finished runs are known from their records.
    """
    if not job_ids or not shutil.which("squeue"):
        return {}
    arrays = sorted({j.split("_")[0] for j in job_ids})
    out = subprocess.run(["squeue", "-h", "-r", "-j", ",".join(arrays), "-o", "%i|%T"],
                         capture_output=True, text=True, timeout=60)
    states = {}
    for line in out.stdout.splitlines():
        job_id, _, state = line.strip().partition("|")
        states[job_id] = LIVE_STATES.get(state, state.lower())
    return {j: states[j] for j in job_ids if j in states}


def live_view(store: Store) -> dict[str, dict]:
    """run_id -> {state, job_id, log} for runs whose job the scheduler still holds."""
    index = load_jobs(store)
    states = scheduler_states([e["job_id"] for e in index.values()])
    return {run_id: {"state": states[e["job_id"]], "job_id": e["job_id"], "log": e["stderr"]}
            for run_id, e in index.items() if e["job_id"] in states}


def cancel(store: Store) -> list[str]:
    """Cancel the study's live jobs; returns their ids."""
    live = live_view(store)
    ids = sorted({v["job_id"] for v in live.values()})
    if ids:
        subprocess.run(["scancel", *ids], check=True, timeout=60)
    return ids
