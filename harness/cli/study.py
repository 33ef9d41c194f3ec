"""The commands on a study's runs: ``run``, ``status``, ``cancel``, ``report``, ``plan``,
``export`` (its records, as tables or MLflow runs) and ``compare`` (two studies' records)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from harness.cli.common import (
    ProfileOpt,
    ResultsOpt,
    SetOpt,
    StudyArg,
    finite,
    keep_study,
    load_study,
    output_file,
    save_json,
    writable_store,
)
from harness.errors import HarnessError
from harness.views.console import wide_console

app = typer.Typer()


@app.command()
def run(
    study: StudyArg,
    set_: SetOpt = None,
    profile: ProfileOpt = None,
    results: ResultsOpt = None,
    executor: Annotated[str | None, typer.Option(help="local (default), debug, slurm")] = None,
    max_parallel: Annotated[int | None, typer.Option(
        help="Local runs at the same time", min=1)] = None,
    dry_run: Annotated[bool, typer.Option(help="Print the expanded runs and exit")] = False,
    rerun: Annotated[bool, typer.Option(help="Redo every run, done or not")] = False,
    retry_failed: Annotated[bool, typer.Option(help="Redo only the failed runs")] = False,
    wait: Annotated[bool, typer.Option(help="SLURM: follow the jobs until they end")] = False,
    quiet: Annotated[bool, typer.Option(help="No live progress display")] = False,
    force: Annotated[bool, typer.Option(
        help="Submit runs whose memory estimate exceeds the GPU's memory")] = False,
    calibrate_from: Annotated[str | None, typer.Option(
        "--calibrate-from", help="With --dry-run: predict wall times from a finished study's "
                                 "measured training times (a study file, a store folder or "
                                 "a study's name)")] = None,
) -> None:
    """Run a study's pending runs (skips finished ones); --dry-run shows the plan.

    --dry-run --calibrate-from STUDY adds each run's wall time predicted from STUDY's
    finished runs (time per step and per training GFLOP, fitted per device).

    GPU runs whose estimated peak memory per GPU exceeds estimate.gpu_memory_gb are
    refused before anything is submitted, one line each with what would fit (exit 2);
    --force submits them anyway. train.layout auto takes the cheapest layout that fits.

    --executor slurm: one job array; returns at once, printing the job ids and
    the log folder (--wait follows the jobs). The study's executor.slurm section
    sets partition, account, qos, time_min, gpus_per_run, cpus_per_run, mem_gb,
    constraint, array_parallelism, extra_sbatch and setup; override any of them
    with --set executor.slurm.KEY=VALUE, e.g. --set executor.slurm.partition=gpu.
    """
    import runners
    from harness.cost.estimate import data_path_notes, data_supply_notes
    from harness.cost.memory import MemoryRefusal, plan_sweep, study_plans
    from harness.results.mlflow import prepare_sweep_tracking
    from harness.results.store import Store, results_root
    from harness.views.runs import print_dry_run, print_nothing_to_do, print_sweep, rank_notes

    console = wide_console()
    spec = load_study(study, set_, profile)
    runners.check_executor(executor or spec.executor.name, "--executor")
    if calibrate_from is not None and not dry_run:
        raise HarnessError("--calibrate-from: only with --dry-run (it calibrates the plan)")
    calibration = (_calibration(calibrate_from, results_root(results))
                   if calibrate_from is not None else None)
    store = (Store(results_root(results), spec.name) if dry_run
             else writable_store(results, spec.name))
    chosen = runners.select(spec, store, rerun=rerun, retry_failed=retry_failed)
    memory = study_plans(spec, chosen.specs)
    if dry_run:
        notes = (rank_notes(spec, chosen.specs, executor or spec.executor.name)
                 + data_supply_notes(spec, chosen.specs) + data_path_notes(spec))
        print_dry_run(console, spec, chosen, memory, notes, calibration)
        return
    if not chosen.todo:
        print_nothing_to_do(console, spec, chosen, store, retry_failed)
        return
    try:
        sweep = plan_sweep(spec, chosen.todo, memory, force=force)
    except MemoryRefusal as refused:
        print("\n".join(refused.lines), file=sys.stderr)
        raise
    keep_study(spec, store)
    print_sweep(console, spec, chosen, sweep)
    if warning := prepare_sweep_tracking(spec.tracking, store.root, spec.name):
        console.print(warning, style="yellow")
    summary = runners.dispatch(spec, sweep.specs, results_root=store.root, executor=executor,
                               max_parallel=max_parallel, show_progress=not quiet, wait=wait,
                               fresh=rerun)
    if summary.waited:
        console.print(f"{summary.submitted} runs: {summary.ok} ok, {summary.failed} failed, "
                      f"{summary.diverged} diverged -> {store.runs_dir}")
    if summary.failed:
        raise typer.Exit(1)


def _calibration(given: str, root: Path):
    from harness.cost.estimate import calibrate, pick_calibration

    store = store_of("--calibrate-from", given, root)
    calibration = pick_calibration(calibrate(store.records()))
    if calibration is None:
        raise HarnessError(f"--calibrate-from {given!r}: no finished run in {store.runs_dir} "
                           "with a measured train_time_s, gflops_per_image and batch size")
    return calibration


@app.command()
def status(study: StudyArg, set_: SetOpt = None, profile: ProfileOpt = None,
           results: ResultsOpt = None) -> None:
    """Every run's state (done / failed / diverged / pending / scheduler states) and metrics."""
    from harness.results.store import Store, results_root
    from harness.views.runs import status_table
    from runners import live_view

    spec = load_study(study, set_, profile)
    store = Store(results_root(results), spec.name)
    live = live_view(store)
    wide_console().print(status_table(spec, store, live))


