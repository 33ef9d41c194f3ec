"""The page's tables: the best configurations, the runs that are not ok, the environments,
the claims' verdicts, and tables of plain text (the fits'). Cells are escaped here."""

from __future__ import annotations

import html
import platform
from collections.abc import Sequence
from typing import Any

import plotly
import polars as pl

from reports.aggregate import primary_quality, problems, quality_axes, status_counts
from reports.analyses.claims import FAILED, HELD, INCONCLUSIVE, LACKS, Verdict
from reports.analyses.verdict import best_configurations
from reports.labels import config_label, fmt, fmt_mean_std, router_name
from reports.metrics import METRICS, label
from reports.page.html import esc, table

#: Rows of the problems table written into the page (the count of the rest is stated).
MAX_PROBLEM_ROWS = 2000
_ENV_TABLE_KEYS = ("device", "torch_version", "attention_backend", "git_sha", "hostname")


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
        + table([esc(h) for h in headers], rows, cls="summary", numeric=numeric) + "</div>"
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
            + table([esc(c) for c in cols] + ["error"], rows, cls="problems") + "</div>" + more)


def environment_table(df: pl.DataFrame) -> str:
    keys = [k for k in _ENV_TABLE_KEYS if k in df.columns]
    parts = []
    if keys:
        envs = (df.with_columns(pl.col(k).cast(pl.String) for k in keys)
                .group_by(keys).len().sort("len", descending=True))
        rows = [[esc(v) for v in row] for row in envs.iter_rows()]
        parts.append(table([esc(k) for k in keys] + ["runs"], rows, cls="environment",
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


_BADGE = {HELD: "#d4edda", FAILED: "#f8d7da", INCONCLUSIVE: "#fff3cd", LACKS: "#eeeeee"}


def claims_table(verdicts: Sequence[Verdict]) -> str:
    rows = "".join(
        f'<tr data-claim="{html.escape(v.key)}" data-verdict="{html.escape(v.status)}">'
        f"<td>{html.escape(v.claim)}</td>"
        f'<td style="background:{_BADGE[v.status]};font-weight:600;white-space:nowrap">'
        f"{html.escape(v.status)}</td><td>{html.escape(v.evidence)}</td>"
        f'<td class="note">{html.escape(v.rule)}</td></tr>'
        for v in verdicts)
    return ('<table class="claims"><thead><tr><th>claim</th><th>verdict</th>'
            "<th>numbers behind it</th><th>how it is judged</th></tr></thead>"
            f"<tbody>{rows}</tbody></table>")


def text_table(headers: Sequence[str], rows: Sequence[Sequence[str]], cls: str) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
                   for row in rows)
    return (f'<div class="scroll"><table class="{cls}"><thead><tr>{head}</tr></thead>'
            f"<tbody>{body}</tbody></table></div>")
