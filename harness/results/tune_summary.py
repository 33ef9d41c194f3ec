"""What a tuning leaves in the store: ``RESULTS/STUDY/tune/summary.json``.

``moe-harness tune`` (``runners.tune``) writes it from the Optuna storage when a call ends,
and ``tune --show`` and ``report`` refresh it first; the terminal view
(``harness.views.tune``) and the report's tuning section (``reports.page.sections``) read this file
alone, so neither needs Optuna, the storage or the tuner. The storage is named without its
password.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from harness.errors import HarnessError
from harness.results.store import tune_dir


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Objective(_Frozen):
    metric: str
    direction: Literal["maximize", "minimize"]


class Trial(_Frozen):
    number: int
    state: Literal["COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING"]
    values: list[float] | None = None  # one per objective, COMPLETE trials only
    params: str = ""  # the tuned axes as the trial's run uses them
    run_id: str | None = None
    feasible: bool = True  # every constraint held (unmeasured: not feasible)


class TuneSummary(_Frozen):
    study: str  # the Optuna study's name
    storage: str  # its URL, without a password
    dashboard: list[str]  # the optuna-dashboard command line that opens the storage
    objectives: list[Objective]
    constraints: list[str] = []  # e.g. "gflops_per_image <= 0.5"
    counts: dict[str, int]  # complete, pruned, failed, stale, running, waiting, finished
    best: list[int] = []  # the best trial, or the Pareto set (feasible trials), by number
    importances: dict[str, dict[str, float]] = {}  # objective -> parameter -> fANOVA share
    trials: list[Trial] = []

    @property
    def metrics(self) -> list[str]:
        return [o.metric for o in self.objectives]

    @property
    def multi(self) -> bool:
        return len(self.objectives) > 1

    def best_trials(self) -> list[Trial]:
        by_number = {t.number: t for t in self.trials}
        return [by_number[n] for n in self.best if n in by_number]


def summary_path(store_dir: Path) -> Path:
    return tune_dir(store_dir) / "summary.json"


def write_summary(store_dir: Path, summary: TuneSummary) -> Path:
    from harness.results.store import atomic_write_json

    return atomic_write_json(summary_path(store_dir), summary.model_dump(mode="json"))


def read_summary(store_dir: Path) -> TuneSummary | None:
    """The study's tuning summary; None before any tuning; a damaged file is one clear error."""
    path = summary_path(store_dir)
    try:
        return TuneSummary.model_validate_json(path.read_bytes())
    except FileNotFoundError:
        return None
    except ValidationError as err:
        e = err.errors()[0]
        where = ".".join(str(p) for p in e["loc"]) or "(file)"
        raise HarnessError(f"{path}: {where}: {e['msg']}; run 'moe-harness tune STUDY --show' "
                           f"to write it again") from None
