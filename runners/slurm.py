"""Run specs as one SLURM job array through submitit.

``run`` submits the pending runs as one job array and returns at once (job ids and log folder
printed); ``--wait`` follows the jobs until each has a record. Runs whose job the scheduler
still holds (pending, running, requeued) are not submitted again: ``run --wait`` on a study
with live jobs just follows them.

The study's ``executor.slurm`` section (``harness.spec.config.SlurmConfig``) gives partition,
account, qos, time limit, GPUs / CPUs / memory per run, constraint, array parallelism, extra
sbatch flags and setup lines; ``--set executor.slurm.KEY=VALUE`` overrides any of them.
A run's ranks are ``train.gpus``; ``gpus_per_run`` must equal it (0: one CPU task, for
``train.gpus: 1``), or the study is refused when loaded (``check_slurm_ranks``): the memory
plan and the job then agree. With ``gpus_per_run: N`` a run's job has N tasks (one per GPU)
that train one model across them (the layout of ``train.layout``), spread evenly over
``nodes`` nodes (N / nodes tasks and GPUs on each; ``mem_gb`` is per node); rank 0 writes the
record (``harness.runtime.distributed``).

Preemption and time limits. Each job is ``submitit.helpers.Checkpointable``: SLURM sends USR2
``signal_delay_s`` before the time limit (``--signal``), and before a preemption where
slurmctld has ``SlurmctldParameters=preempt_send_user_signal``; submitit then requeues the job
(``scontrol requeue``) and the run resumes from its last training checkpoint
(``workdir/checkpoint.pt``, every ``train.checkpoint_every`` steps), not from zero. An outside
requeue (``scontrol requeue``, a node failure) resumes from the same file. submitit counts a
signal as a time-out, not a preemption, once the job has run min(0.8 T, T - 10 min) of its
limit T, and a job that times out more than 3 times (submitit's ``max_num_timeout``) ends
as ``failed`` (submitit's ``UncompletedJobError``). A run that fails for real ends as a
``failed`` record with the error and the job's log path; one whose job dies without writing a
record (killed, out of memory) gets a ``failed`` record from ``--wait``.

Job handles are kept in ``STUDY/slurm/jobs.json`` (run_id -> job id, submission time, logs),
so that ``status`` and ``cancel`` work from a new shell days later; the submitit folder
(pickles and logs) is ``STUDY/slurm/JOBID/``, under the results root, which must be on the
shared file system of the cluster.
"""

from __future__ import annotations

import json
import math
import shutil
import signal
import subprocess
import time
from pathlib import Path

import submitit

from harness.errors import HarnessError
from harness.results.store import Store, atomic_write_json
from harness.spec.config import check_slurm_ranks
from harness.spec.study import RunSpec, Study
from runners.base import Runner, Summary

# squeue states of jobs not finished yet, mapped to what ``status`` shows. A pending job that
# has run before (RestartCnt > 0) shows as "requeued".
LIVE_STATES = {
    "PENDING": "pending", "CONFIGURING": "running", "RUNNING": "running",
    "COMPLETING": "running", "REQUEUED": "requeued", "REQUEUE_HOLD": "requeued",
    "REQUEUE_FED": "requeued", "RESIZING": "running", "SUSPENDED": "suspended",
    "PREEMPTED": "requeued", "SIGNALING": "running", "STAGE_OUT": "running",
}
VANISHED_AFTER_S = 15.0  # a job gone from squeue without a record: wait this long for it


class SchedulerError(HarnessError):
    """squeue (or scancel) did not answer; nothing can be said about the jobs right now."""


class RunJob(submitit.helpers.Checkpointable):
    """The job's callable: ``execute`` resumes from the run's checkpoint when requeued.

    ``checkpoint`` (submitit's default) resubmits the same spec; the training state lives in
    the run's workdir, so nothing else needs pickling.
    """

    def __call__(self, spec: RunSpec, results_root: str, fresh: bool = False) -> dict | None:
        # submitit only logs SIGTERM (the job goes on until USR2 or the kill). Ignoring it
        # instead is the same for this process, and its children inherit the ignore: the
        # `scontrol requeue` that submitit's USR2 handler runs must outlive the SIGTERM which
        # that very requeue sends to every process of the job, or the handler raises inside
        # training and the run would record a failure although SLURM requeued it.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        from harness.runtime.run import execute

        return execute(spec, results_root, fresh=fresh)


