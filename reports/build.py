"""``moe-harness report``: the study's store in, one HTML page out (a pure function of files)."""

from __future__ import annotations

from pathlib import Path

from harness.store import Store
from harness.study import Study


def extra_sections(study: Study, store: Store, frame) -> list[str]:
    """Sections beyond the generic page: tuning history, the paper's figures and claims."""
    sections: list[str] = []
    if study.tune is not None:
        from reports.tuning import tuning_section

        tuning = tuning_section(study, store)  # None until `moe-harness tune` made a storage
        if tuning:
            sections.append(tuning)
    return sections


def build_report(study: Study, store: Store, out: Path | None = None) -> Path:
    from reports.aggregate import load_records
    from reports.html import write_report

    frame = load_records(store.runs_dir)  # an unreadable record shows up as a problem row
    recorded = set(frame["run_id"].to_list())
    pending = sum(1 for spec in study.expand() if spec.run_id not in recorded)
    text = Path(study.source).read_text() if study.source else None
    return write_report(frame, Path(out or store.dir / "report.html"), study_name=study.name,
                        study_text=text, pending=pending,
                        extra_sections=extra_sections(study, store, frame))
