"""The study report: one self-contained HTML page, a pure function of the records.

:func:`write_report` takes the frame of records (``reports.aggregate.load_records`` or
``harness.results.store.load``) and writes one HTML file:

1. a header with run counts, marked *partial* when runs are still pending, and a link to
   every section of the page (found in the sections themselves, caller-supplied ones too);
2. the answer first (``reports.verdict``): the caller's answer blocks (the claims check) and
   the best configuration of each router at equal cost;
3. a summary table of the best configurations;
4. quality against each cost axis, with every router's Pareto front;
5. scaling curves (quality against experts and against slots per expert, per model), then
   fitted quality-against-cost curves and compute multipliers (``reports.scaling_report``);
6. router diagnostics (dropped tokens, token coverage, slot entropy);
7. the failed / diverged runs, then caller-supplied sections (already-safe HTML);
8. the study file and the environments the runs used.

Axes never stack SI prefixes on a unit: log axes get ticks at 1-2-5 steps labelled in plain
or scientific notation, and titles sit below plotly's tool bar (:func:`tidy_layout`,
applied to every figure of the page).

plotly.js is embedded once in the page (about 4.8 MB): the report is one file that opens
offline anywhere, can be attached, archived or uploaded as a CI artifact without a sibling
``plotly.min.js`` getting lost, and always renders with the plotly.js version its figures
were written for. Every string that comes from records or the study file is escaped, and
figure JSON is written with ``<``, ``>`` and ``/`` escaped, so a ``</script>`` in a run's
error stays text.
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import math
import os
import platform
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import plotly
import plotly.graph_objects as go
import plotly.io as pio
import polars as pl

from reports.aggregate import aggregate, problems, status_counts
from reports.figures import (
    HOVER_META,
    ROW,
    SHARED,
    config_label,
    expected_points,
    fig_router_diagnostic,
    fig_scaling,
    fmt,
    fmt_mean_std,
    hover_texts,
    pareto_figures,
    primary_quality,
    quality_axes,
    router_name,
    sorted_routers,
    with_rows,
)
from reports.metrics import COST_AXES, METRICS, ROUTER_DIAGNOSTICS, label
from reports.verdict import answer_section, best_at_equal_cost

#: Rows of the problems table written into the page (the count of the rest is stated).
MAX_PROBLEM_ROWS = 2000
_PLOTLY_CONFIG = {"responsive": True, "displaylogo": False, "scrollZoom": False}
_ENV_TABLE_KEYS = ("device", "torch_version", "attention_backend", "git_sha", "hostname")

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


def esc(value: Any) -> str:
    """Escape any value for HTML text and attributes (``None`` -> ``-``)."""
    return html.escape(fmt(value), quote=True)


# --------------------------------------------------------------------------- figures in HTML


def _figure_json(fig: go.Figure) -> str:
    """Figure JSON safe inside ``<script>`` (plotly escapes ``< > /``; we add ``&`` and the
    two line separators that JavaScript strings reject)."""
    return _safe_json(pio.to_json(fig, validate=False))


def _safe_json(text: str) -> str:
    for raw, safe in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                      ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(raw, safe)
    return text


def hover_script(hover: Sequence[str]) -> str:
    """The page's one array of hover texts (figures made with ``hover=SHARED`` index it)."""
    return f"<script>var MOE_HOVER={_safe_json(json.dumps(list(hover)))};</script>"


_SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


def tick_labels(values: Sequence[float]) -> list[str]:
    """Plain notation when every value is from 0.001 to below a million, else ``m×10ᵉ`` for
    all of them (one notation per axis): never an SI prefix."""
    if all(v == 0 or 1e-3 <= abs(v) < 1e6 for v in values):
        return [f"{v:.6g}" for v in values]
    return [_scientific(v) for v in values]


def _scientific(value: float) -> str:
    if value == 0:
        return "0"
    exponent = math.floor(math.log10(abs(value)))
    mantissa = f"{value / 10**exponent:.3g}"
    power = f"10{str(exponent).translate(_SUPERSCRIPT)}"
    return power if mantissa == "1" else f"{mantissa}×{power}"


def log_ticks(lo: float, hi: float) -> list[float]:
    """Tick values for a log axis over [lo, hi]: 1-2-5 steps, or 1..9 steps where that
    gives fewer than three, or three evenly spread values on a very narrow range."""
    lo, hi = lo / 1.08, hi * 1.08  # plotly pads the data range a little
    decades = range(math.floor(math.log10(lo)), math.floor(math.log10(hi)) + 1)
    for mantissas in ((1,), (1, 2, 5), tuple(range(1, 10))):
        ticks = [float(f"{m}e{d}") for d in decades for m in mantissas]
        ticks = [t for t in ticks if lo <= t <= hi]
        if len(ticks) >= 3 and (len(ticks) <= 12 or mantissas == (1,)):
            return ticks
    ratio = (hi / lo) ** 0.25
    return sorted({float(f"{lo * ratio**i:.2g}") for i in (1, 2, 3)})