def executor_parameters(study: Study) -> dict:
    """submitit (AutoExecutor) parameters of the study's ``executor.slurm`` section."""
    cfg = study.executor.slurm
    tasks = max(1, cfg.gpus_per_run)
    params = {
        "name": f"moe-{study.name}", "timeout_min": cfg.time_min,
        # cpus_per_run is per run: split over its tasks (one per GPU)
        "cpus_per_task": max(1, math.ceil(cfg.cpus_per_run / tasks)),
        "slurm_array_parallelism": cfg.array_parallelism,
        "slurm_signal_delay_s": cfg.signal_delay_s,
        "slurm_additional_parameters": dict(cfg.extra_sbatch),
        "slurm_setup": list(cfg.setup),
    }
    optional = {"slurm_partition": cfg.partition, "slurm_account": cfg.account,
                "slurm_qos": cfg.qos, "slurm_constraint": cfg.constraint, "mem_gb": cfg.mem_gb}
    params.update({k: v for k, v in optional.items() if v is not None})
    if cfg.gpus_per_run:  # one task per GPU, on cfg.nodes nodes; rank 0 writes the record
        per_node = cfg.gpus_per_run // cfg.nodes
        params.update(gpus_per_node=per_node, tasks_per_node=per_node)
        if cfg.nodes > 1:
            params["nodes"] = cfg.nodes
    return params


