"""The paper's main claims, checked against the records: **held**, **failed**, **inconclusive**
or **lacks data**.

Each rule is a small pure function of the aggregated frame (:func:`reports.aggregate.aggregate`
output, one row per configuration, means over seeds) that returns a :class:`Verdict` with the
numbers behind it. Rules compare configurations that differ only in what the claim is about:
"the same other settings" means equal values of every spec column (model, placement, learning
rate, steps, data, ...) except the ones the claim varies. Quality is the page's primary
quality (test accuracy when recorded; direction-aware, so a loss works too).

Thresholds (module constants, stated in each verdict):

* Pareto: Soft MoE must not be beaten by another router's configuration (dense, Tokens Choice,
  Experts Choice) that costs at most what a Soft MoE configuration costs, by more than
  ``FRONT_QUALITY_TOL`` in quality; costs within ``FRONT_COST_TOL`` count as equal. Cost:
  training exaFLOPs (either convention: they are proportional), else eval GFLOP/img.
* Soft MoE with more experts at fixed total slots: quality at the most experts above quality
  at the fewest, and training throughput at every expert count within ``THROUGHPUT_BAND`` of
  the throughput at the fewest experts.
* Sparse routers: training throughput at the most experts at least ``MIN_THROUGHPUT_FALL``
  below the fewest; dropped-token fraction at least ``MIN_DROP_RISE`` above.
* Ablations and placement: strictly better mean quality.
* Compute: Soft MoE reaches dense quality at ``MIN_COMPUTE_MULTIPLIER`` x less training
  compute, read from the fitted curves (:mod:`reports.analyses.scaling`) in the middle of the
  quality range both cover.

Every comparison of means carries a 95% interval (:mod:`reports.analyses.noise`: a t interval
from the seed spread, each side's own or the study's pooled, whichever is larger; for the
compute multiplier, the fits' bootstrap). A comparison whose interval straddles its threshold makes
the verdict **inconclusive** (unless another comparison fails outright), and says how many
seeds per configuration would settle it at the measured spread. Without any configuration of
2 or more seeds the spread is unknown and the means decide, as the evidence says. A band
(Soft MoE's throughput) holds when the whole interval is inside it.

"held" and "failed" describe these records only: a laptop-scale synthetic study says what the
harness measured there, not whether the paper is right at ImageNet scale.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import polars as pl

from reports.aggregate import N_BLOCKS, PLACEMENT, TOTAL_SLOTS, prepared
from reports.analyses.compare import (
    better_by,
    comparable,
    config_groups,
    counted,
    in_band,
    listing,
    margin_of,
    measured,
    pooled_spread,
    short_name,
    stats_of,
    usable_quality,
)
from reports.analyses.noise import Margin, Spread, difference, relative_change
from reports.analyses.scaling import analyse, quality_of
from reports.labels import SOFT_ROUTERS, SPARSE_ROUTERS, fmt, router_name
from reports.metrics import label

HELD, FAILED, LACKS, INCONCLUSIVE = "held", "failed", "lacks data", "inconclusive"

FRONT_QUALITY_TOL = 0.005  # quality units: half a point of accuracy
FRONT_COST_TOL = 0.05  # relative: costs within 5% are the same cost
THROUGHPUT_BAND = 0.30  # Soft MoE: within +-30% of its throughput at the fewest experts
MIN_THROUGHPUT_FALL = 0.05  # sparse routers: at least 5% slower at the most experts
MIN_DROP_RISE = 0.01  # sparse routers: at least 1 point more tokens dropped
MIN_COMPUTE_MULTIPLIER = 2.0  # Soft MoE: dense quality at >= 2x less training compute

PARETO_RIVALS = ("dense", *SPARSE_ROUTERS)
ABLATIONS = ("soft_uniform", "uniform_soft", "uniform", "identity")
THROUGHPUT = "train_images_per_s"
DROPPED = "router_dropped_fraction"


@dataclass(frozen=True)
class Verdict:
    key: str
    claim: str
    status: str  # HELD | FAILED | INCONCLUSIVE | LACKS
    evidence: str
    rule: str


# --------------------------------------------------------------------------- helpers


def _status(outcomes: Sequence[str]) -> str:
    """FAILED if any comparison fails, INCONCLUSIVE if any straddles its threshold."""
    if "fail" in outcomes:
        return FAILED
    return INCONCLUSIVE if "unsure" in outcomes else HELD


# --------------------------------------------------------------------------- rules


def soft_on_pareto_front(agg: pl.DataFrame, quality: str | None = None) -> Verdict:
    """Soft MoE is on the overall Pareto front at every cost it covers."""
    claim = ("Soft MoE is on the overall Pareto front (quality against training cost) at "
             "every cost it covers.")
    cost = next((c for c in ("train_exaflops", "train_exaflops_paper", "gflops_per_image")
                 if f"{c}_mean" in agg.columns), None)
    quality = usable_quality(agg, quality)
    rule = (f"No dense, Tokens Choice or Experts Choice configuration costing at most what a "
            f"Soft MoE configuration costs (costs within {FRONT_COST_TOL:.0%} are equal) may "
            f"beat Soft MoE's best quality at that cost by more than {FRONT_QUALITY_TOL:g}.")
    if quality is None or cost is None or "router" not in agg.columns:
        return Verdict("pareto", claim, LACKS, "No quality or cost recorded.", rule)
    data = measured(agg, quality, cost).filter(pl.col(f"{cost}_mean") > 0)
    soft = data.filter(pl.col("router") == "soft")
    rivals = data.filter(pl.col("router").is_in(list(PARETO_RIVALS)))
    if soft.height == 0 or rivals.height == 0:
        missing = "Soft MoE" if soft.height == 0 else "dense or sparse routers"
        return Verdict("pareto", claim, LACKS, f"No run of {missing} with {label(quality)} "
                       f"and {label(cost)}.", rule)
    by_cost = soft.sort(f"{cost}_mean").to_dicts()
    costs = [r[f"{cost}_mean"] for r in by_cost]
    best_upto = list(itertools.accumulate(  # Soft MoE's best row at costs <= costs[i]
        by_cost, lambda a, b: b if better_by(quality, b[f"{quality}_mean"],
                                         a[f"{quality}_mean"]) > 0 else a))
    lo, hi = costs[0], costs[-1]
    slack = 1 + FRONT_COST_TOL
    compared, beaten, unsure = 0, [], []
    spread = pooled_spread(data, quality)
    for row in rivals.iter_rows(named=True):
        c, q = row[f"{cost}_mean"], row[f"{quality}_mean"]
        if c > hi * slack:
            continue  # dearer than every Soft MoE configuration: outside its range
        compared += 1
        at = max(c, lo) * slack
        best = best_upto[bisect.bisect_right(costs, at) - 1]
        margin = margin_of(quality, row, best, spread)
        outcome = margin.outcome(FRONT_QUALITY_TOL)
        if outcome != "fail":  # the rival beats Soft MoE by more than the tolerance, or may
            text = (f"{short_name(row)}: {fmt(q)} at {fmt(c)} vs Soft MoE's best "
                    f"{fmt(best[f'{quality}_mean'])} at <= {fmt(max(c, lo))} "
                    f"({margin.text(FRONT_QUALITY_TOL)})")
            (beaten if outcome == "pass" else unsure).append((margin.value, text))
    span = (f"Soft MoE covers {label(cost)} {fmt(lo)} to {fmt(hi)} "
            f"({counted(soft.height, 'configuration')}); "
            f"{counted(compared, 'configuration')} of other routers cost at most that")
    if compared == 0:
        return Verdict("pareto", claim, LACKS, span + ": nothing to compare with.", rule)
    if beaten:
        beaten.sort(key=lambda t: -t[0])
        return Verdict("pareto", claim, FAILED, f"{span}; {len(beaten)} beat Soft MoE: "
                       + listing([b for _, b in beaten]) + ".", rule)
    if unsure:
        unsure.sort(key=lambda t: -t[0])
        return Verdict("pareto", claim, INCONCLUSIVE, f"{span}; {len(unsure)} may beat Soft "
                       f"MoE by more than {FRONT_QUALITY_TOL:g} (the interval straddles it): "
                       + listing([b for _, b in unsure]) + ".", rule)
    return Verdict("pareto", claim, HELD, f"{span}; none beats Soft MoE by more than "
                   f"{FRONT_QUALITY_TOL:g} in {label(quality)}.", rule)


def _expert_sweeps(data: pl.DataFrame, extra: Sequence[str] = ()) -> list[pl.DataFrame]:
    """Groups of configurations equal but for the expert count (and so, at fixed total
    slots, the slots per expert), with two or more expert counts, sorted by experts."""
    keys = [*comparable(data, ("num_experts", "slots_per_expert")), *extra]
    return [g.sort("num_experts") for g in config_groups(data, keys)
            if g["num_experts"].n_unique() >= 2]


def soft_scales_with_experts(agg: pl.DataFrame, quality: str | None = None,
                             band: float = THROUGHPUT_BAND) -> Verdict:
    """Soft MoE's quality rises with experts at fixed slots; throughput stays in a band."""
    claim = (f"At a fixed number of slots, Soft MoE's quality rises with the number of "
             f"experts while its training throughput stays within +-{band:.0%}.")
    rule = (f"In every group of Soft MoE configurations equal but for the expert count (total "
            f"slots fixed): quality at the most experts above quality at the fewest, and "
            f"{label(THROUGHPUT)} at every count within +-{band:.0%} of that at the fewest.")
    quality = usable_quality(agg, quality)
    if quality is None or not {"router", "num_experts"} <= set(agg.columns):
        return Verdict("soft_experts", claim, LACKS, "No quality or expert counts recorded.",
                       rule)
    data = prepared(agg)
    soft = measured(data, quality).filter(
        (pl.col("router") == "soft") & pl.col(TOTAL_SLOTS).is_not_null())
    sweeps = _expert_sweeps(soft, (TOTAL_SLOTS,))
    if not sweeps:
        return Verdict("soft_experts", claim, LACKS, "No Soft MoE configurations that differ "
                       "only in the number of experts (at fixed total slots).", rule)
    has_speed = f"{THROUGHPUT}_mean" in data.columns
    lines, failed, speed_missing, unsure = [], False, False, False
    spread = pooled_spread(soft, quality)
    speed_spread = pooled_spread(soft, THROUGHPUT, relative=True) if has_speed else None
    for g in sweeps:
        rows = g.to_dicts()
        first, last = rows[0], rows[-1]
        gain = margin_of(quality, last, first, spread)
        outcome = gain.outcome()
        experts = "->".join(fmt(r["num_experts"]) for r in rows)
        qs = "->".join(fmt(r[f"{quality}_mean"]) for r in rows)
        says = {"pass": "rises", "fail": "does not rise", "unsure": "rise not settled"}
        text = (f"{short_name(first, ('num_experts', 'slots_per_expert'))}, "
                f"{fmt(first[TOTAL_SLOTS])} slots: experts {experts}: {label(quality)} {qs} "
                f"({says[outcome]}, {gain.text()})")
        failed |= outcome == "fail"
        unsure |= outcome == "unsure"
        speeds = [r.get(f"{THROUGHPUT}_mean") for r in rows] if has_speed else [None]
        if any(s is None or s != s for s in speeds) or not speeds[0]:
            speed_missing = True
            text += f"; {label(THROUGHPUT)} not recorded"
        else:
            ratios = [s / speeds[0] for s in speeds]
            where = [in_band(relative_change(*stats_of(THROUGHPUT, first, r), speed_spread),
                              band) for r in rows[1:]]
            verdict = ("outside" if "outside" in where else
                       "not settled inside" if "unsure" in where else "inside")
            failed |= verdict == "outside"
            unsure |= verdict == "not settled inside"
            text += (f"; {label(THROUGHPUT)} {'->'.join(fmt(s) for s in speeds)} "
                     f"({min(ratios):.2f}-{max(ratios):.2f}x of the fewest, "
                     f"{verdict} +-{band:.0%})")
        lines.append(text)
    evidence = listing(lines) + "."
    if failed:
        return Verdict("soft_experts", claim, FAILED, evidence, rule)
    if unsure:
        return Verdict("soft_experts", claim, INCONCLUSIVE, evidence, rule)
    if speed_missing:
        return Verdict("soft_experts", claim, LACKS, evidence, rule)
    return Verdict("soft_experts", claim, HELD, evidence, rule)


