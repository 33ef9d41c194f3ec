"""A joint scaling law over model size and expert count, per router (Clark et al. 2022,
"Unified Scaling Laws for Routed Language Models", arXiv 2202.01169)::

    log L = a log(N / N0) + b log Ê + c log(N / N0) log Ê + d

* ``L``: the loss-like quality, falling with scale: the test error ``1 - accuracy`` (the
  page's primary quality, :func:`reports.analyses.scaling.quality_of`), or a loss as is.
* ``N``: the parameters of the **dense** model of the configuration's size (its backbone with
  plain MLPs, closed form: :func:`reports.analyses.specs.backbone_params`), not the MoE's own count,
  which grows with the experts. ``N0``: the geometric mean of the fitted sizes (so ``b`` is
  the expert slope and ``d`` the log loss of one expert at a middle size).
* ``Ê``: Clark et al.'s saturating transform of the expert count ``E``::

      1/Ê = 1 / (E - 1 + (1/(E_start - 1) - 1/E_max)^-1) + 1/E_max

  (fitted ``E_start``, ``E_max``), used when the grid has at least :data:`MIN_SATURATING`
  expert counts and :data:`MIN_SATURATING_POINTS` points, and the fitted ``E_max`` stays
  within :data:`reports.analyses.lawfit.EMAX_FACTOR` times the largest count; otherwise plain
  ``Ê = E``. Which one was used, and why, is the law's ``note``.

Dense runs join every router's fit as ``E = 1`` (the law's dense end). Per (size, expert
count) the best configuration over the other axes (slots, learning rate, ...) is the point,
its mean over seeds the value. A grid of fewer than 2 sizes x 3 expert counts is refused.

**Fit**: in log space with a Huber loss (``delta`` = 1.345 x the points' typical seed noise
in log space; 1e-3, as Hoffmann et al. and Besiroglu et al. use, when no noise is measured),
``scipy.optimize.least_squares`` from a grid of starting points, the best kept; the law
reports whether the optimiser converged and whether the starts agreed. **Intervals**: the
bootstrap of :mod:`reports.analyses.scaling` (every point redrawn from its seeds and its residual
sign-flipped), refitted; central :data:`reports.analyses.scaling.CONFIDENCE` ranges.

**Effective parameter multiplier** of ``E`` experts at size ``N``: ``N' / N``, where ``N'``
is the dense size the law predicts the same ``L`` for (``L(N', 1) = L(N, E)``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from reports.aggregate import aggregate, ok_runs
from reports.analyses import lawfit
from reports.analyses.scaling import CONFIDENCE, N_BOOT, Quality, quality_of
from reports.analyses.specs import backbone_params_each
from reports.metrics import QUALITY_AXES
from reports.records import records_frame

MIN_SIZES, MIN_EXPERTS = 2, 3
MIN_SATURATING = 5  # distinct expert counts (dense included) before E_start, E_max are fitted
MIN_SATURATING_POINTS = 10  # 6 parameters, 4 residual degrees of freedom
SATURATING, LOG = "saturating", "log E"
TOO_SMALL = "needs at least 2 sizes × 3 expert counts"
NAMES = ("a", "b", "c", "d")
SAT_NAMES = ("E_start", "E_max")
CHI2_2DOF_95 = 5.99  # two more parameters: the gain a saturating fit must show


# --------------------------------------------------------------------------- points


@dataclass(frozen=True)
class LawPoints:
    """One router's configurations: best per (size, expert count), means over seeds."""

    router: str
    n: np.ndarray  # dense backbone parameters
    e: np.ndarray  # experts (1: dense)
    quality: np.ndarray  # mean quality
    error: np.ndarray  # loss-like, > 0
    sem: np.ndarray  # standard error of the mean (0: one seed, no pooled spread)
    seeds: np.ndarray
    cost: np.ndarray  # training exaFLOPs (else total parameters): "costliest"
    labels: list[str]
    dropped: int = 0  # configurations not the best of their (size, expert count)

    def subset(self, keep: np.ndarray) -> LawPoints:
        def pick(a):
            return a[keep]
        return LawPoints(self.router, pick(self.n), pick(self.e), pick(self.quality),
                         pick(self.error), pick(self.sem), pick(self.seeds), pick(self.cost),
                         [self.labels[i] for i in np.flatnonzero(keep)], self.dropped)

    @property
    def grid(self) -> tuple[int, int]:
        return int(np.unique(self.n).size), int(np.unique(self.e).size)