MODEBAR_PX = 32  # plotly's tool bar, top right: the title starts below it


def tidy_layout(fig: go.Figure) -> go.Figure:
    """The title below plotly's tool bar (which would cover it in narrow plots); no SI
    prefixes on any axis; log axes without explicit ticks get :func:`log_ticks` over the
    data of the traces drawn on them, labelled by :func:`tick_labels`."""
    lines = 1 + str(fig.layout.title.text or "").count("<br>")
    fig.update_layout(title={"yref": "container", "y": 1, "yanchor": "top",
                             "pad": {"t": MODEBAR_PX}},
                      margin_t=max(fig.layout.margin.t or 0, MODEBAR_PX + 22 * lines + 20))
    axes = {}
    fig.for_each_xaxis(lambda axis: axes.setdefault(axis.plotly_name, axis))
    fig.for_each_yaxis(lambda axis: axes.setdefault(axis.plotly_name, axis))
    logs: dict[str, list[float]] = {}
    for name, axis in axes.items():
        axis.exponentformat = "power"
        if axis.type == "log" and axis.tickvals is None:
            logs[name] = []
    for trace in fig.data if logs else ():
        for letter in ("x", "y"):
            ref = getattr(trace, f"{letter}axis", None) or letter
            name = ref.replace(letter, f"{letter}axis", 1)
            data = getattr(trace, letter, None)
            if name in logs and data is not None:
                v = np.asarray(data, dtype=float)
                logs[name] += v[np.isfinite(v) & (v > 0)].tolist()
    for name, data in logs.items():
        if data:
            ticks = log_ticks(min(data), max(data))
            axes[name].update(tickvals=ticks, ticktext=tick_labels(ticks))
    return fig


def figure_html(fig_id: str, fig: go.Figure) -> str:
    """A plot's ``<div>`` and the script that draws it.

    Traces made with ``hover=SHARED`` get their text from ``MOE_HOVER`` (see
    :func:`hover_script`, which must come first in the page).

    The div carries ``data-expected-points`` (markers plotly should draw) and, once drawn,
    ``data-rendered="1"``: the browser test waits for it and counts the markers.
    """
    tidy_layout(fig)
    safe_id = html.escape(fig_id, quote=True)
    return (
        f'<div class="plot" id="{safe_id}" data-expected-points="{expected_points(fig)}"></div>'
        f"<script>(function(){{var f={_figure_json(fig)};"
        f'var el=document.getElementById("{safe_id}");'
        f"f.data.forEach(function(t){{if(t.meta==={json.dumps(HOVER_META)}&&t.customdata)"
        f"{{t.text=t.customdata.map(function(i){{return MOE_HOVER[i];}});}}}});"
        f"Plotly.newPlot(el,f.data,f.layout,{pio.json.to_json_plotly(_PLOTLY_CONFIG)})"
        f'.then(function(){{el.setAttribute("data-rendered","1");}});}})();</script>'
    )


# --------------------------------------------------------------------------- tables


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], *, cls: str = "",
           numeric: Sequence[bool] | None = None) -> str:
    """An HTML table from already-escaped cells."""
    numeric = numeric or [False] * len(headers)
    head = "".join(f"<th>{h}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(
            f'<td class="num">{c}</td>' if n else f"<td>{c}</td>"
            for c, n in zip(row, numeric, strict=False)
        ) + "</tr>"
        for row in rows
    )
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def best_configurations(agg: pl.DataFrame, quality: str, top: int = 10) -> pl.DataFrame:
    """The best configuration of each router, then the overall top ``top`` (deduplicated)."""
    qcol = f"{quality}_mean"
    descending = not METRICS[quality].lower_is_better
    ranked = agg.filter(pl.col(qcol).is_not_null()).sort(qcol, descending=descending)
    if "router" in ranked.columns:
        per_router = ranked.group_by("router", maintain_order=True).first().select(ranked.columns)
    else:
        per_router = ranked.head(1)
    rows = pl.concat([per_router, ranked.head(top)], how="vertical_relaxed")
    return rows.unique(subset=ROW, keep="first", maintain_order=True).sort(
        qcol, descending=descending
    )


def _run_ids_cell(run_ids: Sequence[Any], seeds: Any = None) -> str:
    """The seed count, with every run id behind a disclosure (all of them stay in the page)."""
    ids = " ".join(esc(r) for r in run_ids)
    return (f'<details class="runs"><summary>{esc(seeds if seeds is not None else len(run_ids))}'
            f" seeds</summary><code>{ids}</code></details>")


