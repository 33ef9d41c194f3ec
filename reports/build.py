"""``moe-harness report``: the study's store in, one HTML page out (a pure function of files)."""

from __future__ import annotations

from pathlib import Path

from harness.store import Store
from harness.study import Study


def extra_sections(study: Study, store: Store, frame) -> list[str]:
    """Sections beyond the generic page: tuning history, the paper's figures and claims."""
    sections: list[str] = []
    if getattr(study, "tune", None) is not None:  # (test doubles may lack it)
        from reports.tuning import tuning_section

        tuning = tuning_section(study, store)  # None until `moe-harness tune` made a storage
        if tuning:
            sections.append(tuning)
    sections += paper_sections(frame)
    return sections


def paper_sections(frame) -> list[str]:
    """The claims check and the paper's figures that ``frame``'s records can fill (any
    study: a figure or claim without the data it needs is left out or says so)."""
    from reports.aggregate import aggregate
    from reports.claims import claims_section
    from reports.figures import with_rows
    from reports.paper import derive, paper_section

    agg = derive(with_rows(aggregate(frame)))
    return [s for s in (claims_section(agg), paper_section(frame, agg)) if s]


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
    text = Path(study.source).read_text() if study.source else None
    return write_report(frame, Path(out or store.dir / "report.html"), study_name=study.name,
                        study_text=text, pending=pending,
                        extra_sections=extra_sections(study, store, frame))