def runs_frame(runs: pl.DataFrame | Sequence[dict[str, Any]]) -> pl.DataFrame:
    """The ok runs of ``runs`` (a frame of records or the records), each with its dense
    backbone's parameters (``params_backbone``, averaged over seeds like a metric)."""
    frame = runs if isinstance(runs, pl.DataFrame) else records_frame(list(runs))
    ok = ok_runs(frame)
    if ok.height == 0:
        return ok
    n = backbone_params_each(ok.iter_rows(named=True))
    return ok.with_columns(pl.Series("params_backbone", n, dtype=pl.Float64))


def primary(frame: pl.DataFrame) -> str | None:
    """The first quality of :data:`reports.metrics.QUALITY_AXES` the runs measured."""
    for name in QUALITY_AXES:
        if name in frame.columns and frame[name].drop_nulls().len():
            return name
    return None


def _col(agg: pl.DataFrame, name: str, fill: float = math.nan) -> np.ndarray:
    if name not in agg.columns:
        return np.full(agg.height, fill)
    return agg[name].cast(pl.Float64).fill_nan(None).fill_null(fill).to_numpy()


def law_points(frame: pl.DataFrame, router: str, quality: Quality,
               with_dense: bool = True) -> LawPoints:
    """``router``'s points (and dense's as ``E = 1``) from :func:`runs_frame` output."""
    routers = [router, "dense"] if with_dense and router != "dense" else [router]
    sub = frame.filter(pl.col("router").is_in(routers)) if "router" in frame.columns else frame
    agg = aggregate(sub)
    if agg.height == 0:
        return _empty(router)
    n = _col(agg, "params_backbone_mean")
    e = _col(agg, "num_experts", 1.0)
    q = _col(agg, f"{quality.name}_mean")
    std = _col(agg, f"{quality.name}_std")
    seeds = _col(agg, f"{quality.name}_n", 1.0)
    cost = _col(agg, "train_exaflops_mean")
    if not np.isfinite(cost).any():
        cost = _col(agg, "params_total_mean")
    err = np.asarray(quality.error(q), dtype=float)
    ok = np.isfinite(n) & np.isfinite(err) & (err > 0) & (n > 0)
    pairs = [(s, k) for s, k in zip(std[ok], seeds[ok], strict=True) if k >= 2 and s == s]
    dof = sum(k - 1 for _, k in pairs)
    pooled = math.sqrt(sum((k - 1) * s**2 for s, k in pairs) / dof) if dof else 0.0
    own = np.where((seeds >= 2) & np.isfinite(std), std, pooled)
    sem = own / np.sqrt(np.maximum(seeds, 1))
    labels = (agg["spec"].cast(pl.String).to_list() if "spec" in agg.columns
              else [f"N={a:.3g} E={b:g}" for a, b in zip(n, e, strict=True)])
    best: dict[tuple[float, float], int] = {}
    for i in np.flatnonzero(ok):
        key = (n[i], e[i])
        if key not in best or err[i] < err[best[key]]:
            best[key] = i
    keep = np.array(sorted(best.values(), key=lambda i: (n[i], e[i])), dtype=int)
    if keep.size == 0:
        return _empty(router)
    return LawPoints(router, n[keep], e[keep], q[keep], err[keep], sem[keep], seeds[keep],
                     cost[keep], [labels[i] for i in keep], int(ok.sum()) - keep.size)


def _empty(router: str) -> LawPoints:
    z = np.zeros(0)
    return LawPoints(router, z, z, z, z, z, z, z, [])


# --------------------------------------------------------------------------- the law


