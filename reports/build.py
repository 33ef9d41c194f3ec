"""``moe-harness report``: the study's store in, one HTML page out (a pure function of files)."""

from __future__ import annotations

from pathlib import Path

from harness.results.store import Store
from harness.spec.study import Study


def tuning_sections(store: Store) -> list[str]:
    """The tuning section, from the summary ``moe-harness tune`` left in the store."""
    from reports.tuning import tuning_section

    tuning = tuning_section(store)  # None until `moe-harness tune` wrote its summary
    return [tuning] if tuning else []


def _claims(frame, agg) -> tuple[str | None, str | None]:
    from reports.claims import check_claims, claims_section
    from reports.figures import primary_quality
    from reports.verdict import claims_answer

    verdicts = check_claims(agg) if agg.height and primary_quality(agg) else None
    return claims_answer(agg, verdicts), claims_section(agg, verdicts)


def _figures(frame, agg) -> tuple[str | None, str | None]:
    from reports.paper import paper_section

    return None, paper_section(frame, agg)


#: The paper's analyses on the page, in order. Each maps (records frame, derived aggregate)
#: to (its answer block for the top of the page, its section), either None when the records
#: cannot fill it. Sections are linked from the page's top bar by their ``<section id>``; a
#: new analysis is one more entry here.
ANALYSES = (_claims, _figures)


def paper_parts(frame) -> tuple[list[str], list[str]]:
    """(answer blocks, sections) of every analysis that ``frame``'s records can fill (any
    study: a figure or claim without the data it needs is left out or says so)."""
    from reports.aggregate import aggregate
    from reports.figures import with_rows
    from reports.paper import derive

    agg = derive(with_rows(aggregate(frame)))
    parts = [analysis(frame, agg) for analysis in ANALYSES]
    return [a for a, _ in parts if a], [s for _, s in parts if s]


def paper_sections(frame) -> list[str]:
    """The claims check and the paper's figures that ``frame``'s records can fill."""
    return paper_parts(frame)[1]


def report_json(store: Store) -> dict:
    """The analysis behind the page as JSON types: fitted curves, compute multipliers and
    measured matches (``reports.scaling``), and the claims' verdicts."""
    from dataclasses import asdict

    from reports.aggregate import aggregate, load_records
    from reports.claims import check_claims
    from reports.figures import with_rows
    from reports.paper import derive
    from reports.scaling import to_json
    from reports.scaling_report import analysis_for

    agg = with_rows(aggregate(load_records(store.runs_dir)))
    analysis = analysis_for(agg)
    claims = [asdict(v) for v in check_claims(derive(agg))] if agg.height else []
    return {"scaling": to_json(analysis) if analysis else None, "claims": claims}


def build_report(study: Study, store: Store, out: Path | None = None) -> Path:
    from reports.aggregate import load_records
    from reports.html import write_report

    frame = load_records(store.runs_dir)  # an unreadable record shows up as a problem row
    recorded = set(frame["run_id"].to_list())
    tune_only = getattr(study, "tune", None) and not getattr(study, "grid", None)
    grid = [] if tune_only else study.expand()  # a tune-only study has no grid to wait for
    pending = sum(1 for spec in grid if spec.run_id not in recorded)
    answers, sections = paper_parts(frame)
    return write_report(frame, Path(out or store.dir / "report.html"), study_name=study.name,
                        study_text=store.study_text(), pending=pending, answers=answers,
                        extra_sections=tuning_sections(store) + sections)