def _sparse_trend(agg: pl.DataFrame, metric: str) -> list[tuple[str, dict, dict, list[str]]]:
    """(name, row at fewest, row at most experts, per-count text) per sparse sweep."""
    out = []
    if f"{metric}_mean" not in agg.columns or "router" not in agg.columns:
        return out
    data = measured(agg, metric).filter(pl.col("router").is_in(list(SPARSE_ROUTERS)))
    keys = [k for k in comparable(data, ("num_experts",)) if k in data.columns]
    for g in config_groups(data, keys):
        if g["num_experts"].n_unique() < 2:
            continue
        rows = g.sort("num_experts").to_dicts()
        steps = [f"{fmt(r['num_experts'])}: {fmt(r[f'{metric}_mean'])}" for r in rows]
        out.append((short_name(rows[0], ("num_experts",)), rows[0], rows[-1], steps))
    return out


def sparse_throughput_falls(agg: pl.DataFrame,
                            min_fall: float = MIN_THROUGHPUT_FALL) -> Verdict:
    """Tokens Choice's and Experts Choice's throughput falls as the experts grow."""
    claim = "The sparse routers' training throughput falls as the number of experts grows."
    rule = (f"In every group of Tokens Choice or Experts Choice configurations equal but for "
            f"the expert count: {label(THROUGHPUT)} at the most experts at least "
            f"{min_fall:.0%} below that at the fewest.")
    sweeps = _sparse_trend(agg, THROUGHPUT)
    if not sweeps:
        return Verdict("sparse_speed", claim, LACKS, "No sparse-router configurations that "
                       f"differ only in the number of experts, with {label(THROUGHPUT)}.", rule)
    lines, outcomes = [], []
    spread = pooled_spread(agg, THROUGHPUT, relative=True)
    for name, first, last, steps in sweeps:
        fall = (relative_change(*stats_of(THROUGHPUT, first, last), spread)
                if first[f"{THROUGHPUT}_mean"] and last[f"{THROUGHPUT}_mean"] else Margin(0.0))
        outcomes.append(fall.outcome(min_fall))
        lines.append(f"{name}: experts {', '.join(steps)}; img/s at the most over the "
                     f"fewest {fall.ratio_text(min_fall)}")
    return Verdict("sparse_speed", claim, _status(outcomes), listing(lines) + ".", rule)