def _mean_std_cell(mean: Any, std: Any) -> str:
    """``mean`` over ``± std`` (smaller, on its own line), as in ``fmt_mean_std``."""
    text = fmt_mean_std(mean, std)
    value, sep, spread = text.partition(" ± ")
    return html.escape(value) + (f'<br><span class="std">± {html.escape(spread)}</span>'
                                 if sep else "")


def summary_table(agg: pl.DataFrame) -> str:
    quality = primary_quality(agg)
    if quality is None:
        return '<p class="note">No quality metric recorded yet.</p>'
    best = best_configurations(agg, quality)
    qualities = quality_axes(agg)
    costs = [c for c in ("gflops_per_image", "params_total", "params_active", "train_step_ms",
                         "infer_images_per_s", "infer_latency_ms") if f"{c}_mean" in agg.columns]
    # one wrapping configuration cell and two-line quality cells keep the table (costs
    # included) within the page
    headers = ["#", "router", "configuration (seeds, run ids)", *(label(q) for q in qualities),
               *(label(c) for c in costs)]
    numeric = [True, False, False, *(True for _ in qualities), *(True for _ in costs)]
    rows = []
    for i, row in enumerate(best.iter_rows(named=True), 1):
        config = config_label(row) + (f" lr={fmt(row['lr'])}" if row.get("lr") else "")
        rows.append([
            str(i), esc(router_name(row.get("router"))),
            f'<span class="config">{esc(config)}</span>'
            + _run_ids_cell(row.get("run_ids") or [], row.get("n_runs")),
            *(_mean_std_cell(row[f"{q}_mean"], row[f"{q}_std"]) for q in qualities),
            *(esc(row[f"{c}_mean"]) for c in costs),
        ])
    direction = "highest" if not METRICS[quality].lower_is_better else "lowest"
    return (
        f'<p class="note">Ranked by mean {esc(label(quality))} over seeds ({direction} first, '
        "± one standard deviation): the best configuration of each router, then the overall "
        "top ten.</p>" + '<div class="scroll">'
        + _table([esc(h) for h in headers], rows, cls="summary", numeric=numeric) + "</div>"
    )


def problems_table(df: pl.DataFrame) -> str:
    bad = problems(df)
    if bad.height == 0:
        return '<p class="note">No failed or diverged runs.</p>'
    cols = [c for c in ("status", "run_id", "model", "router", "num_experts", "seed",
                        "diverged_step") if c in bad.columns]
    rows = []
    for row in bad.head(MAX_PROBLEM_ROWS).iter_rows(named=True):
        error = str(row.get("error") or "").strip()
        trace = str(row.get("traceback") or "").strip()
        if error or trace:
            first = (error or trace).splitlines()[0]
            full = "\n\n".join(t for t in (error, trace) if t)
            cell = (f"<details><summary>{html.escape(first[:200])}</summary>"
                    f"<pre>{html.escape(full)}</pre></details>")
        else:
            cell = "-"
        rows.append([esc(row[c]) for c in cols] + [cell])
    more = ""
    if bad.height > MAX_PROBLEM_ROWS:
        more = (f'<p class="note">{bad.height - MAX_PROBLEM_ROWS:,} more not shown here; '
                "they are in the store.</p>")
    counts = ", ".join(f"{esc(s)}: {n:,}" for s, n in status_counts(bad).items())
    return (f'<p class="note">{bad.height:,} runs are not ok ({counts}). They are excluded '
            "from every average and figure above.</p>"
            + '<div class="scroll scroll-y">'
            + _table([esc(c) for c in cols] + ["error"], rows, cls="problems") + "</div>" + more)


def environment_table(df: pl.DataFrame) -> str:
    keys = [k for k in _ENV_TABLE_KEYS if k in df.columns]
    parts = []
    if keys:
        envs = (df.with_columns(pl.col(k).cast(pl.String) for k in keys)
                .group_by(keys).len().sort("len", descending=True))
        rows = [[esc(v) for v in row] for row in envs.iter_rows()]
        parts.append(_table([esc(k) for k in keys] + ["runs"], rows, cls="environment",
                            numeric=[False] * len(keys) + [True]))
    span = [k for k in ("started_at", "finished_at") if k in df.columns]
    if span:
        first = df["started_at"].cast(pl.String).min() if "started_at" in span else None
        last = df["finished_at"].cast(pl.String).max() if "finished_at" in span else None
        parts.append(f'<p class="note">Runs from {esc(first)} to {esc(last)}.</p>')
    versions = {
        "python": platform.python_version(), "polars": pl.__version__,
        "plotly": plotly.__version__, "platform": platform.platform(),
    }
    parts.append('<p class="note">Report written by ' + ", ".join(
        f"{esc(k)} {esc(v)}" for k, v in versions.items()) + ".</p>")
    return "".join(parts)


# --------------------------------------------------------------------------- page


