"""Fitted quality-against-cost curves, compute multipliers and cost predictions.

Pure functions of the aggregated frame (:func:`reports.aggregate.aggregate` output: one row
per configuration, ``M_mean`` / ``M_std`` / ``M_n`` per metric); the method is written up in
``docs/scaling.md``. In short:

* **Curves.** Quality becomes an error that falls with cost (``1 - accuracy``, a loss as is)
  and is fitted, per router, over the router's Pareto front (what it reaches at a cost) with a
  saturating power law ``err(C) = E + A * (C / C0) ** -alpha`` (``C0``: the geometric mean of
  the fitted costs, so that ``A`` is the reducible error there). With fewer than
  :data:`MIN_SATURATING` distinct costs the floor ``E`` is fixed at 0 (a plain power law);
  below :data:`MIN_POINTS` the curve is refused with a note.
* **Intervals.** :data:`N_BOOT` bootstrap replicates, each redraws every configuration's mean
  from its seeds (normal, with the measured standard error) and flips the sign of its residual
  around the fit at random (a wild bootstrap over configurations, which keeps every cost in
  the fit); intervals are the replicates' central :data:`CONFIDENCE` range.
* **Multipliers.** Router ``a`` against router ``b`` at an error level ``e``: the cost at
  which ``b``'s curve reaches ``e`` divided by the cost at which ``a``'s does. Levels are read
  where both curves are inside the costs they were fitted on; when they share no quality the
  multiplier is an extrapolation and says so.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from reports.metrics import METRICS, label

N_BOOT = 200
CONFIDENCE = 0.95
MIN_POINTS = 3  # distinct costs for a plain power law (2 parameters, 1 residual degree)
TREND_TOL = 0.05  # a multiplier "grows" or "shrinks" only by more than 5% across the range
MIN_SATURATING = 5  # distinct costs before the floor E is fitted too
FIT_COSTS = ("train_exaflops", "gflops_per_image", "infer_latency_ms")
_COARSE = np.linspace(0.0, 0.995, 25)  # floor candidates, as fractions of the lowest error
_FINE = 17  # candidates around the best coarse one
SATURATING, POWER = "saturating power law", "power law"


# --------------------------------------------------------------------------- quality


@dataclass(frozen=True)
class Quality:
    """A quality column and how it becomes an error that falls with cost."""

    name: str
    label: str
    lower_is_better: bool
    ceiling: float | None = None  # accuracy: 1 (or 100 in percent); a loss: None

    def error(self, value: np.ndarray | float) -> np.ndarray | float:
        return value if self.lower_is_better else self.ceiling - value

    def value(self, error: np.ndarray | float) -> np.ndarray | float:
        return error if self.lower_is_better else self.ceiling - error


def quality_of(name: str) -> Quality:
    """The :class:`Quality` of a record metric (accuracies have a ceiling of 1)."""
    metric = METRICS[name]
    ceiling = None if metric.lower_is_better else 1.0
    return Quality(name, label(name), metric.lower_is_better, ceiling)


# --------------------------------------------------------------------------- fitting


def _interval(samples: np.ndarray, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    tail = (1 - CONFIDENCE) / 2
    lo = np.quantile(samples, tail, axis=axis, method="nearest")
    hi = np.quantile(samples, 1 - tail, axis=axis, method="nearest")
    return lo, hi


def _fit_given_floor(logx: np.ndarray, y: np.ndarray, floor: np.ndarray):
    """Least squares of ``log(err - E)`` on ``log(C / C0)`` for each floor ``E``; returns
    ``(log A, alpha, sse)`` with the error in log space. ``y`` (..., n), ``floor`` (..., K)."""
    z = np.log(np.maximum(y[..., None, :] - floor[..., :, None], 1e-300))
    xc = logx - logx.mean()
    slope = (z * xc).sum(-1) / (xc**2).sum()
    log_a = z.mean(-1) - slope * logx.mean()
    pred = np.log(floor[..., None] + np.exp(log_a[..., None] + slope[..., None] * logx))
    sse = ((np.log(y)[..., None, :] - pred) ** 2).sum(-1)
    return log_a, -slope, sse


def fit_many(logx: np.ndarray, y: np.ndarray, saturating: bool) -> np.ndarray:
    """Fit every row of ``y`` (B, n) against ``logx`` (n,): parameters (B, 3) as E, A, alpha.

    The floor is profiled over fractions of the row's lowest error (0 included, so a plain
    power law is a special case): a coarse grid, then a fine one around its best point;
    ``A`` and ``alpha`` are closed form given the floor.
    """
    y = np.atleast_2d(y)
    top = y.min(-1, keepdims=True)
    if not saturating:
        floor = np.zeros_like(top)
    else:
        frac = np.broadcast_to(_COARSE, (y.shape[0], _COARSE.size))
        best = _fit_given_floor(logx, y, frac * top)[2].argmin(-1)
        step = _COARSE[1] - _COARSE[0]
        centre = _COARSE[best][:, None]
        frac = np.clip(centre + np.linspace(-step, step, _FINE)[None, :], 0.0, _COARSE[-1])
        floor = frac * top
    log_a, alpha, sse = _fit_given_floor(logx, y, floor)
    best = sse.argmin(-1)
    rows = np.arange(y.shape[0])
    return np.stack([floor[rows, best], np.exp(log_a[rows, best]), alpha[rows, best]], -1)


def fit_one(logx: np.ndarray, y: np.ndarray, saturating: bool) -> np.ndarray:
    """:func:`fit_many` for one curve, the floor then refined on a third, finer grid."""
    params = fit_many(logx, y, saturating)[0]
    if not saturating:
        return params
    top = y.min()
    step = (_COARSE[1] - _COARSE[0]) / (_FINE - 1)
    frac = np.clip(params[0] / top + np.linspace(-step, step, 65), 0.0, _COARSE[-1])
    log_a, alpha, sse = _fit_given_floor(logx, y[None, :], frac[None, :] * top)
    best = int(sse[0].argmin())
    return np.array([frac[best] * top, math.exp(log_a[0, best]), alpha[0, best]])


def predict_error(params: np.ndarray, cost: np.ndarray | float, c0: float) -> np.ndarray:
    """``E + A (C / C0) ** -alpha``: parameters (B, 3) or (3,), costs (m,): errors (B, m)."""
    params = np.atleast_2d(np.asarray(params, dtype=float))
    floor, amp, alpha = params[:, 0:1], params[:, 1:2], params[:, 2:3]
    cost = np.atleast_1d(np.asarray(cost, dtype=float))
    with np.errstate(over="ignore"):  # a wild bootstrap replicate may overflow to inf
        return floor + amp * (cost / c0) ** -alpha


def cost_for_error(params: np.ndarray, error: float, c0: float) -> np.ndarray:
    """The cost at which each parameter row reaches ``error`` (inf where it never does)."""
    params = np.atleast_2d(params)
    floor, amp, alpha = params[:, 0], params[:, 1], params[:, 2]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        cost = c0 * ((error - floor) / amp) ** (-1.0 / alpha)
    reachable = (error > floor) & (alpha > 0) & np.isfinite(cost)
    return np.where(reachable, cost, np.inf)


# --------------------------------------------------------------------------- curves


@dataclass(frozen=True)
class Points:
    """The configurations a curve is fitted on (a router's front on one cost axis)."""

    cost: np.ndarray
    quality: np.ndarray  # means over seeds
    sem: np.ndarray  # standard error of each mean (0 with one seed)
    labels: list[str]
    rows: list[int]  # row numbers in the aggregated frame (for hover texts)


@dataclass(frozen=True)
class Curve:
    group: str  # router
    cost: str
    quality: Quality
    points: Points
    kind: str | None  # SATURATING, POWER, or None when refused
    note: str | None = None  # why refused, or a caveat
    c0: float = float("nan")
    params: np.ndarray | None = None  # E, A, alpha
    samples: np.ndarray | None = None  # (N_BOOT, 3)

    @property
    def fitted(self) -> bool:
        return self.kind is not None

    @property
    def cost_range(self) -> tuple[float, float]:
        return float(self.points.cost.min()), float(self.points.cost.max())

    def intervals(self) -> dict[str, tuple[float, float]]:
        lo, hi = _interval(self.samples)
        return {k: (float(lo[i]), float(hi[i])) for i, k in enumerate(("E", "A", "alpha"))}

    def error_at(self, cost: np.ndarray | float) -> np.ndarray:
        return predict_error(self.params, cost, self.c0)[0]

    def quality_at(self, cost: np.ndarray | float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Predicted quality at ``cost``: point, interval low and high (by value)."""
        point = self.quality.value(self.error_at(cost))
        lo, hi = _interval(self.quality.value(predict_error(self.samples, cost, self.c0)))
        return point, np.minimum(lo, hi), np.maximum(lo, hi)

    def cost_for(self, quality: float) -> tuple[float, float, float]:
        """The cost at which the curve reaches ``quality``: point, interval (inf: never)."""
        error = float(self.quality.error(quality))
        point = float(cost_for_error(self.params, error, self.c0)[0])
        lo, hi = _interval(cost_for_error(self.samples, error, self.c0))
        return point, float(lo), float(hi)

    def error_range(self) -> tuple[float, float]:
        """Fitted errors at the highest and lowest fitted cost (best, worst)."""
        lo, hi = self.cost_range
        return float(self.error_at(hi)[0]), float(self.error_at(lo)[0])


def _front(cost: np.ndarray, error: np.ndarray) -> np.ndarray:
    """Indices of the non-dominated points (lower cost, lower error), sorted by cost."""
    order = np.lexsort((error, cost))
    keep, best = [], np.inf
    for i in order:
        if error[i] < best:
            keep.append(i)
            best = error[i]
    return np.array(keep, dtype=int)


def _column(agg: pl.DataFrame, name: str) -> np.ndarray:
    if name not in agg.columns:
        return np.full(agg.height, np.nan)
    return agg[name].cast(pl.Float64).fill_nan(None).fill_null(float("nan")).to_numpy()


def router_points(agg: pl.DataFrame, cost: str, quality: Quality,
                  names: Sequence[str] | None = None) -> Points:
    """The front of ``agg``'s configurations on (cost, quality), means over seeds."""
    c = _column(agg, f"{cost}_mean")
    q = _column(agg, f"{quality.name}_mean")
    std = np.nan_to_num(_column(agg, f"{quality.name}_std"))
    n = np.maximum(np.nan_to_num(_column(agg, f"{quality.name}_n"), nan=1.0), 1.0)
    ok = np.isfinite(c) & np.isfinite(q) & (c > 0) & (quality.error(q) > 0)
    idx = np.flatnonzero(ok)
    keep = idx[_front(c[idx], quality.error(q[idx]))] if idx.size else idx
    names = names if names is not None else [str(i) for i in range(agg.height)]
    return Points(c[keep], q[keep], std[keep] / np.sqrt(n[keep]), [names[i] for i in keep],
                  [int(i) for i in keep])


def fit_curve(points: Points, group: str, cost: str, quality: Quality, *,
              n_boot: int = N_BOOT, seed: int = 0) -> Curve:
    """A curve through ``points`` with bootstrap intervals, or a refusal with its reason."""
    distinct = np.unique(points.cost).size
    if distinct < MIN_POINTS:
        return Curve(group, cost, quality, points, None, note=(
            f"{distinct} distinct {label(cost)} on the front; a fit needs at least "
            f"{MIN_POINTS}"))
    saturating = distinct >= MIN_SATURATING
    c0 = float(np.exp(np.log(points.cost).mean()))
    logx = np.log(points.cost / c0)
    y = np.asarray(quality.error(points.quality), dtype=float)
    params = fit_one(logx, y, saturating)
    fitted = predict_error(params, points.cost, c0)[0]
    dof = max(points.cost.size - (3 if saturating else 2), 1)
    resid = (y - fitted) * math.sqrt(points.cost.size / dof)
    rng = np.random.default_rng(seed)
    flips = rng.choice((-1.0, 1.0), size=(n_boot, y.size))
    draws = fitted + resid * flips + points.sem * rng.standard_normal((n_boot, y.size))
    draws = np.maximum(draws, 1e-6 * y.min())
    samples = fit_many(logx, draws, saturating)
    note = None
    if params[2] <= 0:
        note = f"{quality.label} does not improve with {label(cost)} on this front"
    return Curve(group, cost, quality, points, SATURATING if saturating else POWER, note=note,
                 c0=c0, params=params, samples=samples)


# --------------------------------------------------------------------------- comparisons


@dataclass(frozen=True)
class Multiplier:
    """``better`` reaches ``other``'s quality at ``ratio``x less cost (at three levels)."""

    better: str
    other: str
    cost: str
    quality: Quality
    levels: list[float]  # quality levels: the common range's worst, middle, best
    ratios: list[float]  # cost(other) / cost(better) at each level
    intervals: list[tuple[float, float]]
    extrapolated: bool
    trend: str  # how the ratio moves from the worst to the best level
    note: str = ""

    @property
    def middle(self) -> tuple[float, float, float]:
        i = len(self.levels) // 2
        return self.ratios[i], *self.intervals[i]


def _ratio_samples(a: Curve, b: Curve, error: float) -> tuple[float, np.ndarray]:
    point = cost_for_error(b.params, error, b.c0)[0] / cost_for_error(a.params, error, a.c0)[0]
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        samples = cost_for_error(b.samples, error, b.c0) / cost_for_error(a.samples, error, a.c0)
    return float(point), np.nan_to_num(samples, nan=1.0)  # both never reach it: no saving


def multiplier(a: Curve, b: Curve) -> Multiplier | None:
    """How much less cost ``a`` needs than ``b`` for equal quality (None if either curve is
    refused or does not improve with cost). The result is oriented so that ``better`` is
    the router whose multiplier at the middle level is at least 1."""
    if not (a.fitted and b.fitted) or a.params[2] <= 0 or b.params[2] <= 0:
        return None
    (a_best, a_worst), (b_best, b_worst) = a.error_range(), b.error_range()
    lo, hi = max(a_best, b_best), min(a_worst, b_worst)  # errors both curves cover
    extrapolated = lo > hi
    if extrapolated:  # no common quality: read at the better curve's worst level
        lo = hi = b_best if a_worst < b_best else a_best
    levels = [hi, (hi * lo) ** 0.5 if lo > 0 else (hi + lo) / 2, lo]
    out = _multiplier(a, b, levels, extrapolated)
    return out if out.ratios[1] >= 1 else _multiplier(b, a, levels, extrapolated)


def _multiplier(a: Curve, b: Curve, levels: list[float], extrapolated: bool) -> Multiplier:
    ratios, samples = zip(*(_ratio_samples(a, b, e) for e in levels), strict=True)
    intervals = [tuple(float(v) for v in _interval(s)) for s in samples]
    trend = "one level only"
    if not extrapolated:
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            change = np.log(samples[-1] / samples[0])
        lo, hi = _interval(np.nan_to_num(change, nan=0.0))
        tol = math.log1p(TREND_TOL)
        trend = ("grows" if lo > tol else "shrinks" if hi < -tol
                 else f"steady (within {TREND_TOL:.0%} or the noise)")
    note = ("extrapolated: the curves share no quality, read at the nearer end" if extrapolated
            else "")
    return Multiplier(a.group, b.group, a.cost, a.quality,
                      [float(a.quality.value(e)) for e in levels], list(ratios), intervals,
                      extrapolated, trend, note)


@dataclass(frozen=True)
class Match:
    """``config`` of ``router`` reaches ``target``'s quality at ``ratio``x less cost."""

    router: str
    config: str
    quality: float
    cost_value: float
    target_router: str
    target: str
    target_quality: float
    target_cost: float
    spread: float  # the larger standard deviation over seeds of the two (0: one seed)

    @property
    def ratio(self) -> float:
        return self.target_cost / self.cost_value


def matches(agg: pl.DataFrame, cost: str, quality: Quality, names: Sequence[str],
            by: str = "router") -> list[Match]:
    """For every configuration of every router, the cheapest configuration of each other
    router with at least its quality (measured means, no fit), when that one is cheaper;
    sorted by the saving, largest first."""
    c = _column(agg, f"{cost}_mean")
    err = np.asarray(quality.error(_column(agg, f"{quality.name}_mean")), dtype=float)
    std = np.nan_to_num(_column(agg, f"{quality.name}_std"))
    groups = np.array(agg[by].cast(pl.String).fill_null("-").to_list(), dtype=object)
    ok = np.isfinite(c) & np.isfinite(err) & (c > 0)
    out = []
    for g in dict.fromkeys(groups[ok]):
        mine = np.flatnonzero(ok & (groups == g))
        mine = mine[np.argsort(err[mine], kind="stable")]  # best quality first
        cheapest = np.minimum.accumulate(c[mine])  # cheapest with at least this quality
        pick = np.empty_like(mine)  # ... and which configuration that is
        for k, i in enumerate(mine):
            pick[k] = i if k == 0 or c[i] < c[pick[k - 1]] else pick[k - 1]
        targets = np.flatnonzero(ok & (groups != g))
        # rivals of g with at least each target's quality: the prefix up to its error
        reach = np.searchsorted(err[mine], err[targets], side="right") - 1
        for t, r in zip(targets, reach, strict=True):
            if r < 0 or cheapest[r] >= c[t]:
                continue
            j = pick[r]
            out.append(Match(str(g), names[j], float(quality.value(err[j])), float(c[j]),
                             str(groups[t]), names[t], float(quality.value(err[t])),
                             float(c[t]), float(max(std[t], std[j]))))
    return sorted(out, key=lambda m: -m.ratio)


# --------------------------------------------------------------------------- the analysis


@dataclass(frozen=True)
class Analysis:
    quality: Quality
    curves: list[Curve]
    multipliers: list[Multiplier]
    matches: dict[str, list[Match]] = field(default_factory=dict)  # by cost axis
    cost_labels: dict[str, str] = field(default_factory=dict)

    def curve(self, group: str, cost: str) -> Curve | None:
        return next((c for c in self.curves if c.group == group and c.cost == cost), None)

    def between(self, a: str, b: str, cost: str) -> Multiplier | None:
        """The multiplier of routers ``a`` and ``b`` (either order) on ``cost``."""
        return next((m for m in self.multipliers
                     if {m.better, m.other} == {a, b} and m.cost == cost), None)


def analyse(agg: pl.DataFrame, quality: Quality, *, costs: Sequence[str] = FIT_COSTS,
            names: Sequence[str] | None = None, by: str = "router",
            cost_labels: dict[str, str] | None = None, n_boot: int = N_BOOT,
            with_matches: bool = True) -> Analysis:
    """Curves per ``by`` group on each cost axis present, every pair's multiplier, and (with
    ``with_matches``) the measured matches. ``names`` labels the rows (default: row numbers)."""
    names = list(names) if names is not None else [str(i) for i in range(agg.height)]
    present = [c for c in costs if f"{c}_mean" in agg.columns
               and np.isfinite(_column(agg, f"{c}_mean")).any()]
    curves, mults, found = [], [], {}
    groups = (sorted({g for g in agg[by].cast(pl.String).to_list() if g is not None})
              if by in agg.columns else [])
    for cost in present:
        axis = []
        for g in groups:
            mask = (agg[by].cast(pl.String) == g).to_numpy()
            sub = agg.filter(mask)
            sub_names = [n for n, m in zip(names, mask, strict=True) if m]
            pts = router_points(sub, cost, quality, sub_names)
            rows = np.flatnonzero(mask)
            pts = Points(pts.cost, pts.quality, pts.sem, pts.labels,
                         [int(rows[r]) for r in pts.rows])
            if pts.cost.size:
                axis.append(fit_curve(pts, g, cost, quality, n_boot=n_boot))
        curves += axis
        for a, b in itertools.combinations(axis, 2):
            m = multiplier(a, b)
            if m is not None:
                mults.append(m)
        if with_matches and by in agg.columns:
            found[cost] = matches(agg, cost, quality, names, by)
    labels = {c: label(c) for c in present} | dict(cost_labels or {})
    return Analysis(quality, curves, mults, found, labels)


def to_json(analysis: Analysis) -> dict[str, Any]:
    """The analysis as plain JSON types (``report --json``)."""
    def num(x: float) -> float | None:
        return float(x) if x is not None and math.isfinite(x) else None

    curves = []
    for c in analysis.curves:
        item: dict[str, Any] = {"router": c.group, "cost": c.cost, "quality": c.quality.name,
                                "kind": c.kind, "note": c.note, "points": int(c.points.cost.size),
                                "cost_range": [num(v) for v in c.cost_range]}
        if c.fitted:
            item |= {"c0": c.c0, "params": dict(zip(("E", "A", "alpha"),
                                                    map(num, c.params), strict=True)),
                     "intervals": {k: [num(v) for v in iv] for k, iv in c.intervals().items()},
                     "confidence": CONFIDENCE}
        curves.append(item)
    mults = [{"better": m.better, "other": m.other, "cost": m.cost,
              "quality": m.quality.name, "levels": m.levels,
              "ratios": [num(r) for r in m.ratios],
              "intervals": [[num(v) for v in iv] for iv in m.intervals],
              "extrapolated": m.extrapolated, "trend": m.trend, "confidence": CONFIDENCE}
             for m in analysis.multipliers]
    found = {cost: [{"router": m.router, "config": m.config, "quality": m.quality,
                     "cost": m.cost_value, "matches_router": m.target_router,
                     "matches": m.target, "matches_quality": m.target_quality,
                     "matches_cost": m.target_cost, "ratio": m.ratio}
                    for m in ms] for cost, ms in analysis.matches.items()}
    return {"quality": analysis.quality.name, "curves": curves, "multipliers": mults,
            "matches": found}
