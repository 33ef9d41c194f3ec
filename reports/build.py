"""``moe-harness report``: the study's store in, one HTML page out (a pure function of files).

The walk from records to page: ``reports.records`` (read, upgrade) -> ``reports.aggregate``
(aggregate once) -> ``reports.analyses`` (findings: fits, claims) -> ``reports.figures`` ->
``reports.page`` (the sections, in one list, rendered by one page function).
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from harness.results.store import Store
from harness.spec.study import Study
from reports.analyses.findings import findings_json
from reports.page.answer import claims_answer
from reports.page.render import page_of, write_page
from reports.page.sections import PAPER_SECTIONS, rendered
from reports.records import load_records


def build_report(study: Study, store: Store, out: Path | None = None, *,
                 json_out: Path | None = None) -> Path:
    """Write the study's page: every section its records fill, the paper's analyses and the
    tuning included; runs of the study's grid without a record make it partial. With
    ``json_out``, also write the analysis behind the page there as JSON
    (``reports.analyses.findings.findings_json``: fits, held-out checks, joint laws, planned
    against measured, claims), from the same analysis."""
    frame = load_records(store.runs_dir)  # an unreadable record shows up as a problem row
    recorded = set(frame["run_id"].to_list())
    tune_only = getattr(study, "tune", None) and not getattr(study, "grid", None)
    grid = [] if tune_only else study.expand()  # a tune-only study has no grid to wait for
    pending = sum(1 for spec in grid if spec.run_id not in recorded)
    page = page_of(frame, paper=True, store=store, estimate=getattr(study, "estimate", None))
    path = write_page(page, Path(out or store.dir / "report.html"), study_name=study.name,
                      study_text=store.study_text(), pending=pending)
    if json_out is not None:
        Path(json_out).write_text(json.dumps(findings_json(page.found), indent=1) + "\n")
    return path


def paper_parts(frame: pl.DataFrame) -> tuple[list[str], list[str]]:
    """(answer blocks, sections) of the paper's analyses alone, as the page renders them, for
    a page a caller assembles (any study: a figure or claim without the data it needs is left
    out or says so)."""
    page = page_of(frame, paper=True)
    answer = claims_answer(page.agg, page.found.verdicts, frame=frame)
    return ([answer] if answer else []), rendered(page, PAPER_SECTIONS)


def paper_sections(frame: pl.DataFrame) -> list[str]:
    """The claims check and the paper's figures that ``frame``'s records can fill."""
    return paper_parts(frame)[1]
