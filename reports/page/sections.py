"""The page's sections, in ONE ordered list (:data:`SECTIONS`): each entry maps the page's
inputs (:class:`Page`) to its section's HTML, or None when the records cannot fill it.

In page order: the answer (``reports.page.answer``), the best configurations, quality against
cost, scaling, fitted curves and compute multipliers (with their held-out checks), the joint
law over size and experts, planned against measured, router diagnostics, the runs that are not
ok; then, where the page has them, the tuning (from the summary ``moe-harness tune`` left in
the store), and the paper's analyses: the claims check and the paper's figures. The top bar
links every section it finds in the page (``reports.page.html.nav_bar``); a new section is one
more entry here.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import plotly.graph_objects as go
import polars as pl

from harness.results.store import Store
from harness.results.tune_summary import TuneSummary, read_summary
from reports.aggregate import primary_quality
from reports.analyses.claims import FAILED, HELD, INCONCLUSIVE, LACKS, Verdict, check_claims
from reports.analyses.findings import Findings
from reports.analyses.fits import (
    CURVE_HEADERS,
    MATCH_HEADERS,
    METHOD_NOTE,
    MIN_SAVING,
    MULTIPLIER_HEADERS,
    analysis_for,
    curve_rows,
    match_rows,
    multiplier_rows,
    refusals,
    small_matches,
)
from reports.analyses.heldout import HeldOut
from reports.analyses.law_tables import (
    HELDOUT_HEADERS,
    LAW_HEADERS,
    PLANNED_HEADERS,
    heldout_rows,
    law_multiplier_rows,
    law_rows,
    planned_table_rows,
)
from reports.analyses.law_tables import MULTIPLIER_HEADERS as LAW_MULTIPLIER_HEADERS
from reports.analyses.laws import JointLaw
from reports.analyses.planned import planned_summary
from reports.analyses.robust import RobustFit, disagreements
from reports.analyses.scaling import CONFIDENCE, Analysis
from reports.figures import tuning
from reports.figures.common import SHARED, Hover, flagged_note
from reports.figures.fits import fig_fits
from reports.figures.laws import fig_joint_law
from reports.figures.paper import paper_figures
from reports.figures.pareto import pareto_figures
from reports.figures.routers import fig_router_diagnostic
from reports.figures.scaling import fig_scaling
from reports.labels import runs_words
from reports.metrics import COST_AXES, METRICS, ROUTER_DIAGNOSTICS, label
from reports.page.answer import answer_body, best_at_equal_cost, claims_answer
from reports.page.html import esc, figure_html, section
from reports.page.tables import claims_table, problems_table, summary_table, text_table


@dataclass(frozen=True)
class Page:
    """What one page shows: the records' findings, computed once, and what the caller adds."""

    found: Findings
    hover: list[str]  # one text per aggregated row: the page's one hover array
    paper: bool = False  # the paper's analyses: the claims check and the paper's figures
    store: Store | None = None  # the study's store, for its tuning summary (None: no tuning)
    answers: tuple[str, ...] = ()  # the caller's answer blocks (safe HTML), first
    extra: tuple[str, ...] = ()  # the caller's sections (safe HTML), after the page's own

    @property
    def frame(self) -> pl.DataFrame:
        return self.found.frame

    @property
    def agg(self) -> pl.DataFrame:
        return self.found.agg


# --------------------------------------------------------------------------- the study's sections


def _answer(page: Page) -> str:
    claims = claims_answer(page.agg, page.found.verdicts, frame=page.frame) if page.paper \
        else None
    return section("answer", "Answer", answer_body(
        [*page.answers, claims, best_at_equal_cost(page.agg)]))


def _summary(page: Page) -> str:
    return section("summary", "Best configurations", summary_table(page.agg))


def _directions_note() -> str:
    lower = [m.label for m in METRICS.values() if m.kind != "router" and m.lower_is_better]
    higher = [m.label for m in METRICS.values() if m.kind != "router" and m.higher_is_better]
    return (f'<p class="note">Lower is better: {esc(", ".join(lower))}. Higher is better: '
            f"{esc(', '.join(higher))}.</p>")