def dropped_tokens_grow(agg: pl.DataFrame, min_rise: float = MIN_DROP_RISE) -> Verdict:
    """The dropped-token fraction of the sparse routers grows with the number of experts."""
    claim = "The sparse routers drop more tokens as the number of experts grows."
    rule = (f"In every group of Tokens Choice or Experts Choice configurations equal but for "
            f"the expert count: {label(DROPPED)} at the most experts at least {min_rise:g} "
            f"above that at the fewest.")
    sweeps = _sparse_trend(agg, DROPPED)
    if not sweeps:
        return Verdict("dropped", claim, LACKS, "No sparse-router configurations that differ "
                       f"only in the number of experts, with {label(DROPPED)}.", rule)
    lines, outcomes = [], []
    spread = pooled_spread(agg, DROPPED)
    for name, first, last, steps in sweeps:
        rise = difference(*stats_of(DROPPED, last, first), spread)
        outcomes.append(rise.outcome(min_rise))
        lines.append(f"{name}: experts {', '.join(steps)} (rises {rise.text(min_rise, 3)})")
    return Verdict("dropped", claim, _status(outcomes), listing(lines) + ".", rule)


def _pairwise(quality: str, best: dict[str, Any], other: dict[str, Any],
              spread: Spread | None) -> tuple[str, str]:
    """Whether ``best`` beats ``other`` ("pass", "fail", "unsure") and the margin's text."""
    margin = margin_of(quality, best, other, spread)
    return margin.outcome(), margin.text()


