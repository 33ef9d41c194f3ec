"""Do the fits extrapolate? A held-out check for every fitted curve and joint law
(after Besiroglu et al. 2024, "Chinchilla Scaling: A replication attempt", arXiv 2404.10102,
who show that a law's parameters can look tight and still fail out of sample).

The check refits the same law without the costliest configuration(s) (the front's highest
cost for a curve of :mod:`reports.analyses.scaling`; the highest training compute for a joint law of
:mod:`reports.analyses.laws`, else the most parameters) and predicts them. The prediction's interval
is the refit's bootstrap replicates plus the held-out mean's own seed noise (normal, its
standard error), so that a measured mean inside it is what the fit and the noise allow. A
fit whose held-out measurement falls outside that interval is **flagged**: it describes the
cheaper configurations but does not extrapolate to the costliest one, and its predictions
beyond the measured costs (plans, multipliers read past the grid) should not be trusted.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from reports.analyses.laws import JointLaw, fit_law, interval
from reports.analyses.scaling import (
    CONFIDENCE,
    MIN_POINTS,
    N_BOOT,
    Analysis,
    Curve,
    Points,
    Quality,
    fit_curve,
    predict_error,
)
from reports.metrics import label

HELD_OUT = 1  # configurations held out by default


@dataclass(frozen=True)
class HeldOut:
    """One fit's held-out check (``note`` instead of numbers when none could be made)."""

    kind: str  # "curve" or "surface"
    router: str
    axis: str  # the curve's cost column; "size x experts" for a joint law
    quality: Quality
    held: list[str] = field(default_factory=list)  # labels of the held-out configurations
    at: list[str] = field(default_factory=list)  # where, in words
    predicted: list[float] = field(default_factory=list)
    intervals: list[tuple[float, float]] = field(default_factory=list)
    measured: list[float] = field(default_factory=list)
    note: str = ""

    @property
    def checked(self) -> bool:
        return bool(self.predicted)

    @property
    def outside(self) -> list[bool]:
        return [not lo <= m <= hi for m, (lo, hi) in zip(self.measured, self.intervals,
                                                         strict=True)]

    @property
    def flagged(self) -> bool:
        """The measured quality of a held-out configuration lies outside its interval."""
        return any(self.outside)

    @property
    def errors(self) -> list[float]:
        return [m - p for m, p in zip(self.measured, self.predicted, strict=True)]

    def sentence(self) -> str:
        """'predicted 0.712 ± 0.010 at the largest cost (...), measured 0.705: inside the
        95% interval', and what a flag means."""
        head = f"{self.router} ({self.kind}, {self.axis}): "
        if not self.checked:
            return head + f"no held-out check: {self.note}"
        parts = []
        for held, at, p, (lo, hi), m, out in zip(self.held, self.at, self.predicted,
                                                 self.intervals, self.measured, self.outside,
                                                 strict=True):
            parts.append(f"predicted {self.quality.label} {p:.4g} ± {(hi - lo) / 2:.2g} at the "
                         f"costliest configuration ({held}, {at}), measured {m:.4g} "
                         f"(error {m - p:+.3g}): {'OUTSIDE' if out else 'inside'} the "
                         f"{CONFIDENCE:.0%} interval")
        text = head + "; ".join(parts)
        if self.flagged:
            text += (" -- FLAGGED: the fit to the cheaper configurations does not extrapolate "
                     "to the costliest; do not trust its predictions beyond the grid")
        return text


def _samples_interval(point: float, samples: np.ndarray) -> tuple[float, float]:
    samples = samples[np.isfinite(samples)]
    if samples.size == 0:
        return point, point
    lo, hi = interval(samples)
    return float(min(lo, hi)), float(max(lo, hi))


def _costliest(cost: np.ndarray, n_out: int) -> np.ndarray:
    order = np.argsort(np.where(np.isfinite(cost), cost, -np.inf), kind="stable")
    return order[-n_out:]


# --------------------------------------------------------------------------- curves


def curve_check(points: Points, group: str, cost: str, quality: Quality, *,
                n_out: int = HELD_OUT, n_boot: int = N_BOOT, seed: int = 0) -> HeldOut:
    """Refit a curve of :func:`reports.analyses.scaling.fit_curve` (its inputs: the router's front
    ``points`` on ``cost``) without its ``n_out`` costliest points and predict them."""
    base = {"kind": "curve", "router": group, "axis": cost, "quality": quality}
    out = _costliest(points.cost, n_out) if points.cost.size else np.zeros(0, dtype=int)
    keep = np.setdiff1d(np.arange(points.cost.size), out)
    distinct = np.unique(points.cost[keep]).size
    if distinct < MIN_POINTS or out.size == 0:
        return HeldOut(**base, note=(
            f"{points.cost.size} front points; holding out {n_out} leaves {distinct} distinct "
            f"costs, a fit needs at least {MIN_POINTS}"))
    sub = Points(points.cost[keep], points.quality[keep], points.sem[keep],
                 [points.labels[i] for i in keep], [points.rows[i] for i in keep])
    refit = fit_curve(sub, group, cost, quality, n_boot=n_boot, seed=seed)
    if not refit.fitted or refit.params[2] <= 0:
        return HeldOut(**base, note="the refit without the costliest point "
                       + (refit.note or "does not improve with cost"))
    rng = np.random.default_rng(seed + 1)
    rows: dict[str, list] = {"held": [], "at": [], "predicted": [], "intervals": [],
                             "measured": []}
    for i in sorted(out, key=lambda i: points.cost[i]):
        c = float(points.cost[i])
        errors = predict_error(refit.samples, c, refit.c0)[:, 0]
        errors = errors + points.sem[i] * rng.standard_normal(errors.size)
        point = float(refit.quality_at(c)[0][0])
        rows["held"].append(points.labels[i])
        rows["at"].append(f"{label(cost)} {c:.3g}")
        rows["predicted"].append(point)
        rows["intervals"].append(_samples_interval(point, np.asarray(quality.value(errors))))
        rows["measured"].append(float(points.quality[i]))
    return HeldOut(**base, **rows, note=(
        f"refit ({refit.kind}) on {sub.cost.size} of {points.cost.size} front points"))


