"""Rich tables for ``run --dry-run`` and ``status``."""

from __future__ import annotations

from rich.table import Table

from harness.results.store import Store
from harness.spec.study import Study

STATE_STYLE = {"ok": "green", "failed": "red", "diverged": "yellow", "pending": "dim"}


def _fmt(value, spec: str = ".3f") -> str:
    return "" if value is None else format(value, spec)


def first_line(text: str | None, width: int = 100) -> str:
    lines = (text or "").strip().splitlines()
    line = lines[0] if lines else ""
    return line if len(line) <= width else line[: width - 1] + "…"


def _elapsed(record: dict) -> str:
    """Wall time of a finished run, from its record's timestamps."""
    import datetime as dt

    try:
        start = dt.datetime.fromisoformat(record["started_at"])
        end = dt.datetime.fromisoformat(record["finished_at"])
    except (KeyError, TypeError, ValueError):
        return ""
    seconds = int((end - start).total_seconds())
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def plan_table(study: Study, chosen, calibration=None) -> Table:
    """The runs a ``run`` would do, each with its estimated cost, and the totals; with a
    ``calibration`` (``harness.cost.estimate.Calibration``), each run's wall time predicted
    from a finished study's measured times too.

    Costs come from the shapes alone (``harness.cost.estimate``): the dataset is not opened and no
    model is built, so this works before the data exists, on the paper's largest models.
    Settings shared by every run (seed, lr, steps, batch) go in the title, not in columns.
    """
    from harness.cost.estimate import (
        CONVENTIONS,
        calibrated_seconds,
        describe,
        describe_calibration,
        study_costs,
        totals,
    )
    from harness.cost.memory import on_gpu

    costs = study_costs(study, chosen.specs)
    todo = {s.run_id for s in chosen.todo}
    gpu = {s.run_id for s in chosen.specs if on_gpu(study, s)}  # GPU-hours of GPU runs only
    knobs = {"seed": lambda s: str(s.seed), "lr": lambda s: f"{s.train.lr:g}",
             "steps": lambda s: f"{s.train.steps:,}", "batch": lambda s: f"{s.train.batch_size:,}"}
    values = {name: [get(s) for s in chosen.specs] for name, get in knobs.items()}
    shared = {n: v[0] for n, v in values.items() if v and len(set(v)) == 1}
    varying = [n for n in knobs if n not in shared]
    title = (f"{study.name}: {len(chosen.specs)} runs, {chosen.done} done, {chosen.failed} failed, "
             f"{len(chosen.todo)} to run")
    if shared:
        title += " (every run: " + ", ".join(f"{n} {v}" for n, v in shared.items()) + ")"
    table = Table(title=title, title_justify="left", caption_justify="left")
    for col in ("#", "run_id", "model", *varying, "state"):
        table.add_column(col)
    calibrated = [] if calibration is None else [
        calibrated_seconds(c, s.train.steps, calibration) for s, c in zip(chosen.specs, costs,
                                                                          strict=True)]
    for col in ("GFLOP/img", "train EF ours", "train EF paper", "GPU-h est.",
                *(["wall calibrated"] if calibrated else [])):
        table.add_column(col, justify="right")
    for i, (spec, cost) in enumerate(zip(chosen.specs, costs, strict=True)):
        state = chosen.statuses.get(spec.run_id, "pending")
        if spec.run_id in todo:
            state += " -> run"
        table.add_row(str(i), spec.run_id, spec.model_config_().spec,
                      *(values[n][i] for n in varying),
                      f"[{STATE_STYLE.get(state.split()[0], '')}]{state}",
                      _num(cost.gflops_per_image), _num(cost.train_exaflops),
                      _num(cost.train_exaflops_paper),
                      _num(cost.gpu_hours) if spec.run_id in gpu else "-",
                      *([duration(calibrated[i])] if calibrated else []))
    rows = [("total", totals(costs))]
    if chosen.todo and len(chosen.todo) != len(chosen.specs):
        rows.append(("to run", totals(c for c in costs if c.run_id in todo)))
    table.add_section()
    for name, t in rows:
        hours = totals(c for c in costs if c.run_id in gpu).gpu_hours
        wall = sum(calibrated)
        if name == "to run":
            hours = totals(c for c in costs if c.run_id in gpu & todo).gpu_hours
            wall = sum(w for w, s in zip(calibrated, chosen.specs, strict=False)
                       if s.run_id in todo)
        table.add_row("", name, f"{t.runs} runs", *([""] * len(varying)), "", "",
                      _num(t.train_exaflops), _num(t.train_exaflops_paper),
                      _num(hours) if gpu else "-", *([duration(wall)] if calibrated else []))
    notes = [CONVENTIONS, describe(study.estimate)]
    if calibration is not None:
        notes.append(describe_calibration(calibration) + " 'wall calibrated': the training "
                     "steps of each run, one after another in the total.")
    if len(gpu) < len(costs):
        notes.append("GPU-h est. '-': CPU runs (train.device cpu, or auto outside a SLURM "
                     "study with executor.slurm.gpus_per_run).")
    gpus = sorted({c.gpus for c in costs})
    if gpus and gpus != [1]:
        notes.append(f"{' or '.join(str(g) for g in gpus)} GPUs per run (train.gpus): a run's "
                     "wall-clock hours are about its GPU-hours / GPUs.")
    assumed = sorted({c.num_classes for c in costs if c.classes_assumed})
    if assumed:
        notes.append(f"data.num_classes unset: the estimate's head assumes {assumed[0]} classes "
                     "(ImageNet-1k); a run uses the dataset's own count.")
    table.caption = "\n".join(notes)
    return table