def _section(sec_id: str, title: str, body: str) -> str:
    return f'<section id="{sec_id}"><h2>{html.escape(title)}</h2>{body}</section>'


_SECTION_HEAD = re.compile(r'<section id="([^"]+)"[^>]*>\s*<h2>(.*?)</h2>', re.S)


def nav_bar(sections: Sequence[str]) -> str:
    """A link to every section, read from the sections themselves (``<section id=...><h2>``),
    so a section added anywhere (a caller's too) is linked without a second list."""
    links = [f'<a href="#{sid}">{title}</a>' for part in sections
             for sid, title in _SECTION_HEAD.findall(part)]
    return "<nav>" + "".join(links) + '<a href="#environment">Study and environment</a></nav>'


def _directions_note() -> str:
    lower = [m.label for m in METRICS.values() if m.kind != "router" and m.lower_is_better]
    higher = [m.label for m in METRICS.values() if m.kind != "router" and m.higher_is_better]
    return (f'<p class="note">Lower is better: {esc(", ".join(lower))}. Higher is better: '
            f"{esc(', '.join(higher))}.</p>")


def render_report(
    df: pl.DataFrame,
    *,
    study_name: str,
    study_text: str | None = None,
    pending: int = 0,
    extra_sections: list[str] | None = None,
    generated_at: _dt.datetime | None = None,
    answers: list[str] | None = None,
) -> str:
    """The page as a string (see :func:`write_report`)."""
    agg = with_rows(aggregate(df))
    counts = status_counts(df)
    hover_text = hover_texts(agg)
    hover = SHARED
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

    sections: list[tuple[str, str, str]] = []
    sections.append(("summary", "Best configurations", summary_table(agg)))

    pareto = pareto_figures(agg, hover)
    missing = [c for c in COST_AXES if c not in pareto]
    body = [
        '<p class="note">One point per configuration: the mean over its seeds, with error '
        "bars of one standard deviation. Outlined points are on their router's Pareto front "
        "(solid line); the dashed line is the front over all routers. Cost axes are "
        "logarithmic. Hover a point for its full configuration and run ids; the menu at the "
        "top right switches the quality metric.</p>",
        _directions_note(),
    ]
    body += [figure_html(f"fig-pareto-{cost}", fig) for cost, fig in pareto.items()]
    if missing:
        body.append(f'<p class="note">Not measured in any ok run: '
                    f"{esc(', '.join(label(c) for c in missing))}.</p>")
    if not pareto:
        body = ['<p class="note">Nothing to draw yet: no ok run with a cost and a quality.</p>']
    sections.append(("pareto", "Quality against cost", "".join(body)))

    scaling = [(f"fig-scaling-{x}", fig_scaling(agg, x, hover=hover))
               for x in ("num_experts", "slots_per_expert")]
    scaling_html = "".join(figure_html(i, f) for i, f in scaling if f is not None)
    sections.append(("scaling", "Scaling", scaling_html or
                     '<p class="note">No MoE run with a quality metric yet.</p>'))

    from reports.scaling_report import scaling_section_body

    sections.append(("fits", "Fitted curves and compute multipliers",
                     scaling_section_body(agg, hover, figure_html)))

    diagnostics = [(f"fig-router-{m}", fig_router_diagnostic(agg, m, hover=hover))
                   for m in ROUTER_DIAGNOSTICS]
    diag_html = "".join(figure_html(i, f) for i, f in diagnostics if f is not None)
    sections.append(("routers", "Router diagnostics",
                     f'<div class="grid">{diag_html}</div>' if diag_html else
                     '<p class="note">No router metric recorded yet.</p>'))

    sections.append(("problems", "Failed and diverged runs", problems_table(df)))

    main = [answer_section([*(answers or []), best_at_equal_cost(agg)])]
    main += [_section(sid, t, b) for sid, t, b in sections] + list(extra_sections or [])
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
        *header, nav_bar(main), hover_script(hover_text), *main, *footer,
        "</body></html>\n",
    ])


def write_report(
    df: pl.DataFrame,
    out: Path,
    *,
    study_name: str,
    study_text: str | None = None,
    pending: int = 0,
    extra_sections: list[str] | None = None,
    answers: list[str] | None = None,
) -> Path:
    """Write the study's report to ``out`` and return its path.

    ``df`` holds the records (any status); ``pending`` > 0 marks the page partial;
    ``extra_sections`` are HTML snippets, already safe, placed after the failed-runs table,
    before the footer; ``answers`` are answer blocks (``reports.verdict``) for the top.
    The file is replaced atomically, so a browser reloading it never reads half a page.
    """
    out = Path(out)
    page = render_report(df, study_name=study_name, study_text=study_text, pending=pending,
                         extra_sections=extra_sections, answers=answers)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(page, encoding="utf-8")
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out


__all__ = ["write_report", "render_report", "figure_html", "best_configurations", "esc",
           "config_label"]