def curve_checks(analysis: Analysis, *, n_out: int = HELD_OUT, n_boot: int = N_BOOT,
                 seed: int = 0) -> list[HeldOut]:
    """:func:`curve_check` of every fitted curve of an analysis (:func:`reports.analyses.scaling.
    analyse`), in its order; a refused curve gets no check."""
    return [curve_check(c.points, c.group, c.cost, c.quality, n_out=n_out, n_boot=n_boot,
                        seed=seed) for c in analysis.curves if c.fitted]


def by_curve(checks: Sequence[HeldOut]) -> dict[tuple[str, str], HeldOut]:
    """(router, cost) -> its check, to put beside each curve (``Curve.group``, ``.cost``)."""
    return {(h.router, h.axis): h for h in checks}


def flagged_curve(checks: Sequence[HeldOut], curve: Curve) -> HeldOut | None:
    """The flagged check of ``curve`` (for ``plan``: a warning on its row), else None."""
    for h in checks:
        if (h.router, h.axis) == (curve.group, curve.cost) and h.flagged:
            return h
    return None


def warnings_by_router(checks: Sequence[HeldOut], cost: str = "train_exaflops") -> dict[str, str]:
    """Router -> the sentence of its flagged check on ``cost`` (``moe-harness plan``: a
    warning on that router's row; the plan's curves are on training compute)."""
    return {h.router: h.sentence() for h in checks
            if h.kind == "curve" and h.axis == cost and h.flagged}


# --------------------------------------------------------------------------- joint laws


def law_check(law: JointLaw, *, n_out: int = HELD_OUT, n_boot: int = N_BOOT,
              seed: int = 0) -> HeldOut:
    """Refit a joint law (same transform, ``N0`` and Huber delta) without its ``n_out``
    costliest configurations and predict them."""
    base = {"kind": "surface", "router": law.router, "axis": "size x experts",
            "quality": law.quality}
    if not law.fitted:
        return HeldOut(**base, note=law.note)
    pts = law.points
    cost = np.where(np.isfinite(pts.cost), pts.cost, pts.n * pts.e)
    out = _costliest(cost, n_out)
    keep = np.ones(pts.n.size, dtype=bool)
    keep[out] = False
    refit = fit_law(pts.subset(keep), law.quality, n0=law.n0, transform=law.transform,
                    delta=law.delta, n_boot=n_boot, seed=seed)
    if not refit.fitted:
        return HeldOut(**base, note=f"without the costliest configuration: {refit.note}")
    rng = np.random.default_rng(seed + 1)
    rows: dict[str, list] = {"held": [], "at": [], "predicted": [], "intervals": [],
                             "measured": []}
    for i in out[::-1]:
        n, e = float(pts.n[i]), float(pts.e[i])
        logs = refit.log_error(n, e, refit.samples)[:, 0]
        logs = logs + (pts.sem[i] / pts.error[i]) * rng.standard_normal(logs.size)
        with np.errstate(over="ignore"):
            values = np.asarray(law.quality.value(np.exp(logs)))
        point = float(law.quality.value(math.exp(refit.log_error(n, e)[0, 0])))
        rows["held"].append(pts.labels[i])
        rows["at"].append(f"N {n:.3g}, E {e:g}")
        rows["predicted"].append(point)
        rows["intervals"].append(_samples_interval(point, values))
        rows["measured"].append(float(pts.quality[i]))
    return HeldOut(**base, **rows, note=(
        f"refit ({refit.transform}) on {int(keep.sum())} of {pts.n.size} points"))


def law_checks(laws: Sequence[JointLaw], **kw: Any) -> list[HeldOut]:
    """:func:`law_check` of every fitted law."""
    return [law_check(law, **kw) for law in laws if law.fitted]


def check_json(check: HeldOut) -> dict[str, Any]:
    """A check as JSON types, its sentence included."""
    def num(v: float) -> float | None:
        return float(v) if math.isfinite(v) else None

    return {"kind": check.kind, "router": check.router, "axis": check.axis,
            "quality": check.quality.name, "held_out": check.held, "at": check.at,
            "predicted": [num(v) for v in check.predicted],
            "intervals": [[num(v) for v in iv] for iv in check.intervals],
            "measured": [num(v) for v in check.measured],
            "errors": [num(v) for v in check.errors], "flagged": check.flagged,
            "confidence": CONFIDENCE, "note": check.note, "sentence": check.sentence()}


__all__ = ["HeldOut", "by_curve", "check_json", "curve_check", "curve_checks", "flagged_curve",
           "law_check", "law_checks", "warnings_by_router"]
