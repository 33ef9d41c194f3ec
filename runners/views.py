"""Rich tables for ``run --dry-run`` and ``status``."""

from __future__ import annotations

from rich.table import Table

from harness.store import Store
from harness.study import Study

STATE_STYLE = {"ok": "green", "failed": "red", "diverged": "yellow", "pending": "dim"}


def _fmt(value, spec: str = ".3f") -> str:
    return "" if value is None else format(value, spec)


def plan_table(study: Study, plan) -> Table:
    table = Table(title=f"{study.name}: {len(plan.specs)} runs, {plan.done} done, "
                        f"{plan.failed} failed, {len(plan.todo)} to run",
                  title_justify="left")
    for col in ("#", "run_id", "model", "seed", "lr", "steps", "batch", "state"):
        table.add_column(col)
    todo = {s.run_id for s in plan.todo}
    for i, spec in enumerate(plan.specs):
        state = plan.statuses.get(spec.run_id, "pending")
        if spec.run_id in todo:
            state += " -> run"
        table.add_row(str(i), spec.run_id, spec.model_config_().spec, str(spec.seed),
                      f"{spec.train.lr:g}", str(spec.train.steps), str(spec.train.batch_size),
                      f"[{STATE_STYLE.get(state.split()[0], '')}]{state}")
    return table


def status_table(study: Study, store: Store, live: dict[str, dict] | None = None) -> Table:
    """Every run of the study: the store's state, else the scheduler's (``live``), else pending."""
    records = {r["run_id"]: r for r in store.records()}
    live = live or {}
    specs = study.expand()
    counts: dict[str, int] = {}
    table = Table(title_justify="left")
    for col in ("run_id", "model", "seed", "state", "job", "test acc", "GFLOP/img",
                "train img/s", "error / log"):
        table.add_column(col)
    for spec in specs:
        record, job = records.get(spec.run_id), live.get(spec.run_id, {})
        state = record["status"] if record else job.get("state", "pending")
        counts[state] = counts.get(state, 0) + 1
        note = (record or {}).get("error") or ""
        if state == "failed" and (record or {}).get("log_path"):
            note = f"{note} (log: {record['log_path']})"
        table.add_row(
            spec.run_id, spec.model_config_().spec, str(spec.seed),
            f"[{STATE_STYLE.get(state, 'cyan')}]{state}",
            str((record or {}).get("slurm_job_id") or job.get("job_id") or ""),
            _fmt((record or {}).get("test_accuracy")),
            _fmt((record or {}).get("gflops_per_image"), ".4f"),
            _fmt((record or {}).get("train_images_per_s"), ".0f"),
            note[:80],
        )
    table.title = f"{study.name}: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    return table