@dataclass(frozen=True)
class JointLaw:
    router: str
    quality: Quality
    points: LawPoints
    transform: str | None  # SATURATING, LOG, or None when refused
    note: str  # why refused, or why this transform
    n0: float = math.nan
    params: np.ndarray | None = None  # a, b, c, d [, E_start, E_max]
    samples: np.ndarray | None = None  # bootstrap replicates, same columns
    delta: float = math.nan  # Huber delta, in log space
    converged: bool = False
    convergence: str = ""

    @property
    def fitted(self) -> bool:
        return self.transform is not None

    @property
    def names(self) -> tuple[str, ...]:
        return NAMES + (SAT_NAMES if self.transform == SATURATING else ())

    def intervals(self) -> dict[str, tuple[float, float]]:
        lo, hi = interval(self.samples)
        return {k: (float(lo[i]), float(hi[i])) for i, k in enumerate(self.names)}

    def log_experts(self, e, params: np.ndarray | None = None) -> np.ndarray:
        """``log Ê`` of expert counts ``e`` for each parameter row: (rows, m)."""
        p = np.atleast_2d(self.params if params is None else params)
        e = np.atleast_1d(np.asarray(e, dtype=float))[None, :]
        if self.transform != SATURATING:
            return np.broadcast_to(np.log(e), (p.shape[0], e.shape[1]))
        return np.log(lawfit.saturated(e, p[:, 4:5], p[:, 5:6]))

    def log_error(self, n, e, params: np.ndarray | None = None) -> np.ndarray:
        """Predicted ``log L`` at sizes ``n`` and expert counts ``e`` (broadcast) for each
        parameter row: (rows, m)."""
        p = np.atleast_2d(self.params if params is None else params)
        x = np.log(np.atleast_1d(np.asarray(n, dtype=float)) / self.n0)
        z = self.log_experts(e, p)
        return p[:, 3:4] + p[:, 0:1] * x + p[:, 1:2] * z + p[:, 2:3] * x * z

    def quality_at(self, n, e) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Predicted quality at ``(n, e)``: point, interval low and high (by value)."""
        point = self.quality.value(np.exp(self.log_error(n, e)[0]))
        with np.errstate(over="ignore"):
            lo, hi = interval(self.quality.value(np.exp(self.log_error(n, e, self.samples))))
        return point, np.minimum(lo, hi), np.maximum(lo, hi)

    def effective_params(self, n, e, params: np.ndarray | None = None) -> np.ndarray:
        """``N'``: the dense size of equal predicted ``L``, ``L(N', 1) = L(N, E)``, for each
        parameter row (rows, m); NaN where the law does not improve with size at ``E = 1``."""
        p = np.atleast_2d(self.params if params is None else params)
        z1 = self.log_experts(1.0, p)  # log Ê(1): 0 for plain log E
        slope = p[:, 0:1] + p[:, 2:3] * z1  # d log L / d log N at E = 1
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            x = (self.log_error(n, e, p) - p[:, 3:4] - p[:, 1:2] * z1) / slope
            return np.where(slope < 0, self.n0 * np.exp(x), np.nan)

    def multiplier(self, n: float, e: float) -> tuple[float, float, float]:
        """``N' / N`` of ``e`` experts at size ``n``: point, interval."""
        point = float(self.effective_params(n, e)[0, 0]) / n
        lo, hi = interval(np.nan_to_num(self.effective_params(n, e, self.samples)[:, 0] / n,
                                        nan=np.inf))
        return point, float(lo), float(hi)