def learned_routing_beats_ablations(agg: pl.DataFrame, quality: str | None = None) -> Verdict:
    """Soft MoE (learned dispatch and combine) beats each fixed-routing ablation."""
    claim = ("Learned dispatch and combine (Soft MoE) beat the fixed-routing ablations "
             "(Soft/Uniform, Uniform/Soft, Uniform, Identity).")
    rule = ("Soft MoE's mean quality strictly above each ablation's, in every group of "
            "configurations equal but for the router.")
    quality = usable_quality(agg, quality)
    if quality is None or "router" not in agg.columns:
        return Verdict("ablations", claim, LACKS, "No quality recorded.", rule)
    data = measured(agg, quality).filter(
        pl.col("router").is_in(["soft", *ABLATIONS]))
    keys = [k for k in comparable(data, ("router",)) if k in data.columns]
    lines, outcomes = [], []
    spread = pooled_spread(data, quality)
    for g in config_groups(data, keys):
        rows = {r["router"]: r for r in g.to_dicts()}
        if "soft" not in rows or not set(rows) & set(ABLATIONS):
            continue
        soft = rows["soft"]
        parts = []
        for name in ABLATIONS:
            if name in rows:
                outcome, text = _pairwise(quality, soft, rows[name], spread)
                outcomes.append(outcome)
                parts.append(f"{router_name(name)} {fmt(rows[name][f'{quality}_mean'])} "
                             f"({text})")
        missing = [router_name(a) for a in ABLATIONS if a not in rows]
        lines.append(f"{short_name(soft, ('router',))}: Soft MoE {fmt(soft[f'{quality}_mean'])} vs "
                     + ", ".join(parts) + (f"; not run: {', '.join(missing)}" if missing else ""))
    if not outcomes:
        return Verdict("ablations", claim, LACKS, "No Soft MoE run next to an ablation with "
                       "the same other settings.", rule)
    return Verdict("ablations", claim, _status(outcomes), listing(lines) + ".", rule)