class SlurmRunner(Runner):
    """Each run a task of one SLURM job array, with the study's ``executor.slurm`` settings;
    the jobs outlive this process (``wait`` follows them)."""

    name = "slurm"
    remote = True

    def __init__(self, study: Study, store: Store, *, poll_s: float = 2.0, **options):
        if not shutil.which("sbatch"):
            raise HarnessError("--executor slurm: 'sbatch' is not on PATH; is this a SLURM "
                               "login node (or is SLURM_CONF set)?")
        super().__init__(study, store, **options)
        self.poll_s = poll_s

    @classmethod
    def make_executor(cls, folder: Path, study: Study, *,
                      timeout_min: int = 24 * 60) -> submitit.AutoExecutor:
        """The job's time limit is ``executor.slurm.time_min``, not ``timeout_min``."""
        executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
        executor.update_parameters(**executor_parameters(study))
        return executor

    @classmethod
    def worker_executor(cls, folder: Path, study: Study, *, workers: int,
                        timeout_min: int = 24 * 60) -> submitit.AutoExecutor:
        """The study's ``executor.slurm`` settings, as for a sweep, but one task a worker."""
        executor = cls.make_executor(folder, study, timeout_min=timeout_min)
        executor.update_parameters(
            name=f"tune-{study.name}", tasks_per_node=1,
            slurm_array_parallelism=min(workers, study.executor.slurm.array_parallelism))
        return executor

    @classmethod
    def live(cls, store: Store) -> dict[str, dict]:
        return live_view(store)

    @classmethod
    def cancel(cls, store: Store) -> list[str]:
        return cancel(store)

    def run(self, specs: list[RunSpec]) -> Summary:
        for spec in specs:  # also when --executor slurm runs a study of another executor
            check_slurm_ranks(self.study.executor.slurm, spec.train.gpus, "--executor slurm")
        live = live_view(self.store)
        queued = [s for s in specs if s.run_id in live]
        fresh = [s for s in specs if s.run_id not in live]
        if queued:
            ids = " ".join(sorted({live[s.run_id]["job_id"] for s in queued}))
            print(f"{len(queued)} runs already have a live job (not submitted again): {ids}")
        # submitted: the runs this call handles (followed ones too, with --wait)
        summary = Summary(submitted=len(specs) if self.wait else len(fresh), waited=self.wait)
        if fresh:
            jobs = self.submit(fresh)
            summary.job_ids = [j.job_id for j in jobs]
            if len(jobs) == 1:  # submitit submits a single job, not an array of one
                print(f"submitted 1 run as job {jobs[0].job_id}; "
                      f"logs: {Path(jobs[0].paths.stderr).parent}/")
            else:
                array = jobs[0].job_id.split("_")[0]
                logs = self.store.jobs_folder("slurm").parent
                print(f"submitted {len(jobs)} runs as job array {array} ({jobs[0].job_id} .. "
                      f"{jobs[-1].job_id}); logs: {logs}/{array}_*/")
            print(f"follow them with: moe-harness status {self.study.source or self.study.name}"
                  f" --results {self.store.root}  (or 'cancel' them)")
        if self.wait:
            try:
                self.follow(queued + fresh, summary)
            except KeyboardInterrupt:
                print("\nstopped following; the jobs go on (moe-harness status / cancel)")
                summary.waited = False
        return summary

    def submit(self, specs: list[RunSpec]) -> list:
        """Submit ``specs`` as one job array and record the jobs in ``jobs.json``."""
        from harness.runtime.run import now

        submitted = now()
        try:
            executor = self.make_executor(self.store.jobs_folder(self.name), self.study)
            jobs = executor.map_array(RunJob(), specs, [str(self.store.root)] * len(specs),
                                      [self.fresh] * len(specs))
        except (submitit.core.utils.UncompletedJobError,
                submitit.core.utils.FailedSubmissionError, OSError) as err:
            lines = [x for x in str(err).splitlines() if "error:" in x] or [str(err)]
            raise HarnessError(f"sbatch refused the jobs of {self.study.name}: "
                               f"{lines[0].strip()}") from err
        index = load_jobs(self.store)
        for spec, job in zip(specs, jobs, strict=True):
            index[spec.run_id] = {"job_id": job.job_id, "submitted_at": submitted,
                                  "stdout": str(job.paths.stdout),
                                  "stderr": str(job.paths.stderr)}
        atomic_write_json(self.store.slurm_jobs_file, index)
        return jobs

    def follow(self, specs: list[RunSpec], summary: Summary) -> None:
        """Poll until every run has the record its job wrote (or its job vanished without one).

        A record counts when it names the job (``slurm_job_id``) and its latest attempt: an
        older record of the same run (a failure being retried), or one written by an attempt
        that was requeued after all, does not. Scheduler hiccups (squeue failing) are waited
        out, not taken as the jobs being gone.
        """
        from harness.views.progress import SweepProgress

        index = load_jobs(self.store)
        left = {s.run_id: s for s in specs}
        gone_since: dict[str, float] = {}
        shown: dict[str, str] = {}
        with SweepProgress(self.store, len(specs), enabled=self.show_progress) as progress:
            started: set[str] = set()
            while left:
                try:
                    live = scheduler_states([index[r]["job_id"] for r in left])
                except SchedulerError as err:
                    progress.console.print(f"[yellow]{err}; retrying[/]")
                    time.sleep(max(self.poll_s, 5.0))
                    continue
                for run_id, spec in list(left.items()):
                    entry = index[run_id]
                    record = self.store.read(run_id)
                    job = live.get(entry["job_id"])
                    if record is not None and record_of_job(record, entry, job):
                        pass
                    elif job is None:
                        gone_since.setdefault(run_id, time.monotonic())
                        if time.monotonic() - gone_since[run_id] < VANISHED_AFTER_S:
                            continue
                        record = job_vanished(self.store, spec, entry)
                    else:
                        gone_since.pop(run_id, None)
                        state = job["state"]
                        if state != shown.get(run_id) and state == "requeued":
                            progress.console.print(
                                f"[cyan]requeued[/] {spec.label} ({entry['job_id']}, restart "
                                f"{job['restarts']}): resumes from its last checkpoint")
                        shown[run_id] = state
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


def record_of_job(record: dict, entry: dict, job: dict | None = None) -> bool:
    """Whether ``record`` was written by the job of index ``entry`` (not an older job) and,
    while the scheduler still holds that job (``job``, its squeue view), by its latest attempt
    (a job requeued after writing its record runs again and writes a new one)."""
    if record.get("slurm_job_id") is None:
        return (record.get("finished_at") or "") >= entry["submitted_at"]
    if str(record["slurm_job_id"]) != entry["job_id"]:
        return False
    if job is None or record.get("slurm_restarts") is None:
        return True
    return record["slurm_restarts"] >= job["restarts"] and job["state"] == "running"