def interval(samples: np.ndarray, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The central :data:`CONFIDENCE` range of bootstrap ``samples`` along ``axis``."""
    tail = (1 - CONFIDENCE) / 2
    return (np.quantile(samples, tail, axis=axis, method="nearest"),
            np.quantile(samples, 1 - tail, axis=axis, method="nearest"))


# --------------------------------------------------------------------------- fitting


def noise_delta(points: LawPoints, y: np.ndarray | None = None) -> float:
    """The Huber ``delta`` in log space: 1.345 x the median seed noise (``sem / L``) of the
    points that have one (single-seed points have none), at least 1e-3; without a measured
    noise, 1.345 x the MAD of a least-squares fit's residuals, at least
    1e-3 (Hoffmann et al.'s value; an exact law has no residuals)."""
    rel = points.sem / points.error
    rel = rel[np.isfinite(rel) & (rel > 0)]  # the points with a measured seed noise
    if rel.size:
        return max(lawfit.HUBER_TUNING * float(np.median(rel)), lawfit.HUBER_DEFAULT)
    if y is not None and y.size > 4:
        X = lawfit.design(np.log(points.n / np.exp(np.log(points.n).mean())),
                          np.log(points.e))
        r = y - X @ np.linalg.lstsq(X, y, rcond=None)[0]
        mad = 1.4826 * float(np.median(np.abs(r - np.median(r))))
        return max(lawfit.HUBER_TUNING * mad, lawfit.HUBER_DEFAULT)
    return lawfit.HUBER_DEFAULT


def _choose(points: LawPoints, transform: str) -> tuple[bool, str]:
    n_e, n_pts = points.grid[1], points.n.size
    if transform == LOG:
        return False, "plain log E (asked for)"
    if transform == SATURATING:
        return True, "saturating Ê (asked for)"
    if n_e >= MIN_SATURATING and n_pts >= MIN_SATURATING_POINTS:
        return True, (f"saturating Ê: {n_e} expert counts and {n_pts} points fit E_start and "
                      "E_max")
    return False, (f"plain log E: {n_e} expert counts and {n_pts} points are too few to fit "
                   f"the saturation (E_start, E_max need {MIN_SATURATING} counts and "
                   f"{MIN_SATURATING_POINTS} points)")


def fit_law(points: LawPoints, quality: Quality, *, n0: float | None = None,
            transform: str = "auto", delta: float | None = None, n_boot: int = N_BOOT,
            seed: int = 0) -> JointLaw:
    """The joint law through ``points`` with bootstrap intervals, or a refusal with its
    reason. ``transform``: "auto", :data:`SATURATING` or :data:`LOG`; ``n0`` the size the
    parameters refer to (default: the geometric mean of the fitted sizes)."""
    sizes, counts = points.grid
    if sizes < MIN_SIZES or counts < MIN_EXPERTS or points.n.size < 6:
        return JointLaw(points.router, quality, points, None, (
            f"{TOO_SMALL} (has {sizes} size{'s' * (sizes != 1)} × {counts} expert "
            f"count{'s' * (counts != 1)}, {points.n.size} points)"))
    n0 = float(np.exp(np.log(points.n).mean())) if n0 is None else float(n0)
    x, e, y = np.log(points.n / n0), points.e.astype(float), np.log(points.error)
    delta = noise_delta(points, y) if delta is None else float(delta)
    saturating, why = _choose(points, transform)

    def attempt(sat: bool):
        first = lawfit.starts(x, e, y, delta, sat)
        return (*lawfit.solve(first, x, e, y, delta, sat), len(first))

    best, agree, n_starts = attempt(saturating)
    if saturating and transform == "auto":
        plain = attempt(False)
        rejected = _reject_saturation(best, plain[0], delta, float(e.max()))
        if rejected:
            saturating, why = False, "plain log E: " + rejected
            best, agree, n_starts = plain
    if best is None:
        return JointLaw(points.router, quality, points, None, "the optimiser found no fit")
    if not (points.e == 1).any():
        why += "; no dense runs: E = 1 (the multiplier's dense end) is extrapolated"
    convergence = (f"least_squares (Huber, delta {delta:.3g}): {best.message.rstrip('.')}; "
                   f"{agree} of {n_starts} starts reached the best objective")
    samples = lawfit.bootstrap(best.x, x, e, y, points.sem / points.error, delta, saturating,
                               n_boot, seed)
    return JointLaw(points.router, quality, points, SATURATING if saturating else LOG, why,
                    n0=n0, params=lawfit.to_params(best.x), samples=samples, delta=delta,
                    converged=bool(best.success), convergence=convergence)


def _reject_saturation(sat, plain, delta: float, e_top: float) -> str:
    """Why the saturating fit is not kept ("" when it is): it failed, put ``E_max`` beyond
    :data:`reports.analyses.lawfit.EMAX_FACTOR` x the largest count, or fits no better than plain
    log E (its gain in ``2 x Huber objective / sigma²``, ``sigma = delta / 1.345``, below
    the 95% point of chi-squared with 2 degrees of freedom, 5.99)."""
    if sat is None:
        return "the saturating fit failed"
    if lawfit.to_params(sat.x)[5] > lawfit.EMAX_FACTOR * e_top:
        return (f"the saturating fit put E_max beyond {lawfit.EMAX_FACTOR:g}x the largest "
                "expert count (no saturation within the grid)")
    gain = 2 * (plain.cost - sat.cost) / (delta / lawfit.HUBER_TUNING) ** 2 if plain else np.inf
    if gain < CHI2_2DOF_95:
        return (f"the saturating fit is no better than plain log E (gain {gain:.2g} < "
                f"{CHI2_2DOF_95}, chi-squared with 2 degrees of freedom at 95%)")
    return ""


# --------------------------------------------------------------------------- a study


def joint_laws(runs: pl.DataFrame | Sequence[dict[str, Any]], quality: str | None = None, *,
               with_dense: bool = True, n_boot: int = N_BOOT, seed: int = 0,
               **fit: Any) -> list[JointLaw]:
    """One :class:`JointLaw` per MoE router of ``runs`` (records, or a frame of them; ok runs
    only), on ``quality`` (default: the first measured of ``test_accuracy``,
    ``fewshot_accuracy``, ``test_loss``). ``fit`` goes to :func:`fit_law`."""
    frame = runs_frame(runs)
    quality = quality or primary(frame)
    if quality is None or "router" not in frame.columns:
        return []
    q = quality_of(quality)
    routers = sorted({r for r in frame["router"].drop_nulls().to_list() if r != "dense"})
    return [fit_law(law_points(frame, r, q, with_dense), q, n_boot=n_boot, seed=seed, **fit)
            for r in routers]


def multiplier_rows(law: JointLaw) -> list[dict[str, Any]]:
    """The effective parameter multiplier of every MoE point of the law: its size, experts,
    ``N' / N`` with its interval, and whether ``N'`` lies beyond the fitted sizes."""
    if not law.fitted:
        return []
    lo_n, hi_n = float(law.points.n.min()), float(law.points.n.max())
    dense = bool((law.points.e == 1).any())
    rows = []
    for n, e, label in zip(law.points.n, law.points.e, law.points.labels, strict=True):
        if e == 1:
            continue
        ratio, lo, hi = law.multiplier(float(n), float(e))
        n_eff = ratio * n
        rows.append({"router": law.router, "config": label, "params_backbone": float(n),
                     "num_experts": int(e), "effective_params": _num(n_eff),
                     "multiplier": _num(ratio), "interval": [_num(lo), _num(hi)],
                     "extrapolated": bool(not dense or not lo_n <= n_eff <= hi_n)})
    return rows


def law_surface(law: JointLaw, steps: int = 25) -> dict[str, Any]:
    """The law's predicted quality over its grid's range of sizes and expert counts (a
    ``steps`` x ``steps`` log-spaced mesh; ``quality[i][j]`` at ``num_experts[i]``,
    ``params_backbone[j]``) and the measured points, as plain data for a figure."""
    if not law.fitted:
        return {"router": law.router, "note": law.note}
    n = np.geomspace(law.points.n.min(), law.points.n.max(), steps)
    e = np.geomspace(max(law.points.e.min(), 1.0), law.points.e.max(), steps)
    z = np.stack([np.asarray(law.quality_at(n, np.full(steps, ei))[0]) for ei in e])
    return {"router": law.router, "quality_name": law.quality.name,
            "quality_label": law.quality.label, "params_backbone": n.tolist(),
            "num_experts": e.tolist(), "quality": z.tolist(),
            "measured": {"params_backbone": law.points.n.tolist(),
                         "num_experts": law.points.e.tolist(),
                         "quality": law.points.quality.tolist(), "labels": law.points.labels}}


def _num(v: float) -> float | None:
    return float(v) if v is not None and math.isfinite(v) else None


def law_json(law: JointLaw) -> dict[str, Any]:
    """One law as JSON types: parameters with intervals, transform and why, convergence,
    the points and the multipliers."""
    out: dict[str, Any] = {"router": law.router, "quality": law.quality.name,
                           "transform": law.transform, "note": law.note,
                           "points": int(law.points.n.size), "grid": list(law.points.grid),
                           "dropped": law.points.dropped}
    if law.fitted:
        iv = law.intervals()
        out |= {"n0": law.n0, "huber_delta": law.delta, "converged": law.converged,
                "convergence": law.convergence, "confidence": CONFIDENCE,
                "params": {k: _num(v) for k, v in zip(law.names, law.params, strict=True)},
                "intervals": {k: [_num(v) for v in iv[k]] for k in law.names},
                "multipliers": multiplier_rows(law)}
    return out


__all__ = ["JointLaw", "LawPoints", "fit_law", "interval", "joint_laws", "law_json",
           "law_points", "law_surface", "multiplier_rows", "noise_delta", "primary",
           "runs_frame"]