def last_blocks_beat_spread(agg: pl.DataFrame, quality: str | None = None) -> Verdict:
    """MoE layers in the last blocks beat the same number spread over the network."""
    claim = ("MoE layers in the last blocks beat the same number of MoE layers spread over "
             "the network (total experts fixed).")
    rule = ("For each number of MoE blocks (2 or more) with both kinds: the best Soft MoE "
            "placement of consecutive blocks ending at the last one has strictly higher mean "
            "quality than the best spread placement, same other settings and total experts.")
    quality = usable_quality(agg, quality)
    if quality is None or not {"router", "moe_layers", "num_experts"} <= set(agg.columns):
        return Verdict("placement", claim, LACKS, "No quality or placements recorded.", rule)
    data = prepared(agg)
    soft = measured(data, quality).filter(
        pl.col("router").is_in(list(SOFT_ROUTERS)) & pl.col(PLACEMENT).is_in(["last", "spread"])
    ).with_columns((pl.col("num_experts") * pl.col(N_BLOCKS)).alias("_total_experts"))
    keys = [k for k in comparable(soft, ("moe_layers", "num_experts")) if k in soft.columns]
    lines, outcomes = [], []
    pool = pooled_spread(soft, quality)
    for g in config_groups(soft, [*keys, "_total_experts", N_BLOCKS]):
        by_kind: dict[str, dict[str, Any]] = {}
        for row in g.to_dicts():
            kind = row[PLACEMENT]
            if kind not in by_kind or better_by(quality, row[f"{quality}_mean"],
                                            by_kind[kind][f"{quality}_mean"]) > 0:
                by_kind[kind] = row
        if len(by_kind) < 2:
            continue
        last, spread = by_kind["last"], by_kind["spread"]
        outcome, text = _pairwise(quality, last, spread, pool)
        outcomes.append(outcome)
        lines.append(f"{fmt(last[N_BLOCKS])} blocks ({fmt(last['_total_experts'])} experts in "
                     f"total): last {{{last['moe_layers']}}} {fmt(last[f'{quality}_mean'])} vs "
                     f"spread {{{spread['moe_layers']}}} {fmt(spread[f'{quality}_mean'])} "
                     f"({text})")
    if not outcomes:
        return Verdict("placement", claim, LACKS, "No pair of last-blocks and spread Soft MoE "
                       "placements with the same number of MoE blocks.", rule)
    return Verdict("placement", claim, _status(outcomes), listing(lines) + ".", rule)


