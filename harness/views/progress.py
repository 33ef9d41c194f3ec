"""A live view of a sweep: runs done / failed / left, and each running run's step and loss.

Runs report progress by writing ``Store.progress_path`` (``harness.runtime.run``); this
reads those files, so it works the same for subprocesses and for SLURM jobs. On a terminal it
is a live display with an ETA; elsewhere (a log file, CI, a SLURM log) it prints one plain line
per run started or finished and a summary line every ``summary_every_s`` seconds.
"""

from __future__ import annotations

import json
import time

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from harness.results.store import Store
from harness.spec.study import RunSpec


class SweepProgress:
    def __init__(self, store: Store, total: int, *, enabled: bool = True,
                 console: Console | None = None, summary_every_s: float = 60.0):
        self.store, self.enabled, self.total = store, enabled, total
        self.console = console or Console(stderr=True)
        self.plain = enabled and not self.console.is_terminal
        self.summary_every_s, self.started_at = summary_every_s, time.monotonic()
        self.last_summary = self.started_at
        self.running: set[str] = set()
        self.counts = {"ok": 0, "failed": 0, "diverged": 0}
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
            console=self.console, disable=not enabled or self.plain, transient=False,
        )
        self.sweep = self.progress.add_task("runs", total=total, info=self._counts())
        self.tasks: dict[str, int] = {}

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        self.progress.__exit__(*exc)
        self._line(self.summary())

    def _counts(self) -> str:
        c = self.counts
        return f"ok {c['ok']}  failed {c['failed']}  diverged {c['diverged']}"

    def _line(self, text: str) -> None:
        """One plain line off a terminal (timestamped), nothing on one."""
        if self.plain:
            self.console.print(f"{time.strftime('%H:%M:%S')} {text}", markup=False,
                               highlight=False, soft_wrap=True)

    def started(self, spec: RunSpec) -> None:
        self.running.add(spec.run_id)
        self._line(f"started {spec.label} ({spec.run_id})")
        self.tasks[spec.run_id] = self.progress.add_task(
            f"  {spec.label}", total=spec.train.steps, info="starting")

    def retrying(self, spec: RunSpec, record: dict) -> None:
        self.running.discard(spec.run_id)
        if self.enabled:
            self.console.print(f"[yellow]retrying[/] {spec.label}: {record.get('error')}")
        self._drop(spec)

    def skipped(self, spec: RunSpec) -> None:
        self.running.discard(spec.run_id)
        self.counts["skipped"] = self.counts.get("skipped", 0) + 1
        self.progress.update(self.sweep, advance=1, info=self._counts())
        self._drop(spec)
        if self.enabled:
            self.console.print(f"[yellow]skipped[/] {spec.label} ({spec.run_id}): another "
                               "process is running it")

    def finished(self, spec: RunSpec, record: dict) -> None:
        self.running.discard(spec.run_id)
        status = record.get("status", "failed")
        self.counts[status] = self.counts.get(status, 0) + 1
        self.progress.update(self.sweep, advance=1, info=self._counts())
        self._drop(spec)
        if status == "ok":
            acc = record.get("test_accuracy")
            self._line(f"ok {spec.label} ({spec.run_id})"
                       + (f": test accuracy {acc:.4f}" if acc is not None else ""))
        elif self.enabled:
            why = record.get("error") or f"step {record.get('diverged_step')}"
            self.console.print(f"[red]{status}[/] {spec.label} ({spec.run_id}): {why}",
                               markup=not self.plain, highlight=False, soft_wrap=True)

    def _drop(self, spec: RunSpec) -> None:
        task = self.tasks.pop(spec.run_id, None)
        if task is not None:
            self.progress.remove_task(task)

    def summary(self) -> str:
        done = sum(self.counts.values())
        elapsed = time.monotonic() - self.started_at
        return (f"{done} of {self.total} done ({self._counts()}), {len(self.running)} running, "
                f"{self.total - done - len(self.running)} waiting; {elapsed / 60:.1f} min")

    def refresh(self, running: list[RunSpec]) -> None:
        if self.plain and time.monotonic() - self.last_summary >= self.summary_every_s:
            self.last_summary = time.monotonic()
            self._line(self.summary())
        for spec in running:
            info = read_progress(self.store, spec.run_id)
            task = self.tasks.get(spec.run_id)
            if info and task is not None:
                loss = info.get("loss")
                self.progress.update(task, completed=info.get("step", 0),
                                     info=f"loss {loss:.3f}" if loss is not None else "")


def read_progress(store: Store, run_id: str) -> dict | None:
    try:
        return json.loads(store.progress_path(run_id).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
