"""The report's tuning section: the Optuna study of a study's ``tune:`` section.

:func:`tuning_section` reads the study's tuning storage (the one ``moe-harness tune`` used,
see ``runners.tune``) and returns one HTML snippet: trial counts, the best trial or the Pareto
set as a table, the optimisation history of each objective, the Pareto front of the trials
(several objectives) and parameter importances (fANOVA). Figures are Optuna's plotly
visualisations, embedded like every other figure of the page (``reports.html.figure_html``:
figure JSON in a ``<script>``, plotly.js once in the page head). Without a ``tune`` section or
a storage it returns None, and the page has no tuning section.
"""

from __future__ import annotations

import warnings

from harness.store import Store
from harness.study import Study


def tuning_section(study: Study, store: Store, storage: str | None = None) -> str | None:
    if study.tune is None:
        return None
    from runners.tune import load_tuning

    loaded = load_tuning(study, store.root, storage)
    if loaded is None:
        return None
    cfg, ostudy, url = loaded
    return render(study, cfg, ostudy, url)


def render(study: Study, cfg, ostudy, url: str) -> str:
    from reports.html import esc, figure_html
    from runners.tune import _without_password, best_trials, counts, describe_params

    trials = ostudy.get_trials(deepcopy=False)
    c = counts(trials)
    parts = [
        f'<p class="meta">Optuna study <b>{esc(ostudy.study_name)}</b> in '
        f"<code>{esc(_without_password(url))}</code>: {c['finished']} trials finished "
        f"({c['complete']} complete, {c['pruned']} pruned, {c['failed']} failed), "
        f"{c['stale']} stale (their worker died; parameters queued again), {c['running']} "
        f"running, {c['waiting']} queued. Objectives: "
        + esc(", ".join(f"{o.direction} {o.metric}" for o in cfg.objectives))
        + (". Constraints: " + esc(", ".join(_constraint_text(k) for k in cfg.constraints))
           if cfg.constraints else "")
        + ". Each trial is also a run record (column <code>tune_trial</code>), so tuned runs "
        "appear in the tables and fronts above.</p>"
    ]
    best = best_trials(ostudy, cfg)
    if best:
        head = ["trial", *cfg.metrics, "parameters", "run_id"]
        rows = "".join(
            "<tr>" + f"<td>{t.number}</td>"
            + "".join(f'<td class="num">{v:.4g}</td>' for v in t.values)
            + f"<td>{esc(describe_params(study, cfg, t.params))}</td>"
            + f"<td><code>{esc(t.user_attrs.get('run_id'))}</code></td></tr>" for t in best)
        title = "Best trial" if not cfg.multi else (
            f"Pareto set ({len(best)} trial{'s' if len(best) != 1 else ''})")
        parts.append(f"<h3>{title}</h3><table><tr>"
                     + "".join(f"<th>{esc(h)}</th>" for h in head) + f"</tr>{rows}</table>")
    for fig_id, fig in figures(cfg, ostudy):
        parts.append(figure_html(fig_id, fig))
    return ('<section id="tuning"><h2>Tuning</h2>' + "".join(parts) + "</section>")


def _constraint_text(k) -> str:
    bits = []
    if k.max is not None:
        bits.append(f"{k.metric} <= {k.max:g}")
    if k.min is not None:
        bits.append(f"{k.metric} >= {k.min:g}")
    return " and ".join(bits)


def figures(cfg, ostudy) -> list[tuple[str, object]]:
    """(id, plotly figure) pairs; a figure Optuna cannot draw yet is left out."""
    import optuna.visualization as vis
    from optuna.trial import TrialState

    out = []
    complete = ostudy.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i, metric in enumerate(cfg.metrics):
            target = (lambda t, i=i: t.values[i]) if cfg.multi else None
            fig = _try(vis.plot_optimization_history, ostudy, target=target, target_name=metric)
            if fig is not None:
                fig.update_layout(title=f"Optimisation history: {metric}")
                out.append((f"fig-tune-history-{metric}", fig))
        if cfg.multi and len(cfg.metrics) in (2, 3):
            fig = _try(vis.plot_pareto_front, ostudy, target_names=cfg.metrics)
            if fig is not None:
                fig.update_layout(title="Pareto front of the trials")
                out.append(("fig-tune-pareto", fig))
        if len(complete) >= 2:
            for i, metric in enumerate(cfg.metrics):
                target = (lambda t, i=i: t.values[i]) if cfg.multi else None
                fig = _try(vis.plot_param_importances, ostudy, target=target,
                           target_name=metric,
                           evaluator=_evaluator())
                if fig is not None:
                    fig.update_layout(title=f"Parameter importances for {metric} (fANOVA)")
                    out.append((f"fig-tune-importance-{metric}", fig))
    return out


def _evaluator():
    import optuna

    return optuna.importance.FanovaImportanceEvaluator(seed=0)


def _try(plot, *args, **kwargs):
    try:
        return plot(*args, **kwargs)
    except (ValueError, RuntimeError, ZeroDivisionError):  # too few or constant trials
        return None
