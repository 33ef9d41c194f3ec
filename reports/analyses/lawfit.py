"""The numerical engine of the joint scaling law (:mod:`reports.analyses.laws`): the expert-count
transform, a batched Huber regression, multi-start robust least squares, and the bootstrap.

Optimiser variables are ``(a, b, c, d)`` for plain ``log E``, with ``(s, u)`` added for the
saturating transform: ``s = log(E_start - 1)`` and ``u = log(log E_max - s)``, so that
``E_start - 1 < E_max`` holds everywhere the optimiser goes. :func:`to_params` turns them into
``a, b, c, d [, E_start, E_max]``. Torch-free; scipy's ``least_squares`` does the fitting.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.optimize import least_squares

EMAX_FACTOR = 100.0  # a fitted E_max beyond this x the largest count: no saturation seen
HUBER_TUNING = 1.345  # 95% efficiency under Gaussian noise
HUBER_DEFAULT = 1e-3  # Hoffmann et al. 2022, Besiroglu et al. 2024


def saturated(e: np.ndarray | float, e_start, e_max) -> np.ndarray:
    """Clark et al.'s ``Ê``: ``1/Ê = 1/(E - 1 + (1/(E_start - 1) - 1/E_max)^-1) + 1/E_max``
    (``E_start - 1 < E_max``; ``Ê(1) = E_start - 1``, ``Ê -> E_max`` as ``E`` grows)."""
    k = 1.0 / (1.0 / (np.asarray(e_start) - 1.0) - 1.0 / np.asarray(e_max))
    return 1.0 / (1.0 / (np.asarray(e, dtype=float) - 1.0 + k) + 1.0 / np.asarray(e_max))


def log_experts(e: np.ndarray, sat: np.ndarray | None) -> np.ndarray:
    """``log Ê`` of expert counts ``e`` (last axis) for rows ``sat`` (..., 2) of
    ``(log(E_start - 1), log E_max)``; plain ``log E`` when ``sat`` is None."""
    e = np.asarray(e, dtype=float)
    if sat is None:
        return np.log(e)
    s, t = sat[..., 0:1], sat[..., 1:2]
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        k = 1.0 / (np.exp(-s) - np.exp(-t))
        return -np.log(1.0 / (e - 1.0 + k) + np.exp(-t))


def design(x: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Columns for ``(a, b, c, d)``: ``x``, ``z``, ``x z``, 1 (``z`` may carry batch axes)."""
    x = np.broadcast_to(x, z.shape)
    return np.stack([x, z, x * z, np.ones_like(z)], -1)


def huber(r: np.ndarray, delta: float) -> np.ndarray:
    """The Huber loss of residuals ``r``: ``r²/2`` within ``delta``, linear beyond."""
    a = np.abs(r)
    return np.where(a <= delta, 0.5 * r**2, delta * (a - 0.5 * delta))


def irls(X: np.ndarray, y: np.ndarray, delta: float, iters: int = 200,
         tol: float = 1e-12) -> tuple[np.ndarray, np.ndarray]:
    """Huber regression by iteratively reweighted least squares, batched: ``X`` (..., n, 4),
    ``y`` (..., n); the coefficients (..., 4) and the Huber objective (...). Convex: one
    start (least squares) suffices."""
    def solve(w):
        xtw = np.swapaxes(X, -1, -2) * w[..., None, :]
        return np.linalg.solve(xtw @ X + 1e-12 * np.eye(X.shape[-1]), xtw @ y[..., None])[..., 0]

    beta = solve(np.ones_like(y))
    for _ in range(iters):
        r = np.abs(y - (X @ beta[..., None])[..., 0])
        new = solve(np.where(r <= delta, 1.0, delta / np.maximum(r, 1e-300)))
        done = np.nanmax(np.abs(new - beta)) < tol
        beta = new
        if done:
            break
    return beta, huber(y - (X @ beta[..., None])[..., 0], delta).sum(-1)


def _sat(theta: np.ndarray) -> np.ndarray | None:
    if theta.shape[-1] == 4:
        return None
    return np.stack([theta[..., 4], theta[..., 4] + np.exp(theta[..., 5])], -1)