def soft_saves_compute(agg: pl.DataFrame, quality: str | None = None,
                       minimum: float = MIN_COMPUTE_MULTIPLIER) -> Verdict:
    """Soft MoE reaches dense quality at ``minimum`` x less training compute (from the fits)."""
    claim = (f"Soft MoE reaches dense quality at >= {minimum:g}x less training compute "
             f"(as the paper reports for its backbones).")
    rule = (f"Fitted curves of quality against training compute (reports.scaling): the cost "
            f"at which dense reaches a quality over the cost at which Soft MoE does, in the "
            f"middle of the quality range both curves cover, with its 95% bootstrap interval: "
            f"held when the interval is above {minimum:g}x, failed when below, inconclusive "
            f"when it straddles {minimum:g}x or the curves share no quality (extrapolation).")
    quality = usable_quality(agg, quality)
    cost = next((c for c in ("train_exaflops", "train_exaflops_paper")
                 if f"{c}_mean" in agg.columns), None)
    if quality is None or cost is None or "router" not in agg.columns:
        return Verdict("compute", claim, LACKS, "No quality or training compute recorded.", rule)
    pair = agg.filter(pl.col("router").is_in(["soft", "dense"]))
    analysis = analyse(pair, quality_of(quality), costs=(cost,), with_matches=False)
    curves = {c.group: c for c in analysis.curves}
    missing = [f"{router_name(r)}: {curves[r].note if r in curves else 'no run'}"
               for r in ("soft", "dense") if r not in curves or not curves[r].fitted]
    if missing:
        return Verdict("compute", claim, LACKS, "No fitted curve for " + "; ".join(missing)
                       + ".", rule)
    found = analysis.between("soft", "dense", cost)
    if found is None:
        return Verdict("compute", claim, LACKS, "A curve does not improve with training "
                       "compute, so no multiplier can be read.", rule)
    ratio, lo, hi = found.middle
    if found.better != "soft":  # dense is the cheaper one: invert to Soft MoE's saving
        ratio, lo, hi = 1 / ratio, 1 / hi if hi else float("inf"), 1 / lo if lo else float("inf")
    level = found.levels[len(found.levels) // 2]
    evidence = (f"At {label(quality)} {fmt(level)}, Soft MoE needs {ratio:.3g}x less "
                f"{label(cost)} than dense [95%: {lo:.3g}x, {hi:.3g}x]; over the common range "
                f"the saving {found.trend}. Seeds alone cannot settle a fitted multiplier: its "
                f"interval includes the configurations' scatter around each curve.")
    if found.extrapolated:
        return Verdict("compute", claim, INCONCLUSIVE, evidence + " The curves share no "
                       "quality range: the multiplier is an extrapolation.", rule)
    status = HELD if lo > minimum else FAILED if hi < minimum else INCONCLUSIVE
    return Verdict("compute", claim, status, evidence, rule)


RULES: tuple[Callable[[pl.DataFrame], Verdict], ...] = (
    soft_on_pareto_front,
    soft_scales_with_experts,
    sparse_throughput_falls,
    dropped_tokens_grow,
    learned_routing_beats_ablations,
    last_blocks_beat_spread,
    soft_saves_compute,
)


def check_claims(agg: pl.DataFrame) -> list[Verdict]:
    """Every rule's verdict on ``agg`` (the aggregated frame), in the page's order."""
    agg = prepared(agg)
    return [rule(agg) for rule in RULES]
