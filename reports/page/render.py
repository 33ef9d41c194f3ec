"""The study report: one self-contained HTML page, a pure function of the records.

:func:`render_page` is the one page function: it renders a :class:`reports.page.sections.Page`
(the records analysed once, ``reports.analyses.findings``), in order:

1. a header with run counts, marked *partial* when runs are still pending, and a link to
   every section of the page (found in the sections themselves, a caller's too);
2. every section of ``reports.page.sections.SECTIONS`` that the records fill: the answer
   first, the best configurations, quality against cost with every router's Pareto front,
   scaling, fitted curves and compute multipliers, router diagnostics, the failed and diverged
   runs; the tuning, when the page has the study's store; the claims check and the paper's
   figures, with ``paper=True``; then a caller's sections (already-safe HTML);
3. the study file and the environments the runs used.

:func:`render_report` and :func:`write_report` do the same from a frame of records
(``reports.records.load_records``); :func:`write_page` writes a page (``reports.build``).

plotly.js is embedded once in the page (about 4.8 MB): the report is one file that opens
offline anywhere, can be attached, archived or uploaded as a CI artifact without a sibling
``plotly.min.js`` getting lost, and always renders with the plotly.js version its figures
were written for.
"""

from __future__ import annotations

import datetime as _dt
import html
import os
from pathlib import Path

import plotly
import polars as pl

from harness.results.store import Store
from harness.spec.study import EstimateConfig
from reports.aggregate import status_counts
from reports.analyses.findings import findings
from reports.figures.common import hover_texts
from reports.labels import sorted_routers
from reports.page.html import esc, hover_script, nav_bar
from reports.page.sections import Page, rendered
from reports.page.tables import environment_table

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto;
       max-width: 1400px; padding: 0 1.5em 3em; color: #222; }
h1 { margin-bottom: .2em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2em;
     margin-top: 2em; }
