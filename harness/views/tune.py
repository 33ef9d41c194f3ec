"""``tune``'s terminal views: the trials' live display while workers run, and ``tune --show``
(the best trial or the Pareto set, and parameter importances) from the store's tuning summary.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable

from rich.console import Console
from rich.table import Table

from harness.results.tune_summary import TuneSummary

#: Once every trial is finished, how long to wait for the workers to say they are done
#: (SLURM without accounting may never say so).
WORKERS_GRACE_S = 120


def follow_trials(jobs, poll: Callable[[], dict[str, int]], trials: int, before: dict[str, int],
                  console: Console, enabled: bool) -> None:
    """Show trials finished / running until the ``jobs`` end; ``poll`` returns the counts."""
    from rich import progress as rp

    progress = rp.Progress(rp.TextColumn("trials"), rp.BarColumn(), rp.MofNCompleteColumn(),
                           rp.TextColumn("{task.fields[info]}"), rp.TimeElapsedColumn(),
                           console=console, disable=not enabled)
    with progress:
        task = progress.add_task("trials", total=trials, completed=before["finished"], info="")
        all_done_at = None
        while True:
            running = [j for j in jobs if not j.done()]
            c = poll()
            progress.update(task, completed=min(c["finished"], trials),
                            info=f"complete {c['complete']}  pruned {c['pruned']}  "
                                 f"failed {c['failed']}  running {c['running']}")
            if not running:
                return
            if c["finished"] >= trials and not c["running"]:
                all_done_at = all_done_at or time.monotonic()
                if time.monotonic() - all_done_at > WORKERS_GRACE_S:
                    return
            time.sleep(2.0)


def counts_line(c: dict[str, int]) -> str:
    return (f"{c['finished']} trials finished ({c['complete']} complete, {c['pruned']} pruned, "
            f"{c['failed']} failed), {c['stale']} stale (re-queued), {c['running']} running, "
            f"{c['waiting']} queued")


def best_table(s: TuneSummary) -> Table:
    best = s.best_trials()
    title = ("Best trial" if not s.multi else
             f"Pareto set ({len(best)} trial{'s' if len(best) != 1 else ''}): " + ", ".join(
                 f"{o.direction[:3]} {o.metric}" for o in s.objectives))
    if s.constraints:
        title += " (feasible: " + ", ".join(s.constraints) + ")"
    table = Table(title=title, title_justify="left")
    for col in ("trial", *s.metrics, "parameters", "run_id"):
        table.add_column(col, justify="right" if col in s.metrics else "left")
    for t in best:
        table.add_row(str(t.number), *[format(v, ".4g") for v in t.values or []], t.params,
                      str(t.run_id))
    return table


def importance_table(s: TuneSummary) -> Table:
    imp = s.importances
    names = sorted({p for d in imp.values() for p in d},
                   key=lambda p: -max(d.get(p, 0.0) for d in imp.values()))
    table = Table(title="Parameter importances (fANOVA, share of each objective's variance)",
                  title_justify="left")
    table.add_column("parameter")
    for metric in imp:
        table.add_column(metric, justify="right")
    for name in names:
        table.add_row(name, *[format(imp[m].get(name, 0.0), ".3f") for m in imp])
    return table


def print_summary(s: TuneSummary, console: Console | None = None) -> None:
    """``tune --show``: counts, the storage and how to browse it, best trials, importances."""
    console = console or Console()
    console.print(f"[bold]{s.study}[/]: {counts_line(s.counts)}; storage {s.storage}")
    console.print(f"Browse it: {shlex.join(s.dashboard)}", soft_wrap=True)
    if s.best:
        console.print(best_table(s))
    else:
        console.print("No complete" + (" feasible" if s.constraints else "") + " trial yet.")
    if s.importances:
        console.print(importance_table(s))
    else:
        console.print("Parameter importances need at least 2 complete trials.")
