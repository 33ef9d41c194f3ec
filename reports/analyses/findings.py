"""What the page and ``report --json`` show, computed once from the records: their one
aggregate, the fitted curves with their held-out checks and Huber refits, the joint laws over
size and experts with theirs, planned against measured and, with the paper's analyses, the
claims check."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import polars as pl

from harness.spec.study import EstimateConfig
from reports.aggregate import summarise
from reports.analyses.claims import Verdict, check_claims
from reports.analyses.fits import analysis_for
from reports.analyses.heldout import HeldOut, check_json, curve_checks, law_checks
from reports.analyses.laws import JointLaw, joint_laws, law_json
from reports.analyses.planned import planned_rows
from reports.analyses.robust import RobustFit, huber_refits, refit_json
from reports.analyses.scaling import N_BOOT, Analysis, to_json

LARGE_STORE = 2000  # records beyond which the laws and checks use fewer bootstrap replicates
LARGE_STORE_BOOT = 50


@dataclass(frozen=True)
class Findings:
    frame: pl.DataFrame  # the records, every status (``reports.records``)
    agg: pl.DataFrame  # their one aggregate (``reports.aggregate.summarise``)
    fits: Analysis | None  # fitted curves on the primary quality (None: nothing to fit)
    verdicts: list[Verdict] | None  # the claims check (None: not asked, or no ok run)
    laws: list[JointLaw] = field(default_factory=list)  # one joint law per MoE router
    law_checks: list[HeldOut] = field(default_factory=list)  # held-out check of each law
    curve_checks: list[HeldOut] = field(default_factory=list)  # of each fitted curve
    refits: list[RobustFit] = field(default_factory=list)  # Huber refit of each curve
    planned: list[dict[str, Any]] = field(default_factory=list)  # ``planned_rows``


def bootstrap_count(records: int) -> int:
    """Bootstrap replicates for the joint laws and held-out checks: ``N_BOOT``, or
    :data:`LARGE_STORE_BOOT` for a store of more than :data:`LARGE_STORE` records (so that
    ``report`` stays quick on large stores; the intervals are then coarser)."""
    return N_BOOT if records <= LARGE_STORE else LARGE_STORE_BOOT


def measured(frame: pl.DataFrame) -> pl.DataFrame:
    """The ok records with a measurement planned against measured can compare (a measured
    training or step peak, counted FLOPs, a training time): ``planned_rows`` gives the same
    rows for these as for all, without building every other record's model config."""
    cols = set(frame.columns)
    if "status" not in cols:
        return frame.clear()

    def has(name: str) -> pl.Expr:
        return pl.col(name).is_not_null() if name in cols else pl.lit(False)

    counted = (pl.col("flops_counter").is_not_null() & (pl.col("flops_counter") != "analytic")
               if "flops_counter" in cols else pl.lit(False))
    return frame.filter((pl.col("status") == "ok") & (
        has("peak_memory_rank_mb") | (has("peak_memory_mb") & has("timing_batch_size"))
        | counted | has("train_time_s")))


def findings(frame: pl.DataFrame, *, claims: bool = True,
             estimate: EstimateConfig | None = None) -> Findings:
    """Aggregate ``frame`` once and analyse the aggregate: fitted curves, their held-out
    checks and Huber refits, the joint laws and theirs, and planned against measured (on
    ``estimate``'s assumptions; the defaults when None) always; the paper's claims when
    ``claims``."""
    agg = summarise(frame)
    verdicts = check_claims(agg) if claims and agg.height else None
    fits = analysis_for(agg)
    n_boot = bootstrap_count(frame.height)
    laws = joint_laws(frame, n_boot=n_boot) if frame.height else []
    return Findings(
        frame, agg, fits, verdicts, laws=laws, law_checks=law_checks(laws, n_boot=n_boot),
        curve_checks=curve_checks(fits, n_boot=n_boot) if fits else [],
        refits=huber_refits(fits) if fits else [],
        planned=planned_rows(measured(frame).to_dicts(), estimate))


def findings_json(found: Findings) -> dict[str, Any]:
    """The analysis behind the page as JSON types: fitted curves, compute multipliers and
    measured matches (``reports.analyses.scaling``), the claims' verdicts, the joint laws,
    the held-out checks (curves and laws), the Huber refits and planned against measured."""
    return {"scaling": to_json(found.fits) if found.fits else None,
            "claims": [asdict(v) for v in found.verdicts or []],
            "laws": [law_json(law) for law in found.laws],
            "heldout": [check_json(h) for h in [*found.curve_checks, *found.law_checks]],
            "robust": [refit_json(f) for f in found.refits],
            "planned": found.planned}
