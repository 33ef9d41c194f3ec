"""A tuning's results: the best trial (or the Pareto set), parameter importances, and the
summary written into the store for ``tune --show`` and the report
(``harness.results.tune_summary``).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from harness.errors import HarnessError
from harness.results.store import Store
from harness.results.tune_summary import Objective, Trial, TuneSummary, write_summary
from harness.spec.study import Study
from runners.tune.liveness import counts
from runners.tune.space import describe_params, short
from runners.tune.storage import dashboard_command, existing_storage, open_study, without_password

if TYPE_CHECKING:
    from runners.tune.schema import TuneConfig


def load_tuning(study: Study, results_root: Path, storage: str | None = None):
    """(config, Optuna study, storage URL) of an existing tuning, or None when no storage
    exists yet (an explicit ``storage`` that cannot be opened is an error)."""
    from runners.tune.config import parse

    cfg = parse(study)
    url = existing_storage(cfg, Store(results_root, study.name).dir, storage)
    if url is None:
        return None
    try:
        return cfg, open_study(study, cfg, url, heartbeats=False), url
    except HarnessError:
        if storage:
            raise
        return None


def feasible(trial) -> bool:
    """Every constraint of the trial held (Optuna's convention: a value <= 0)."""
    return all(v <= 0 for v in (trial.constraints or {}).values())


def best_trials(ostudy, cfg: TuneConfig) -> list:
    """The best trial (one objective) or the Pareto set (several), feasible ones only."""
    from optuna.trial import TrialState as S

    done = [t for t in ostudy.get_trials(deepcopy=False, states=(S.COMPLETE,)) if feasible(t)]
    if not done:
        return []
    if not cfg.multi:
        sign = 1 if cfg.directions[0] == "maximize" else -1
        return [max(done, key=lambda t: sign * t.values[0])]
    return pareto(done, cfg.directions)


def pareto(trials: list, directions: list[str]) -> list:
    """The trials no other trial dominates, best first by the first objective."""
    signs = [1 if d == "maximize" else -1 for d in directions]

    def dominates(a, b) -> bool:
        va = [s * v for s, v in zip(signs, a.values, strict=True)]
        vb = [s * v for s, v in zip(signs, b.values, strict=True)]
        return all(x >= y for x, y in zip(va, vb, strict=True)) and any(
            x > y for x, y in zip(va, vb, strict=True))

    front = [t for t in trials if not any(dominates(o, t) for o in trials if o is not t)]
    return sorted(front, key=lambda t: [-s * v for s, v in zip(signs, t.values, strict=True)])


def importances(ostudy, cfg: TuneConfig) -> dict[str, dict[str, float]]:
    """Parameter importances (fANOVA) per objective; empty when too few trials."""
    import optuna
    from optuna.trial import TrialState as S

    if len(ostudy.get_trials(deepcopy=False, states=(S.COMPLETE,))) < 2:
        return {}
    out = {}
    for i, metric in enumerate(cfg.metrics):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out[metric] = optuna.importance.get_param_importances(
                    ostudy, target=lambda t, i=i: t.values[i],
                    evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
        except (ValueError, RuntimeError):
            continue  # e.g. every parameter constant so far
    return out


def constraint_text(cfg: TuneConfig) -> list[str]:
    """Each constraint as people write it: ``gflops_per_image <= 0.5``."""
    out = []
    for k in cfg.constraints:
        bounds = ([f"<= {short(k.max)}"] if k.max is not None else []) + \
            ([f">= {short(k.min)}"] if k.min is not None else [])
        out.append(f"{k.metric} " + " and ".join(bounds))
    return out


def summarise(study: Study, cfg: TuneConfig, ostudy, url: str) -> TuneSummary:
    """What the store keeps of the tuning: counts, every trial, the best, the importances."""
    trials = ostudy.get_trials(deepcopy=False)
    return TuneSummary(
        study=ostudy.study_name, storage=without_password(url), dashboard=dashboard_command(url),
        objectives=[Objective(metric=o.metric, direction=o.direction) for o in cfg.objectives],
        constraints=constraint_text(cfg), counts=counts(trials),
        best=[t.number for t in best_trials(ostudy, cfg)], importances=importances(ostudy, cfg),
        trials=[Trial(number=t.number, state=t.state.name,
                      values=list(t.values) if t.state.name == "COMPLETE" else None,
                      params=describe_params(study, cfg, t.params),
                      run_id=t.user_attrs.get("run_id"), feasible=feasible(t))
                for t in trials])


def refresh_summary(study: Study, results_root: Path,
                    storage: str | None = None) -> TuneSummary | None:
    """Summarise the study's tuning storage into the store; None when it has none yet."""
    loaded = load_tuning(study, results_root, storage)
    if loaded is None:
        return None
    summary = summarise(study, *loaded)
    write_summary(Store(results_root, study.name).dir, summary)
    return summary


def show(study: Study, results_root: Path, storage: str | None = None, console=None) -> None:
    """Print the best trial or the Pareto set, and parameter importances (rich tables)."""
    from harness.views.tune import print_summary

    loaded = load_tuning(study, results_root, storage)
    if loaded is None:
        raise HarnessError(f"{study.source or study.name}: no tuning storage yet for "
                           f"{study.name!r}; run 'moe-harness tune {study.source} --trials N'")
    summary = summarise(study, *loaded)
    print_summary(summary, console)
    try:
        write_summary(Store(results_root, study.name).dir, summary)
    except OSError:
        pass  # a results folder we may only read: shown, not kept