def _pareto(page: Page) -> str:
    pareto = pareto_figures(page.agg, SHARED)
    missing = [c for c in COST_AXES if c not in pareto]
    body = [
        '<p class="note">One point per configuration: the mean over its seeds, with error '
        "bars of one standard deviation. Outlined points are on their router's Pareto front "
        "(solid line); the dashed line is the front over all routers. Cost axes are "
        "logarithmic. Hover a point for its full configuration and run ids; the menu at the "
        "top right switches the quality metric.</p>",
        _directions_note(),
    ]
    if flagged_note(page.frame):
        body.append(f'<p class="note" id="timing-flagged">{esc(flagged_note(page.frame))}</p>')
    body += [figure_html(f"fig-pareto-{cost}", fig) for cost, fig in pareto.items()]
    if missing:
        body.append(f'<p class="note">Not measured in any ok run: '
                    f"{esc(', '.join(label(c) for c in missing))}.</p>")
    if not pareto:
        body = ['<p class="note">Nothing to draw yet: no ok run with a cost and a quality.</p>']
    return section("pareto", "Quality against cost", "".join(body))


def _scaling(page: Page) -> str:
    scaling = [(f"fig-scaling-{x}", fig_scaling(page.agg, x, hover=SHARED))
               for x in ("num_experts", "slots_per_expert")]
    body = "".join(figure_html(i, f) for i, f in scaling if f is not None)
    return section("scaling", "Scaling", body or
                   '<p class="note">No MoE run with a quality metric yet.</p>')


def scaling_section_body(agg: pl.DataFrame, hover: Hover = None,
                         embed: Callable | None = figure_html, *,
                         analysis: Analysis | None = None,
                         checks: Sequence[HeldOut] | None = None,
                         refits: Sequence[RobustFit] = ()) -> str:
    """The fitted-curves section's HTML: ``analysis`` (``analysis_for(agg)`` when the caller
    has none) as figures, embedded by ``embed(id, fig)`` (None leaves them out), and tables;
    with ``checks`` (``reports.analyses.heldout.curve_checks``), the held-out checks after
    the fits, and the Huber ``refits`` that disagree as notes."""
    analysis = analysis_for(agg) if analysis is None else analysis
    if analysis is None or not analysis.curves:
        return ('<p class="note" id="fits-note">No curve: no run with a quality and a '
                "cost yet.</p>")
    note = METHOD_NOTE.format(conf=f"{CONFIDENCE:.0%}")
    parts = [f'<p class="note">{html.escape(note)}</p>']
    fitted = [c for c in analysis.curves if c.fitted]
    if len(fitted) < len(analysis.curves):  # one line for every refusal, not one row each
        head = "No curve fitted" if not fitted else "Not fitted"
        parts.append(f'<p class="note" id="fits-note">{head}: '
                     f"{html.escape(refusals(analysis.curves))}.</p>")
    if embed is not None:
        for cost in dict.fromkeys(c.cost for c in fitted):
            fig = fig_fits(analysis, cost, hover)
            if fig is not None:
                parts.append(embed(f"fig-fit-{cost}", fig))
    if fitted:
        parts.append("<h3>Fits</h3>" + text_table(CURVE_HEADERS, curve_rows(analysis), "fits"))
    if checks is not None:
        parts.append(heldout_body(checks, refits))
    parts.append("<h3>Compute multipliers (from the fits)</h3>")
    rows = multiplier_rows(analysis)
    parts.append(text_table(MULTIPLIER_HEADERS, rows, "multipliers") if rows else
                 '<p class="note">No pair of routers with two fitted curves on one cost axis.'
                 "</p>")
    parts.append("<h3>Measured matches: a configuration at least as good as another router's,"
                 " for less cost</h3>")
    rows = match_rows(analysis)
    parts.append(text_table(MATCH_HEADERS, rows, "matches") if rows else
                 '<p class="note">No configuration matches another router\'s quality for '
                 f"{MIN_SAVING:.0%} less cost or more.</p>")
    if small_matches(analysis):
        parts.append(f'<p class="note">{small_matches(analysis)} more matches save less than '
                     f"{MIN_SAVING:.0%} of the cost, inside the tolerance of equal cost: not "
                     "listed.</p>")
    return "".join(parts)


def _fits(page: Page) -> str:
    return section("fits", "Fitted curves and compute multipliers",
                   scaling_section_body(page.agg, SHARED, analysis=page.found.fits,
                                        checks=page.found.curve_checks,
                                        refits=page.found.refits))


FLAG = '<span class="badge" data-verdict="failed">FLAGGED</span> '


def flagged_notes(checks: Sequence[HeldOut]) -> str:
    """One visibly flagged note per check whose held-out measurement is outside its
    interval (its sentence)."""
    return "".join(f'<p class="note flagged">{FLAG}{esc(h.sentence())}</p>'
                   for h in checks if h.flagged)