.meta { color: #555; } .note { color: #555; font-size: .92em; max-width: 70em; }
.banner { padding: .7em 1em; border-radius: 4px; font-weight: 600; }
.partial { background: #fff3cd; border: 1px solid #e0c060; }
nav { display: flex; flex-wrap: wrap; gap: .3em 1.2em; padding: .5em 0;
      border-bottom: 1px solid #ddd; } nav a { white-space: nowrap; }
#answer { background: #f4f8fb; border: 1px solid #cfe0ee; border-radius: 6px;
          padding: 0 1em .5em; } #answer h2 { border: none; margin-top: .6em; }
.badge { display: inline-block; min-width: 5.5em; padding: 0 .4em; border-radius: 3px;
         font-weight: 600; font-size: .85em; text-align: center; background: #eee; }
.badge[data-verdict="held"] { background: #d4edda; }
.badge[data-verdict="failed"] { background: #f8d7da; }
ul.claims-answer { list-style: none; padding-left: 0; } ul.claims-answer li { margin: .2em 0; }
tr.winner td { font-weight: 600; }
table { border-collapse: collapse; font-size: .88em; margin: .5em 0 1em; }
th, td { border: 1px solid #ddd; padding: .25em .5em; text-align: left; vertical-align: top; }
th { background: #f5f5f5; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
table.summary td.config { min-width: 14em; } table.summary th { font-size: .92em; }
.std { color: #666; font-size: .9em; } details.runs { color: #555; font-size: .9em; }
.plot { width: 100%; min-height: 400px; }
.grid { display: grid; grid-template-columns: repeat(auto-fit, minmax(420px, 1fr)); gap: 1em; }
pre { background: #f7f7f7; padding: .7em; overflow-x: auto; font-size: .85em; }
details pre { max-height: 30em; }
.scroll { overflow-x: auto; } .scroll-y { max-height: 40em; overflow-y: auto; }
footer { margin-top: 3em; border-top: 1px solid #ddd; }
"""


def render_page(page: Page, *, study_name: str, study_text: str | None = None,
                pending: int = 0, generated_at: _dt.datetime | None = None) -> str:
    """The page of ``page``: header, its sections in order, footer."""
    df, agg = page.frame, page.agg
    counts = status_counts(df)
    generated = (generated_at or _dt.datetime.now(_dt.timezone.utc)).strftime(
        "%Y-%m-%d %H:%M:%S UTC")
    title = f"moe-harness report: {study_name}" + (" (partial)" if pending > 0 else "")

    header = [f"<h1>{html.escape(title)}</h1>",
              f'<p class="meta">Generated {esc(generated)} from {df.height:,} records '
              f"({', '.join(f'{esc(s)}: {n:,}' for s, n in counts.items()) or 'none yet'}); "
              f"{agg.height:,} configurations with at least one ok run.</p>"]
    if pending > 0:
        header.append(
            f'<p class="banner partial" id="partial-banner">Partial results: {pending:,} '
            f"run{'s' if pending != 1 else ''} still pending. This page shows the runs "
            "finished so far; averages, fronts and rankings will change.</p>")

    main = rendered(page) + list(page.extra)
    footer = ['<footer id="environment"><h2>Study and environment</h2>']
    if study_text is not None:
        footer.append(f"<h3>Study file</h3><pre class=\"study\">{html.escape(study_text)}</pre>")
    footer.append("<h3>Environment</h3>" + environment_table(df) + "</footer>")

    routers = sorted_routers(agg["router"].to_list()) if "router" in agg.columns else []
    return "".join([
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">",
        f"<title>{html.escape(title)}</title>",
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<style>{_CSS}</style>",
        f'<script type="text/javascript">{plotly.offline.get_plotlyjs()}</script>',
        "</head>",
        f'<body data-partial="{"true" if pending > 0 else "false"}" '
        f'data-routers="{esc(", ".join(str(r) for r in routers))}">',
        *header, nav_bar(main), hover_script(page.hover), *main, *footer,
        "</body></html>\n",
    ])


def page_of(df: pl.DataFrame, *, paper: bool = False, store: Store | None = None,
            answers: list[str] | None = None, extra_sections: list[str] | None = None,
            estimate: EstimateConfig | None = None) -> Page:
    """The page's inputs from the records: analysed once (the claims check only with
    ``paper``; planned against measured on ``estimate``'s assumptions), with the hover texts
    of the aggregate's rows."""
    found = findings(df, claims=paper, estimate=estimate)
    return Page(found, hover_texts(found.agg), paper=paper, store=store,
                answers=tuple(answers or ()), extra=tuple(extra_sections or ()))


def render_report(
    df: pl.DataFrame,
    *,
    study_name: str,
    study_text: str | None = None,
    pending: int = 0,
    extra_sections: list[str] | None = None,
    generated_at: _dt.datetime | None = None,
    answers: list[str] | None = None,
    paper: bool = False,
    store: Store | None = None,
) -> str:
    """The page as a string (see :func:`write_report`)."""
    page = page_of(df, paper=paper, store=store, answers=answers, extra_sections=extra_sections)
    return render_page(page, study_name=study_name, study_text=study_text, pending=pending,
                       generated_at=generated_at)


def write_page(page: Page, out: Path, *, study_name: str, study_text: str | None = None,
               pending: int = 0) -> Path:
    """Write the page of ``page`` to ``out`` and return its path (see :func:`write_report`)."""
    return _replace(Path(out), render_page(page, study_name=study_name, study_text=study_text,
                                           pending=pending))


def _replace(out: Path, text: str) -> Path:
    """Write ``text`` to ``out`` atomically, so a browser reloading it never reads half a
    page."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out


def write_report(
    df: pl.DataFrame,
    out: Path,
    *,
    study_name: str,
    study_text: str | None = None,
    pending: int = 0,
    extra_sections: list[str] | None = None,
    answers: list[str] | None = None,
    paper: bool = False,
    store: Store | None = None,
) -> Path:
    """Write the study's report to ``out`` and return its path.

    ``df`` holds the records (any status); ``pending`` > 0 marks the page partial;
    ``paper`` adds the paper's analyses (the claims check, its answer and the paper's
    figures); ``store`` (the study's) adds its tuning section; ``extra_sections`` are HTML
    snippets, already safe, placed after the page's own sections, before the footer;
    ``answers`` are answer blocks (``reports.page.answer``) for the top. The file is replaced
    atomically, so a browser reloading it never reads half a page.
    """
    return _replace(Path(out), render_report(
        df, study_name=study_name, study_text=study_text, pending=pending,
        extra_sections=extra_sections, answers=answers, paper=paper, store=store))