@app.command()
def cancel(study: StudyArg, set_: SetOpt = None, profile: ProfileOpt = None,
           results: ResultsOpt = None) -> None:
    """Cancel the study's live SLURM jobs."""
    from harness.results.store import Store, results_root
    from runners import cancel as cancel_jobs

    spec = load_study(study, set_, profile)
    ids = cancel_jobs(Store(results_root(results), spec.name))
    print(f"cancelled {len(ids)} jobs: {' '.join(ids)}" if ids else "no live jobs")


@app.command()
def report(study: StudyArg, set_: SetOpt = None, profile: ProfileOpt = None,
           results: ResultsOpt = None,
           out: Annotated[Path | None, typer.Option(help="HTML file to write")] = None,
           json_out: Annotated[Path | None, typer.Option(
               "--json", help="Also write the fitted curves, compute multipliers, measured "
                              "matches, claims, joint laws, held-out checks and planned "
                              "against measured as JSON to this file")] = None) -> None:
    """Write the study's HTML report (default: RESULTS/STUDY/report.html)."""
    from harness.results.store import DONE, Store, results_root
    from reports.build import build_report

    spec = load_study(study, set_, profile)
    output_file(json_out, "--json")
    store = (Store(results_root(results), spec.name) if output_file(out, "--out")
             else writable_store(results, spec.name))
    statuses = store.statuses()
    if not any(status in DONE for status in statuses.values()):  # a page of nothing: refuse
        raise HarnessError(
            f"{store.runs_dir}: no finished run of study {spec.name!r} yet ({len(statuses)} "
            f"records, none ok, diverged or pruned); run it first (moe-harness run {study}), "
            "or see its failures with moe-harness status")
    if spec.tune is not None:  # the report reads the tuning's summary from the store
        from runners.tune import refresh_summary

        refresh_summary(spec, store.root)
    print(f"report: {build_report(spec, store, out, json_out=json_out)}")
    if json_out is not None:  # from the page's own analysis, computed once
        print(f"json: {json_out}")


@app.command("plan")
def plan_command(
    study: StudyArg,
    target_quality: Annotated[float, typer.Option(
        "--target-quality", help="Quality to reach, in the metric's units (accuracy 0..1)",
        min=0, callback=finite)],
    quality: Annotated[str | None, typer.Option(
        help="Quality metric (default: the report's primary one, e.g. test_accuracy)")] = None,
    json_out: Annotated[Path | None, typer.Option(
        "--json", help="Also write the plan as JSON to this file")] = None,
    set_: SetOpt = None,
    profile: ProfileOpt = None,
    results: ResultsOpt = None,
) -> None:
    """Predict each router's cheapest configuration that reaches --target-quality.

    Curves of quality against training compute are fitted to the finished runs; the
    candidates are the study's grid (--set train.steps=... to widen it), costed like
    run --dry-run (GFLOP/img, training exaFLOPs, GPU-hours). A prediction, with its
    95% interval; memory is not estimated. A router whose curve mispredicts its own
    costliest configuration when refitted without it gets a warning
    ("held-out check FAILED").
    """
    from harness.results.store import Store, results_root
    from reports.plan import plan_json, plan_rows, print_plan
    from reports.records import load_records

    spec = load_study(study, set_, profile)
    output_file(json_out, "--json")
    store = Store(results_root(results), spec.name)
    rows = plan_rows(spec, load_records(store.runs_dir), target_quality, quality,
                     source=str(store.runs_dir))
    print_plan(rows, spec, wide_console())
    save_json(json_out, plan_json(rows))


