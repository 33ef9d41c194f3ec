"""What the page and ``report --json`` show, computed once from the records: their one
aggregate, the fitted curves and, with the paper's analyses, the claims check."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import polars as pl

from reports.aggregate import summarise
from reports.analyses.claims import Verdict, check_claims
from reports.analyses.fits import analysis_for
from reports.analyses.scaling import Analysis, to_json


@dataclass(frozen=True)
class Findings:
    frame: pl.DataFrame  # the records, every status (``reports.records``)
    agg: pl.DataFrame  # their one aggregate (``reports.aggregate.summarise``)
    fits: Analysis | None  # fitted curves on the primary quality (None: nothing to fit)
    verdicts: list[Verdict] | None  # the claims check (None: not asked, or no ok run)


def findings(frame: pl.DataFrame, *, claims: bool = True) -> Findings:
    """Aggregate ``frame`` once and analyse the aggregate: fitted curves always, the paper's
    claims when ``claims``."""
    agg = summarise(frame)
    verdicts = check_claims(agg) if claims and agg.height else None
    return Findings(frame, agg, analysis_for(agg), verdicts)


def findings_json(found: Findings) -> dict[str, Any]:
    """The analysis behind the page as JSON types: fitted curves, compute multipliers and
    measured matches (``reports.analyses.scaling``), and the claims' verdicts."""
    return {"scaling": to_json(found.fits) if found.fits else None,
            "claims": [asdict(v) for v in found.verdicts or []]}
