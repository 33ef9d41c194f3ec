"""A robust refit of each cost curve (:mod:`reports.analyses.scaling`), as Besiroglu et al.
(2024, arXiv 2404.10102) recommend: the same law ``err(C) = E + A (C / C0)^-alpha`` fitted in
log space with a **Huber loss**, by ``scipy.optimize.least_squares`` from a **grid of starting
points**, with its **convergence** reported.

The page's curve is the least-squares fit with the floor ``E`` profiled on a grid; this refit
says whether that answer depends on its method: did the optimiser converge, did the starts
agree, does the floor sit at its bound (pressing against the lowest error: not identified by
the points), and how far are its parameters from the least-squares ones. Huber ``delta``, in
log space: 1.345 x the points' median ``sem / err``; without seeds, 1.345 x the MAD of the
least-squares fit's log residuals, at least 1e-3 (Hoffmann et al. 2022's value).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import least_squares

from reports.analyses.lawfit import HUBER_DEFAULT, HUBER_TUNING
from reports.analyses.scaling import SATURATING, Analysis, Curve, predict_error

FLOOR_TOP = 0.999  # the floor's bound, as a fraction of the lowest error
STARTS = (0.0, 0.25, 0.5, 0.75, 0.9)  # starting floors, as fractions of the lowest error
NAMES = ("E", "A", "alpha")


@dataclass(frozen=True)
class RobustFit:
    router: str
    cost: str
    params: dict[str, float]  # the Huber fit's E, A, alpha (A at the curve's C0)
    least_squares: dict[str, float]  # the page's fit, for comparison
    delta: float
    converged: bool
    convergence: str
    floor_at_bound: bool

    def sentence(self) -> str:
        p, q = self.params, self.least_squares
        state = "converged" if self.converged else "did NOT converge"
        text = (f"{self.router} on {self.cost}: Huber refit {state} ({self.convergence}); "
                f"alpha {p['alpha']:.3g} (least squares {q['alpha']:.3g}), E {p['E']:.3g} "
                f"({q['E']:.3g})")
        if self.floor_at_bound:
            text += "; the floor sits at its bound (the lowest error): not identified"
        return text


def _delta(curve: Curve, y: np.ndarray) -> float:
    rel = curve.points.sem / y
    rel = rel[np.isfinite(rel) & (rel > 0)]  # the points with a measured seed noise
    if rel.size:
        return max(HUBER_TUNING * float(np.median(rel)), HUBER_DEFAULT)
    r = np.log(y) - np.log(predict_error(curve.params, curve.points.cost, curve.c0)[0])
    mad = 1.4826 * float(np.median(np.abs(r - np.median(r))))
    return max(HUBER_TUNING * mad, HUBER_DEFAULT)


def huber_refit(curve: Curve) -> RobustFit | None:
    """The Huber refit of a fitted curve (None for a refused one). A plain power law (too
    few costs for a floor) keeps ``E = 0`` as the curve does."""
    if not curve.fitted:
        return None
    x = np.log(curve.points.cost / curve.c0)
    y = np.asarray(curve.quality.error(curve.points.quality), dtype=float)
    saturating = curve.kind == SATURATING
    delta, top = _delta(curve, y), float(y.min()) * FLOOR_TOP

    def residuals(theta):  # log A, alpha [, E]
        floor = theta[2] if saturating else 0.0
        return np.log(floor + np.exp(theta[0] - theta[1] * x)) - np.log(y)

    lo = [-np.inf, -np.inf] + ([0.0] if saturating else [])
    hi = [np.inf, np.inf] + ([top] if saturating else [])
    results = []
    for frac in STARTS if saturating else (0.0,):
        floor = frac * float(y.min())
        slope, icpt = np.polyfit(x, np.log(y - floor), 1)
        start = [icpt, -slope] + ([min(floor, top * (1 - 1e-9))] if saturating else [])
        res = least_squares(residuals, start, loss="huber", f_scale=delta, bounds=(lo, hi),
                            xtol=1e-14, ftol=1e-14, gtol=1e-14, max_nfev=5000)
        results.append(res)
    best = min(results, key=lambda r: r.cost)
    agree = sum(r.cost - best.cost <= 1e-6 * max(best.cost, delta**2) for r in results)
    floor = float(best.x[2]) if saturating else 0.0
    params = {"E": floor, "A": math.exp(best.x[0]), "alpha": float(best.x[1])}
    ls = dict(zip(NAMES, map(float, curve.params), strict=True))
    return RobustFit(curve.group, curve.cost, params, ls, delta, bool(best.success),
                     f"{best.message.rstrip('.')}; {agree} of {len(results)} starts reached the "
                     "best objective",
                     bool(saturating and floor >= top * (1 - 1e-6)))


def huber_refits(analysis: Analysis) -> list[RobustFit]:
    """:func:`huber_refit` of every fitted curve of an analysis."""
    return [fit for c in analysis.curves if (fit := huber_refit(c)) is not None]


def refit_json(fit: RobustFit) -> dict[str, Any]:
    return {"router": fit.router, "cost": fit.cost, "params": fit.params,
            "least_squares": fit.least_squares, "huber_delta": fit.delta,
            "converged": fit.converged, "convergence": fit.convergence,
            "floor_at_bound": fit.floor_at_bound, "sentence": fit.sentence()}


def disagreements(fits: Sequence[RobustFit], tol: float = 0.1) -> list[RobustFit]:
    """Refits whose exponent differs from the least-squares one by more than ``tol``
    (relative), that did not converge, or whose floor is not identified."""
    return [f for f in fits if not f.converged or f.floor_at_bound or abs(
        f.params["alpha"] - f.least_squares["alpha"]) > tol * abs(f.least_squares["alpha"])]


__all__ = ["RobustFit", "disagreements", "huber_refit", "huber_refits", "refit_json"]