@app.command()
def export(
    study: StudyArg,
    to: Annotated[str, typer.Option(
        "--to", help="parquet | csv (the per-run and aggregated tables) | mlflow")] = "parquet",
    out: Annotated[Path | None, typer.Option(
        help="parquet/csv: the per-run table's file; the aggregated one is written beside it "
             "as STEM-aggregated.EXT (default: RESULTS/STUDY/export/runs.EXT)")] = None,
    tracking_uri: Annotated[str | None, typer.Option(
        help="mlflow: a tracking server (http://HOST:PORT) or store URI (default: the "
             "study's tracking.mlflow_uri, else sqlite:///RESULTS/mlflow.db)")] = None,
    set_: SetOpt = None,
    profile: ProfileOpt = None,
    results: ResultsOpt = None,
) -> None:
    """Export a study's records: Parquet/CSV tables for polars, pandas and duckdb, or one
    MLflow run per record (idempotent: matched by run_id)."""
    from harness.results.store import Store, results_root
    from reports.export import FORMATS, export_mlflow, export_tables

    if to not in FORMATS:
        raise HarnessError(f"--to {to!r}: allowed: {', '.join(FORMATS)}")
    spec = load_study(study, set_, profile)
    output_file(out, "--out")
    store = Store(results_root(results), spec.name)
    if to == "mlflow":
        counts = export_mlflow(store, spec.name, tracking_uri or spec.tracking.mlflow_uri)
        print(f"mlflow: experiment {spec.name}: " + ", ".join(
            f"{n} {what}" for what, n in counts.items()))
        return
    runs, aggregated = export_tables(store, to, out)
    print(f"runs: {runs}\naggregated: {aggregated}")


def store_of(option: str, given: str, root: Path):
    """The store ``given`` names for ``option``: a study file (its study's store under
    ``root``), a store folder (``RESULTS/STUDY``), or a study's name under ``root``; one
    line saying so when it has no runs folder."""
    from harness.results.store import Store

    path = Path(given)
    if path.is_file():
        store = Store(root, load_study(path, None, None).name)
    elif path.is_dir() and (path / "runs").is_dir():
        store = Store(path.parent, path.name)
    else:
        store = Store(root, given)
    if not store.runs_dir.is_dir():
        raise HarnessError(f"{option} {given!r}: no study file or store folder of that name "
                           f"and no results at {store.runs_dir}; give a study file, a store "
                           "folder or the name of a study that has run")
    return store


def _compare_side(which: str, given: str, root: Path):
    from reports.records import load_records

    store = store_of(f"compare {which}", given, root)
    frame = load_records(store.runs_dir)
    if frame.height == 0:
        raise HarnessError(f"compare {which} {given!r}: {store.runs_dir} has no records yet")
    return store.dir.name, frame


@app.command()
def compare(
    a: Annotated[str, typer.Argument(
        metavar="A", help="Study A (the baseline): a study file, a store folder or a study's "
                          "name in the results root")],
    b: Annotated[str, typer.Argument(
        metavar="B", help="Study B, compared against A: the same forms")],
    json_out: Annotated[Path | None, typer.Option(
        "--json", help="Also write the whole comparison (every change, both Pareto fronts) "
                       "as JSON to this file")] = None,
    ignore: Annotated[list[str] | None, typer.Option(
        "--ignore", help="A spec field (dotted path, e.g. data.name) left out when matching "
                         "configurations (repeatable)")] = None,
    results: ResultsOpt = None,
) -> None:
    """Compare study B against study A: every configuration both ran (same spec, any
    seeds), the change in each quality and cost metric with its 95% interval, flagged
    where it is beyond the seed noise. Exits 0 whatever is flagged (read --json's
    "flagged" in a CI check)."""
    from harness.results.store import results_root
    from reports.analyses.studies import compare as compare_studies
    from reports.analyses.studies import compare_text

    output_file(json_out, "--json")
    root = results_root(results)
    (name_a, frame_a), (name_b, frame_b) = _compare_side("A", a, root), _compare_side("B", b, root)
    data = compare_studies(frame_a, frame_b, names=(name_a, name_b), ignore=ignore or ())
    print(compare_text(data))
    save_json(json_out, data)
