"""A live view of a sweep: runs done / failed / left, and each running run's step and loss.

Runs report progress by writing ``STUDY/work/RUN_ID/progress.json`` (``harness.run``); this
reads those files, so it works the same for subprocesses and for SLURM jobs.
"""

from __future__ import annotations

import json

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from harness.store import Store
from harness.study import RunSpec


class SweepProgress:
    def __init__(self, store: Store, total: int, *, enabled: bool = True,
                 console: Console | None = None):
        self.store, self.enabled = store, enabled
        self.console = console or Console(stderr=True)
        self.counts = {"ok": 0, "failed": 0, "diverged": 0}
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=self.console,
            disable=not enabled, transient=False,
        )
        self.sweep = self.progress.add_task("runs", total=total, info=self._counts())
        self.tasks: dict[str, int] = {}

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        self.progress.__exit__(*exc)

    def _counts(self) -> str:
        c = self.counts
        return f"ok {c['ok']}  failed {c['failed']}  diverged {c['diverged']}"

    def started(self, spec: RunSpec) -> None:
        self.tasks[spec.run_id] = self.progress.add_task(
            f"  {spec.label}", total=spec.train.steps, info="starting")

    def retrying(self, spec: RunSpec, record: dict) -> None:
        self.console.print(f"[yellow]retrying[/] {spec.label}: {record.get('error')}")
        self._drop(spec)

    def finished(self, spec: RunSpec, record: dict) -> None:
        status = record.get("status", "failed")
        self.counts[status] = self.counts.get(status, 0) + 1
        self.progress.update(self.sweep, advance=1, info=self._counts())
        self._drop(spec)
        if status != "ok" and self.enabled:
            why = record.get("error") or f"step {record.get('diverged_step')}"
            self.console.print(f"[red]{status}[/] {spec.label} ({spec.run_id}): {why}")

    def _drop(self, spec: RunSpec) -> None:
        task = self.tasks.pop(spec.run_id, None)
        if task is not None:
            self.progress.remove_task(task)

    def refresh(self, running: list[RunSpec]) -> None:
        for spec in running:
            info = read_progress(self.store, spec.run_id)
            task = self.tasks.get(spec.run_id)
            if info and task is not None:
                loss = info.get("loss")
                self.progress.update(task, completed=info.get("step", 0),
                                     info=f"loss {loss:.3f}" if loss is not None else "")


def read_progress(store: Store, run_id: str) -> dict | None:
    try:
        return json.loads((store.dir / "work" / run_id / "progress.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