def heldout_body(checks: Sequence[HeldOut], refits: Sequence[RobustFit] = ()) -> str:
    """"Do the fits extrapolate?": each curve refitted without its costliest configuration
    and checked there, flagged fits called out, and the Huber refits that disagree with the
    least-squares fit as notes."""
    parts = ["<h3>Do the fits extrapolate?</h3>",
             '<p class="note">Each fit is refitted without its costliest configuration and '
             "predicts it; a measurement outside the prediction's interval flags the fit: its "
             "predictions beyond the measured costs should not be trusted.</p>"]
    rows = heldout_rows(checks)
    parts.append(text_table(HELDOUT_HEADERS, rows, "heldout") if rows else
                 '<p class="note">No fitted curve to check.</p>')
    parts.append(flagged_notes(checks))
    parts += [f'<p class="note">{esc(f.sentence())}</p>' for f in disagreements(refits)]
    return "".join(parts)


def surface_html(fig_id: str, fig: go.Figure) -> str:
    """A 3D figure as :func:`reports.page.html.figure_html` embeds it, in a ``div.plot-3d``
    without ``data-expected-points``: WebGL draws no SVG markers to count, so the page's
    marker checks (every ``div.plot``) leave it out."""
    return re.sub(r'^<div class="plot" id="([^"]*)" data-expected-points="\d+">',
                  r'<div class="plot-3d" id="\1">', figure_html(fig_id, fig), count=1)


def law_section_body(laws: Sequence[JointLaw], checks: Sequence[HeldOut],
                     embed: Callable | None = surface_html) -> str:
    """The joint laws over size and experts: refusals as notes, the surface figure with the
    measured points, the laws' table, their effective parameter multipliers and held-out
    checks."""
    if not laws:
        return '<p class="note">No MoE run with a quality metric yet.</p>'
    parts = [f'<p class="note">{esc(law.router)}: no joint law: {esc(law.note)}.</p>'
             for law in laws if not law.fitted]
    fig = fig_joint_law(laws, points=True)
    if fig is not None and embed is not None:
        parts.append(embed("fig-joint-law", go.Figure(fig)))
    fitted = [law for law in laws if law.fitted]  # a refused law is its note alone
    if fitted:
        parts.append(text_table(LAW_HEADERS, law_rows(fitted), "laws"))
    rows = law_multiplier_rows(laws)
    if rows:
        parts.append("<h3>Effective parameter multipliers: the dense size each MoE is worth"
                     "</h3>" + text_table(LAW_MULTIPLIER_HEADERS, rows, "law-multipliers"))
    if checks:
        parts.append("<h3>Do the laws extrapolate?</h3>"
                     + text_table(HELDOUT_HEADERS, heldout_rows(checks), "law-heldout")
                     + flagged_notes(checks))
    return "".join(parts)


def _laws(page: Page) -> str | None:
    found = page.found
    if not found.laws:
        return None
    return section("laws", "Joint law over size and experts",
                   law_section_body(found.laws, found.law_checks))


def planned_section_body(rows: Sequence[dict]) -> str:
    """Planned against measured: per quantity, the measured / planned ratios."""
    table = planned_table_rows(planned_summary(rows))
    return ('<p class="note">What the closed forms planned for each finished run (memory, '
            "FLOPs, training time at the assumed utilisation) against what it measured; "
            "ratios are measured / planned (1: as planned). Per run: <code>moe-harness "
            "export</code>.</p>" + text_table(PLANNED_HEADERS, table, "planned"))


def _planned(page: Page) -> str | None:
    if not page.found.planned:
        return None
    return section("planned", "Planned against measured",
                   planned_section_body(page.found.planned))


def _routers(page: Page) -> str:
    diagnostics = [(f"fig-router-{m}", fig_router_diagnostic(page.agg, m, hover=SHARED))
                   for m in ROUTER_DIAGNOSTICS]
    body = "".join(figure_html(i, f) for i, f in diagnostics if f is not None)
    return section("routers", "Router diagnostics",
                   f'<div class="grid">{body}</div>' if body else
                   '<p class="note">No router metric recorded yet.</p>')


def _problems(page: Page) -> str:
    return section("problems", "Failed and diverged runs", problems_table(page.frame))


# --------------------------------------------------------------------------- tuning