def residuals(theta: np.ndarray, x: np.ndarray, e: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``log L`` predicted minus measured, for optimiser variables ``theta`` (..., p):
    (..., n)."""
    z = log_experts(e, _sat(theta))
    t = theta[..., None, :]
    return t[..., 3] + t[..., 0] * x + t[..., 1] * z + t[..., 2] * x * z - y


def jacobian(theta: np.ndarray, x: np.ndarray, e: np.ndarray, y: np.ndarray) -> np.ndarray:
    """d :func:`residuals` / d ``theta``, in closed form: (..., n, p)."""
    sat = _sat(theta)
    z = log_experts(e, sat)
    x = np.broadcast_to(x, z.shape)
    cols = [x, z, x * z, np.ones_like(z)]
    if sat is not None:
        s, t = sat[..., 0:1], sat[..., 1:2]
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            k = 1.0 / (np.exp(-s) - np.exp(-t))
            m = 1.0 / (e - 1.0 + k)
            q = m + np.exp(-t)
            dq_dt = np.exp(-t) * (k**2 * m**2 - 1.0)
            dq_ds = -(m**2) * np.exp(-s) * k**2 + dq_dt  # t = s + exp(u) moves with s
            slope = theta[..., 1:2] + theta[..., 2:3] * x  # d residual / d z
            cols += [-slope * dq_ds / q, -slope * np.exp(theta[..., 5:6]) * dq_dt / q]
    return np.stack(cols, -1)


def lm(theta: np.ndarray, x, e, y: np.ndarray, delta: float, lo, hi,
       iters: int = 100) -> np.ndarray:
    """Batched Levenberg-Marquardt on the Huber loss (reweighted each step), within the
    box ``[lo, hi]``: ``theta`` (B, p) from ``y`` (B, n). The bootstrap's refits."""
    lo, hi = np.asarray(lo, dtype=float), np.asarray(hi, dtype=float)
    lam = np.full(theta.shape[0], 1e-3)

    def objective(t):
        with np.errstate(over="ignore", invalid="ignore"):
            return np.nan_to_num(huber(residuals(t, x, e, y), delta).sum(-1), nan=np.inf)

    obj = objective(theta)
    for _ in range(iters):
        r = residuals(theta, x, e, y)
        jac = np.nan_to_num(jacobian(theta, x, e, y))
        w = np.where(np.abs(r) <= delta, 1.0, delta / np.maximum(np.abs(r), 1e-300))
        jtw = np.swapaxes(jac, -1, -2) * w[:, None, :]
        a = jtw @ jac
        g = (jtw @ np.nan_to_num(r)[..., None])[..., 0]
        diag = np.diagonal(a, axis1=-2, axis2=-1)
        damped = a + (lam[:, None] * (diag + 1e-12))[..., None] * np.eye(theta.shape[1])
        step = np.linalg.solve(damped, -g[..., None])[..., 0]
        trial = np.clip(theta + step, lo, hi)
        new = objective(trial)
        better = new < obj
        theta = np.where(better[:, None], trial, theta)
        obj = np.where(better, new, obj)
        lam = np.where(better, lam / 3, lam * 4)
        if np.all(np.abs(step).max(-1) < 1e-10):
            break
    return theta


def to_params(theta: np.ndarray) -> np.ndarray:
    """Optimiser variables -> ``a, b, c, d [, E_start, E_max]``."""
    if theta.size == 4:
        return theta.copy()
    s, t = theta[4], theta[4] + math.exp(theta[5])
    return np.concatenate([theta[:4], [1.0 + math.exp(s), math.exp(t)]])


def bounds(saturating: bool, e_top: float):
    """Box bounds of the optimiser variables: ``E_start - 1`` (``Ê(1)``) from 0.05 to 5,
    ``E_max`` at least twice it and at most 10^4 x :data:`EMAX_FACTOR` x the largest count
    (a transform flat over the grid would leave ``b`` and ``c`` unbounded)."""
    if not saturating:
        return -np.inf, np.inf
    hi_u = math.log(math.log(EMAX_FACTOR * 1e4 * e_top) + 8.0)
    return ([-np.inf] * 4 + [math.log(0.05), math.log(math.log(2.0))],
            [np.inf] * 4 + [math.log(5.0), hi_u])


def sat_grid(e_top: float) -> np.ndarray:
    """A 7 x 11 grid of ``(log(E_start - 1), log E_max)``: ``E_start - 1`` from 0.05 to 5,
    ``E_max`` from 2 to :data:`EMAX_FACTOR` x the largest count."""
    return np.array([(s, t) for s in np.log(np.geomspace(0.05, 5.0, 7))
                     for t in np.log(np.geomspace(2.0, EMAX_FACTOR * e_top, 11))
                     if t >= s + math.log(2.0)])


def profile(x: np.ndarray, e: np.ndarray, y: np.ndarray, delta: float,
            grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For every row of ``y`` (B, n) and grid point (G, 2): the Huber ``(a, b, c, d)`` given
    that point, as optimiser variables (B, G, 6), and its objective (B, G)."""
    X = design(x, log_experts(e[None, :], grid))[None]  # (1, G, n, 4)
    Y = np.broadcast_to(np.atleast_2d(y)[:, None, :], (np.atleast_2d(y).shape[0], *X.shape[1:3]))
    beta, obj = irls(X, Y, delta, iters=25)  # starting points: no need to converge
    sat = np.broadcast_to(np.stack([grid[:, 0], np.log(grid[:, 1] - grid[:, 0])], -1),
                          (*beta.shape[:2], 2))
    return np.concatenate([beta, sat], -1), obj


def starts(x: np.ndarray, e: np.ndarray, y: np.ndarray, delta: float, saturating: bool,
           keep: int = 5) -> list[np.ndarray]:
    """Starting points. Plain log E: the Huber fit and a perturbed copy. Saturating: the best
    ``keep`` points of :func:`sat_grid`, each with its Huber ``(a, b, c, d)``
    (:func:`profile`)."""
    if not saturating:
        beta, _ = irls(design(x, np.log(e)), y, delta)
        return [beta, beta + np.array([0.1, -0.1, 0.01, 0.1])]
    theta, obj = profile(x, e, y, delta, sat_grid(float(e.max())))
    return [theta[0, i] for i in np.argsort(obj[0])[:keep]]


def solve(start_points: list[np.ndarray], x, e, y, delta: float, saturating: bool,
          tol: float = 1e-15, max_nfev: int = 2000):
    """``least_squares`` (Huber loss, ``f_scale = delta``) from each start: the best result
    (None if every start failed) and how many starts reached its objective."""
    lo, hi = bounds(saturating, float(e.max()))
    results = []
    for start in start_points:
        if saturating:
            start = np.clip(start, np.asarray(lo) + 1e-9, np.asarray(hi) - 1e-9)
        try:
            res = least_squares(residuals, start, jac=jacobian, args=(x, e, y), loss="huber",
                                f_scale=delta, bounds=(lo, hi), xtol=tol, ftol=tol, gtol=tol,
                                max_nfev=max_nfev)
        except ValueError:
            continue
        if np.isfinite(res.cost):
            results.append(res)
    if not results:
        return None, 0
    best = min(results, key=lambda r: r.cost)
    return best, sum(r.cost - best.cost <= 1e-6 * max(best.cost, delta**2) for r in results)


def bootstrap(theta: np.ndarray, x, e, y, noise: np.ndarray, delta: float, saturating: bool,
              n_boot: int, seed: int) -> np.ndarray:
    """Replicates of ``to_params``: each point's ``log L`` redrawn from its seeds (normal,
    ``noise`` = ``sem / L``) plus its residual with a random sign (inflated by
    ``sqrt(n / (n - p))``), then refitted (saturating: from the better of the point
    estimate and the replicate's best grid point, by :func:`lm`, all replicates at once)."""
    fitted = y + residuals(theta, x, e, y)
    n, p = y.size, theta.size
    resid = (y - fitted) * math.sqrt(n / max(n - p, 1))
    rng = np.random.default_rng(seed)
    flips = rng.choice((-1.0, 1.0), size=(n_boot, n))
    draws = fitted + resid * flips + noise * rng.standard_normal((n_boot, n))
    if not saturating:
        beta, _ = irls(np.broadcast_to(design(x, np.log(e)), (n_boot, n, 4)), draws, delta)
        return beta
    grid_theta, obj = profile(x, e, draws, delta, sat_grid(float(e.max())))
    best = grid_theta[np.arange(n_boot), np.argmin(obj, -1)]
    from_point = huber(residuals(theta, x, e, draws), delta).sum(-1)
    start = np.where((obj.min(-1) < from_point)[:, None], best, theta)
    lo, hi = bounds(True, float(e.max()))
    return np.array([to_params(t) for t in lm(start, x, e, draws, delta, lo, hi)])


__all__ = ["bootstrap", "bounds", "design", "huber", "irls", "jacobian", "lm", "log_experts",
           "profile", "residuals", "sat_grid", "saturated", "solve", "starts", "to_params"]
