"""``moe-harness tune``: Optuna over a study's ``tune:`` space (``runners.tune``)."""

from __future__ import annotations

from typing import Annotated

import typer

from harness.cli.common import (
    ProfileOpt,
    ResultsOpt,
    SetOpt,
    StudyArg,
    keep_study,
    load_study,
    writable_store,
)
from harness.views.console import wide_console

app = typer.Typer()


@app.command()
def tune(
    study: StudyArg,
    trials: Annotated[int | None, typer.Option(
        help="Finish this many trials in all (default: tune.trials)", min=1)] = None,
    workers: Annotated[int | None, typer.Option(
        help="Workers pulling trials from the shared storage (default: tune.workers)",
        min=1)] = None,
    executor: Annotated[str | None, typer.Option(
        help="Where workers run: local (default), debug (in this process), slurm")] = None,
    storage: Annotated[str | None, typer.Option(
        help="Optuna storage: sqlite:///PATH, journal:PATH, postgresql+psycopg2://USER@HOST/DB "
             "(default: RESULTS/STUDY/tune/optuna.db; a journal file for SLURM)")] = None,
    show: Annotated[bool, typer.Option(
        "--show", help="Print the best trial (or Pareto set) and parameter importances")] = False,
    wait: Annotated[bool, typer.Option(help="SLURM: follow the workers until they end")] = False,
    quiet: Annotated[bool, typer.Option(help="No live progress display")] = False,
    set_: SetOpt = None,
    profile: ProfileOpt = None,
    results: ResultsOpt = None,
) -> None:
    """Tune a study's `tune:` space with Optuna; running it again continues the same study."""
    from harness.results.storage import check_storage
    from harness.results.store import results_root
    from runners import check_executor
    from runners.tune import show as show_tuning
    from runners.tune import tune as run_tuning
    from runners.tune.checks import fell_short

    spec = load_study(study, set_, profile)
    if executor is not None:
        check_executor(executor, "--executor")
    if storage is not None:  # as doctor --storage checks it
        check_storage(storage, "--storage")
    if show:
        show_tuning(spec, results_root(results), storage, wide_console())
        return
    store = writable_store(results, spec.name)
    keep_study(spec, store)
    summary = run_tuning(spec, results_root=store.root, trials=trials, workers=workers,
                         executor=executor, storage=storage, wait=wait, show_progress=not quiet)
    if fell_short(summary, wait=wait):
        raise typer.Exit(1)