def tuning_body(s: TuneSummary) -> str:
    """Trial counts, the best trial or the Pareto set as a table, and the tuning's figures."""
    c = s.counts
    parts = [
        f'<p class="meta">Optuna study <b>{esc(s.study)}</b> in <code>{esc(s.storage)}</code>: '
        f"{c['finished']} trials finished ({c['complete']} complete, {c['pruned']} pruned, "
        f"{c['failed']} failed), {c['stale']} stale (their worker died; parameters queued "
        f"again), {c['running']} running, {c['waiting']} queued. Objectives: "
        + esc(", ".join(f"{o.direction} {o.metric}" for o in s.objectives))
        + (". Constraints: " + esc(", ".join(s.constraints)) if s.constraints else "")
        + ". Each trial is also a run record (column <code>tune_trial</code>), so tuned runs "
        "appear in the tables and fronts above.</p>"
    ]
    best = s.best_trials()
    if best:
        head = ["trial", *s.metrics, "parameters", "run_id"]
        rows = "".join(
            "<tr>" + f"<td>{t.number}</td>"
            + "".join(f'<td class="num">{v:.4g}</td>' for v in t.values or [])
            + f"<td>{esc(t.params)}</td>"
            + f"<td><code>{esc(t.run_id)}</code></td></tr>" for t in best)
        title = "Best trial" if not s.multi else (
            f"Pareto set ({len(best)} trial{'s' if len(best) != 1 else ''})")
        parts.append(f"<h3>{title}</h3><table><tr>"
                     + "".join(f"<th>{esc(h)}</th>" for h in head) + f"</tr>{rows}</table>")
    for fig_id, fig in tuning.figures(s):
        parts.append(figure_html(fig_id, fig))
    return "".join(parts)


def tuning_section(store: Store) -> str | None:
    """The tuning section, from the summary ``moe-harness tune`` wrote in the store
    (``harness.results.tune_summary``); None before any tuning."""
    summary = read_summary(store.dir)
    return section("tuning", "Tuning", tuning_body(summary)) if summary is not None else None


def _tuning(page: Page) -> str | None:
    return tuning_section(page.store) if page.store is not None else None


# --------------------------------------------------------------------------- the paper's analyses


def claims_section(agg: pl.DataFrame, verdicts: Sequence[Verdict] | None = None, *,
                   frame: pl.DataFrame | None = None) -> str | None:
    """The claims check as a page section (``verdicts``: ``check_claims(agg)`` when the
    caller has them); None when no run has a quality metric."""
    if agg.height == 0 or primary_quality(agg) is None:
        return None
    verdicts = check_claims(agg) if verdicts is None else verdicts
    counts = {s: sum(v.status == s for v in verdicts)
              for s in (HELD, FAILED, INCONCLUSIVE, LACKS)}
    quality = primary_quality(agg)
    runs = f" ({html.escape(runs_words(frame))})" if frame is not None and frame.height else ""
    note = (f'<p class="note">Each of the paper\'s main claims, judged from these records '
            f"by a fixed rule ({counts[HELD]} held, {counts[FAILED]} failed, "
            f"{counts[INCONCLUSIVE]} inconclusive, {counts[LACKS]} lack data). Quality is the "
            f"mean {html.escape(label(quality))} over seeds; every comparison carries a 95% "
            "interval, and one that straddles its threshold makes the verdict inconclusive. A "
            f"verdict describes these runs only{runs}: it says what the harness measured, not "
            "whether the paper holds at its scale.</p>")
    return section("claims", "The paper's claims, checked",
                   f'{note}<div class="scroll">{claims_table(verdicts)}</div>')


def _claims(page: Page) -> str | None:
    return claims_section(page.agg, page.found.verdicts, frame=page.frame) if page.paper \
        else None


def _paper(page: Page) -> str | None:
    """The paper's figures that the records can fill (None when none does). Hover texts come
    from the page's shared array, so a configuration's text is written once, not per figure."""
    if not page.paper:
        return None
    figures = paper_figures(page.frame, page.agg, shared_hover=True, texts=page.hover)
    if not figures:
        return None
    note = ('<p class="note">The paper\'s figures that these records can fill. Points and '
            "cells are means over seeds; where several configurations share a point "
            "(learning rates, placements), the best by quality is shown. Slots per token = "
            "expert work per input token: Soft MoE experts x slots / tokens, Tokens Choice "
            "K x C, Experts Choice c.</p>")
    body = "".join(figure_html(fig_id, fig) for fig_id, fig in figures)
    return section("paper", "The paper's figures", note + body)


#: The page's sections, in page order (the footer, "Study and environment", closes the page).
SECTIONS: tuple[Callable[[Page], str | None], ...] = (
    _answer, _summary, _pareto, _scaling, _fits, _laws, _planned, _routers, _problems, _tuning,
    _claims, _paper,
)
#: The paper's analyses among them (``reports.build.paper_parts``).
PAPER_SECTIONS = (_claims, _paper)


def rendered(page: Page, sections: Sequence[Callable[[Page], str | None]] = SECTIONS
             ) -> list[str]:
    """The HTML of each of ``sections`` that the page can fill, in order."""
    return [part for render in sections if (part := render(page))]