def job_vanished(store: Store, spec: RunSpec, entry: dict) -> dict:
    """A ``failed`` record for a job that left the queue without writing one."""
    from harness.runtime.run import failed_record

    record = store.read(spec.run_id)
    if record is not None and record_of_job(record, entry):
        return record  # it landed after all
    record = failed_record(spec, f"SLURM job {entry['job_id']} ended without a record "
                                 f"(killed, out of memory or time?); see {entry['stderr']}",
                          slurm_job_id=entry["job_id"], log_path=entry["stderr"])
    store.write(record)
    return record


# --- the scheduler's view --------------------------------------------------------------------
def load_jobs(store: Store) -> dict[str, dict]:
    try:
        return json.loads(store.slurm_jobs_file.read_text())
    except FileNotFoundError:
        return {}


SQUEUE_FIELDS = ("JobArrayID", "State", "TimeUsed", "RestartCnt", "Reason")


def scheduler_states(job_ids: list[str]) -> dict[str, dict]:
    """job id -> {state, elapsed, restarts, reason} for jobs the scheduler still holds.

    ``squeue`` (always there) lists pending, running and requeued jobs; finished ones vanish
    (finished runs are known from their records, so ``sacct`` is not needed). Raises
    :class:`SchedulerError` when squeue fails for another reason than unknown job ids.
    """
    if not job_ids or not shutil.which("squeue"):
        return {}
    arrays = sorted({j.split("_")[0] for j in job_ids})
    fmt = ",".join(f"{f}:100|" for f in SQUEUE_FIELDS)
    try:
        out = subprocess.run(["squeue", "-h", "-r", "-j", ",".join(arrays), "-O", fmt],
                             capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise SchedulerError(f"squeue did not answer: {err}") from err
    if out.returncode != 0:
        if "Invalid job id" in out.stderr:  # every job has left the controller's memory
            return {}
        raise SchedulerError(f"squeue failed: {out.stderr.strip() or out.returncode}")
    jobs = {}
    for line in out.stdout.splitlines():
        parts = [p.strip() for p in line.split("|")]
        if len(parts) < len(SQUEUE_FIELDS):
            continue
        job_id, state, elapsed, restarts, reason = parts[:len(SQUEUE_FIELDS)]
        restarts = int(restarts) if restarts.isdigit() else 0
        shown = LIVE_STATES.get(state, state.lower())
        if shown == "pending" and restarts:
            shown = "requeued"
        jobs[job_id] = {"state": shown, "elapsed": elapsed, "restarts": restarts,
                        "reason": reason, "slurm_state": state}
    return {j: jobs[j] for j in job_ids if j in jobs}


def live_view(store: Store) -> dict[str, dict]:
    """run_id -> {state, job_id, elapsed, restarts, reason, log} for runs whose job the
    scheduler still holds and whose record is not in yet (a job that wrote its run's record
    shows as running for a moment while it exits: that run is done). None if squeue fails:
    the store alone then speaks."""
    index = load_jobs(store)
    try:
        jobs = scheduler_states([e["job_id"] for e in index.values()])
    except SchedulerError:
        return {}
    live = {}
    for run_id, entry in index.items():
        job = jobs.get(entry["job_id"])
        if job is None:
            continue
        record = store.read(run_id)
        if record is not None and record_of_job(record, entry, job):
            continue
        live[run_id] = {**job, "job_id": entry["job_id"], "log": entry["stderr"]}
    return live


def cancel(store: Store) -> list[str]:
    """Cancel the study's live jobs; returns their ids."""
    live = live_view(store)
    ids = sorted({v["job_id"] for v in live.values()})
    if ids:
        out = subprocess.run(["scancel", *ids], capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            raise SchedulerError(f"scancel failed: {out.stderr.strip() or out.returncode}")
    return ids