def duration(seconds: float) -> str:
    """Seconds as '12.3 s', '4.1 min' or '2.30 h'."""
    if seconds < 120:
        return f"{seconds:.3g} s"
    return f"{seconds / 60:.3g} min" if seconds < 7200 else f"{seconds / 3600:.3g} h"


def _num(value: float) -> str:
    """A cost for the plan: 4 significant digits, thousands grouped, tiny ones as 1.2e-05."""
    if value == 0:
        return "0"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.2e}" if abs(value) < 1e-3 else f"{value:.4g}"


def status_table(study: Study, store: Store, live: dict[str, dict] | None = None) -> Table:
    """Every run of the study: the store's state, else the scheduler's (``live``), else pending;
    then every file of the runs folder that is not a valid record, as a ``problem`` row."""
    valid, problems = store.scan()
    records = {r["run_id"]: r for r in valid}
    live = live or {}
    specs = study.expand()
    counts: dict[str, int] = {}
    table = Table(title_justify="left")
    ranks = any(s.train.gpus > 1 for s in specs)  # a column of the runs' ranks (train.gpus)
    for col in ("run_id", "model", "seed", *(("ranks",) if ranks else ()), "state", "job",
                "elapsed", "test acc", "GFLOP/img", "train img/s", "error / log"):
        table.add_column(col, overflow="fold" if col == "error / log" else "ellipsis")
    for spec in specs:
        record, job = records.get(spec.run_id), live.get(spec.run_id, {})
        # A live job of a run that already has a record is a retry in flight: show the job.
        state = job.get("state") if job else (record or {}).get("status", "pending")
        counts[state] = counts.get(state, 0) + 1
        rec = (record or {}) if not job else {}
        note = first_line(rec.get("error"))
        if state == "failed" and rec.get("log_path"):
            note = f"{note} (log: {rec['log_path']})"
        table.add_row(
            spec.run_id, spec.model_config_().spec, str(spec.seed),
            *((str(rec.get("ranks") or spec.train.gpus),) if ranks else ()),
            f"[{STATE_STYLE.get(state, 'cyan')}]{state}",
            str(job.get("job_id") or rec.get("slurm_job_id") or ""),
            job.get("elapsed") or _elapsed(rec),
            _fmt(rec.get("test_accuracy")),
            _fmt(rec.get("gflops_per_image"), ".4f"),
            _fmt(rec.get("train_images_per_s"), ".0f"),
            note,
        )
    for path, why in problems:
        counts["problem"] = counts.get("problem", 0) + 1
        table.add_row(path.stem, "", "", *(("",) if ranks else ()), "[red]problem", "", "", "",
                      "", "", first_line(f"{path.name}: {why}"))
    table.title = f"{study.name}: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    return table


def print_dry_run(console, study: Study, chosen, memory: dict, notes: list[str],
                  calibration=None) -> None:
    """``run --dry-run``: the runs and their costs (with ``calibration``, their calibrated
    wall times), their memory per GPU (``memory``: the plans of
    ``harness.cost.memory.study_plans``), then the data notes (``DATA-BOUND`` lines in red,
    ``WARNING`` lines in yellow)."""
    from harness.views.memory import memory_table

    console.print(plan_table(study, chosen, calibration))
    console.print(memory_table(study, chosen.specs, memory))
    for line in notes:
        console.print(line, style="bold red" if line.startswith("DATA-BOUND") else
                      "yellow" if line.startswith("WARNING") else None)


def rank_notes(study: Study, specs, executor: str) -> list[str]:
    """The dry run's line for runs of several ranks on this machine (``local``, ``debug``)."""
    ranks = sorted({s.train.gpus for s in specs if s.train.gpus > 1})
    if not ranks or executor == "slurm":
        return []
    return [f"{' or '.join(map(str, ranks))} ranks on this machine per run (train.gpus; "
            f"{executor} executor: PyTorch's elastic launcher, one rank per GPU, gloo ranks on "
            f"the CPU); executor.max_parallel ({study.executor.max_parallel}) counts ranks"]


def print_nothing_to_do(console, study: Study, chosen, store: Store, retry_failed: bool) -> None:
    """``run`` with no run selected: how many are done, and how to retry the failed ones."""
    what = "failed runs to retry" if retry_failed else "pending runs"
    console.print(f"Nothing to do: no {what}; {chosen.done} of {len(chosen.specs)} "
                  f"runs of {study.name} are done ({store.runs_dir}).")
    if chosen.failed and not retry_failed:
        console.print(f"{chosen.failed} failed: --retry-failed runs them again.")


def print_sweep(console, study: Study, chosen, sweep) -> None:
    """What ``run`` submits (``sweep``: ``harness.cost.memory.plan_sweep``'s): the runs forced
    past the memory check, the layouts ``train.layout: auto`` chose, the counts."""
    if sweep.forced:
        console.print(f"[yellow]--force: {sweep.forced} runs may run out of GPU memory")
    if sweep.auto_layouts:
        console.print("train.layout auto (the cheapest layout that fits): " + ", ".join(
            f"{layout} for {n} runs" for layout, n in sweep.auto_layouts.items()))
    console.print(f"{study.name}: {len(chosen.todo)} to run, {chosen.done} done of "
                  f"{len(chosen.specs)}")
