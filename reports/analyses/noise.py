"""Is a measured difference bigger than the seed noise? Intervals for the claims check.

A claim compares a difference of two configurations' means (over seeds) with a threshold.
:func:`difference` gives it a t interval; :meth:`Margin.outcome` says whether it clears the
threshold (``"pass"``), misses it (``"fail"``) or straddles it (``"unsure"``), and
:meth:`Margin.seeds_to_settle` how many seeds per configuration would make the interval clear
the threshold if the difference and the spread stayed as measured.

The spread: each side's per-seed variance is the larger of its own (when it has 2 or more
seeds) and the study's pooled seed variance for that metric (:func:`pooled`, over every
configuration with 2 or more seeds; degrees of freedom: the sum of ``seeds - 1``). Why not a
bootstrap over each pair's seeds: with the 2 to 3 seeds a study usually has, resampling them
sees at most a handful of distinct means and understates the spread; pooling over the
study's configurations measures it with many degrees of freedom, and taking the larger of
the two keeps an unstable configuration's own spread. With no configuration of 2 or more
seeds nothing is known about the noise: the interval is left out and the means decide.
"""

import math
from dataclasses import dataclass
from functools import cache

import numpy as np
from scipy.special import stdtrit  # Student t quantiles (lighter to import than scipy.stats)

CONFIDENCE = 0.95
MAX_SEEDS = 1000  # beyond this, "more than 1000" seeds


@cache
def _t(dof: int) -> float:
    return float(stdtrit(max(dof, 1), 0.5 + CONFIDENCE / 2))


@cache
def _t_by_seeds() -> np.ndarray:
    """t quantiles for 2 .. MAX_SEEDS seeds on each of two sides (2n - 2 dof)."""
    return stdtrit(2 * np.arange(2, MAX_SEEDS + 1) - 2, 0.5 + CONFIDENCE / 2)


@dataclass(frozen=True)
class Margin:
    """A difference of means, its interval (None: unknown), and the spread behind it."""

    value: float
    lo: float | None = None
    hi: float | None = None
    var: float = 0.0  # sum of the two per-seed variances (for the seeds estimate)

    @property
    def known(self) -> bool:
        return self.lo is not None

    def outcome(self, threshold: float = 0.0) -> str:
        """``"pass"`` (above the threshold), ``"fail"`` or ``"unsure"`` (interval straddles
        it). Without an interval, the mean alone decides, as before."""
        if not self.known:
            return "pass" if self.value > threshold else "fail"
        if self.lo > threshold:
            return "pass"
        if self.hi <= threshold:
            return "fail"
        return "unsure"

    def seeds_to_settle(self, threshold: float = 0.0) -> int | None:
        """Seeds per configuration that would put the interval clear of ``threshold`` if
        the mean difference and the spread stayed as measured (None: no spread known, or
        the difference equals the threshold; MAX_SEEDS + 1 means "more than MAX_SEEDS")."""
        gap = abs(self.value - threshold)
        if not self.known or self.var <= 0 or gap == 0:
            return None
        seeds = np.arange(2, MAX_SEEDS + 1)
        clear = np.flatnonzero(_t_by_seeds() * np.sqrt(self.var / seeds) < gap)
        return int(seeds[clear[0]]) if clear.size else MAX_SEEDS + 1

    def text(self, threshold: float = 0.0, digits: int = 4, percent: bool = False) -> str:
        """``+0.012 [-0.003, +0.027]`` (or ``40% [31%, 49%]``) and, when unsure, the seeds
        that would settle it."""
        def num(v: float) -> str:
            return f"{v:.0%}" if percent else f"{v:+.{digits}g}"

        out = num(self.value)
        if not self.known:
            return out + " (one seed: spread unknown)"
        out += f" [{num(self.lo)}, {num(self.hi)}]"
        if self.outcome(threshold) == "unsure":
            n = self.seeds_to_settle(threshold)
            if n is not None:
                out += (f", ~{n} seeds each would settle it" if n <= MAX_SEEDS else
                        f", more than {MAX_SEEDS} seeds each would be needed")
        return out

    def ratio_text(self, threshold: float = 0.0) -> str:
        """A fall ``1 - last / first`` as the ratio it stands for, so that no negative fall
        or fall over 100% appears: ``×0.60 [×0.52, ×0.69]`` and the :meth:`text` note."""
        def ratio(v: float) -> str:
            return f"×{1 - v:.2g}"

        if not self.known:
            return ratio(self.value) + " (one seed: spread unknown)"
        note = self.text(threshold).partition("]")[2]
        return f"{ratio(self.value)} [{ratio(self.hi)}, {ratio(self.lo)}]{note}"


@dataclass(frozen=True)
class Spread:
    """A study's pooled per-seed variance of one metric, and its degrees of freedom."""

    var: float
    dof: int


def pooled(stds: list[float | None], counts: list[int | None]) -> Spread | None:
    """Pool the per-configuration seed variances (configurations with 2 or more seeds)."""
    pairs = [(float(s), int(n)) for s, n in zip(stds, counts, strict=True)
             if s is not None and s == s and n is not None and n >= 2]
    dof = sum(n - 1 for _, n in pairs)
    if dof == 0:
        return None
    return Spread(sum((n - 1) * s**2 for s, n in pairs) / dof, dof)


def _variance(std: float | None, n: int | None, spread: Spread | None) -> float | None:
    own = float(std) ** 2 if std is not None and std == std and (n or 1) >= 2 else None
    if spread is None:
        return own
    return spread.var if own is None else max(own, spread.var)


def difference(mean_a: float, std_a: float | None, n_a: int | None,
               mean_b: float, std_b: float | None, n_b: int | None,
               spread: Spread | None = None) -> Margin:
    """``mean_a - mean_b`` with a t interval at :data:`CONFIDENCE` (see the module note)."""
    value = float(mean_a) - float(mean_b)
    va, vb = _variance(std_a, n_a, spread), _variance(std_b, n_b, spread)
    if va is None and vb is None:
        return Margin(value)
    va = vb if va is None else va  # one side measured, no pool: its spread stands for both
    vb = va if vb is None else vb
    na, nb = max(int(n_a or 1), 1), max(int(n_b or 1), 1)
    se = math.sqrt(va / na + vb / nb)
    dof = spread.dof if spread is not None else max(na + nb - 2, 1)  # an int: _t caches
    half = _t(dof) * se
    return Margin(value, value - half, value + half, va + vb)


def relative_change(first: float, std_first: float | None, n_first: int | None,
                    last: float, std_last: float | None, n_last: int | None,
                    spread: Spread | None = None) -> Margin:
    """``1 - last / first`` (e.g. a throughput fall), with the interval of the difference of
    the logs (``spread``: pooled variance of the relative spread, std / mean)."""
    rel = [None if s is None or s != s else s / m
           for s, m in ((std_first, first), (std_last, last))]
    logs = difference(math.log(last), rel[1], n_last, math.log(first), rel[0], n_first, spread)
    value = 1.0 - last / first
    if not logs.known:
        return Margin(value)
    return Margin(value, 1 - math.exp(logs.hi), 1 - math.exp(logs.lo),
                  logs.var * (last / first) ** 2)  # back to the scale of the value
