"""The rows of the tables that show the joint laws, the held-out checks, planned against
measured and a two-study comparison: ``(HEADERS, rows)`` pairs of plain strings, for the page
(``reports.page.tables.text_table``) and for Markdown alike. The numbers come from
:mod:`reports.analyses.laws`, :mod:`~reports.analyses.heldout`, :mod:`~reports.analyses.planned`
and :mod:`~reports.analyses.studies`."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from reports.analyses.heldout import HeldOut
from reports.analyses.laws import JointLaw, multiplier_rows
from reports.metrics import label

LAW_HEADERS = ["router", "points (sizes × expert counts)", "transform", "a (size)",
               "b (experts)", "c (size × experts)", "d", "saturation", "fit", "note"]
MULTIPLIER_HEADERS = ["configuration", "dense N", "experts", "worth a dense N'",
                      "N' / N [95%]", "note"]
HELDOUT_HEADERS = ["router", "fit", "held out", "predicted [95%]", "measured", "error",
                   "extrapolates"]
PLANNED_HEADERS = ["quantity", "runs", "measured / planned: median", "lowest", "highest",
                   "note"]
COMPARE_HEADERS = ["configuration", "metric", "A", "B", "change B - A [95%]", "relative"]


def _g(value: float | None, digits: int = 3) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.{digits}g}"


def _with_interval(point: float, lo: float, hi: float) -> str:
    return f"{_g(point)} [{_g(lo)}, {_g(hi)}]"


def law_rows(laws: Sequence[JointLaw]) -> list[list[str]]:
    """One row per router: the grid, the transform, each parameter with its interval, the
    optimiser's convergence; a refused law shows its note."""
    rows = []
    for law in laws:
        sizes, counts = law.points.grid
        base = [law.router, f"{law.points.n.size} ({sizes} × {counts})"]
        if not law.fitted:
            rows.append(base + ["refused"] + ["-"] * 6 + [law.note])
            continue
        iv = law.intervals()
        p = dict(zip(law.names, law.params, strict=True))
        cells = [_with_interval(p[k], *iv[k]) for k in ("a", "b", "c", "d")]
        saturation = (f"E_start {_with_interval(p['E_start'], *iv['E_start'])}, "
                      f"E_max {_with_interval(p['E_max'], *iv['E_max'])}"
                      if "E_max" in p else "-")
        fit = ("converged" if law.converged else "NOT converged") + f": {law.convergence}"
        note = law.note + (f"; {law.points.dropped} other configurations left out (best per "
                           "point)" if law.points.dropped else "")
        rows.append(base + [law.transform, *cells, saturation, fit, note])
    return rows


def law_multiplier_rows(laws: Sequence[JointLaw]) -> list[list[str]]:
    """Every MoE point's effective parameter multiplier (how large a dense model it is worth)."""
    rows = []
    for law in laws:
        for m in multiplier_rows(law):
            lo, hi = m["interval"]
            rows.append([m["config"], _g(m["params_backbone"]), str(m["num_experts"]),
                         _g(m["effective_params"]),
                         f"{_g(m['multiplier'])}x [{_g(lo)}, {_g(hi)}]",
                         "extrapolated" if m["extrapolated"] else ""])
    return rows


def heldout_rows(checks: Sequence[HeldOut]) -> list[list[str]]:
    """One row per held-out configuration of every check (a check that could not be made:
    one row with its reason)."""
    rows = []
    for h in checks:
        fit = f"{h.kind} on {label(h.axis)}" if h.kind == "curve" else "joint law"
        if not h.checked:
            rows.append([h.router, fit, "-", "-", "-", "-", f"no check: {h.note}"])
            continue
        for held, at, p, (lo, hi), m, out in zip(h.held, h.at, h.predicted, h.intervals,
                                                 h.measured, h.outside, strict=True):
            rows.append([h.router, fit, f"{held} ({at})", f"{p:.4g} [{lo:.4g}, {hi:.4g}]",
                         f"{m:.4g}", f"{m - p:+.3g}",
                         "NO: outside the interval (flagged)" if out else "yes"])
    return rows


def planned_table_rows(summary: Sequence[Mapping[str, Any]]) -> list[list[str]]:
    """:func:`reports.analyses.planned.planned_summary` as rows."""
    return [[s["quantity"], str(s["runs"]), _g(s["median_ratio"]), _g(s["min_ratio"]),
             _g(s["max_ratio"]), s["note"]] for s in summary]


def compare_rows(data: Mapping[str, Any], flagged_only: bool = True) -> list[list[str]]:
    """:func:`reports.analyses.studies.compare`'s changes as rows (the flagged ones, or all)."""
    rows = []
    for row in data["rows"]:
        for metric, c in row["changes"].items():
            if flagged_only and not c["flagged"]:
                continue
            rel = "-" if c["relative"] is None else f"{c['relative']:+.1%}"
            rows.append([row["config"], label(metric), f"{c['a']:.4g}", f"{c['b']:.4g}",
                         c["text"] + (" (flagged)" if c["flagged"] else ""), rel])
    return rows


__all__ = ["COMPARE_HEADERS", "HELDOUT_HEADERS", "LAW_HEADERS", "MULTIPLIER_HEADERS",
           "PLANNED_HEADERS", "compare_rows", "heldout_rows", "law_multiplier_rows", "law_rows",
           "planned_table_rows"]
