"""The claims check: each rule on hand-built frames where it holds, fails and lacks data."""

from __future__ import annotations

import itertools

import numpy as np
import polars as pl
import pytest

from reports.aggregate import aggregate
from reports.analyses import claims
from reports.analyses.claims import (
    FAILED,
    HELD,
    INCONCLUSIVE,
    LACKS,
    check_claims,
    dropped_tokens_grow,
    last_blocks_beat_spread,
    learned_routing_beats_ablations,
    soft_on_pareto_front,
    soft_scales_with_experts,
    sparse_throughput_falls,
)
from reports.page.sections import claims_section
from reports.records import records_frame

_ids = itertools.count()


def rec(router="soft", *, acc=0.5, seed=0, model="vit-w64d4h4m256/4", **kw):
    """One ok record with the spec columns a real run writes (harness.spec.study.RunSpec.flat)."""
    soft = router not in ("dense", "tokens_choice", "experts_choice")
    out = {
        "study": "s", "run_id": f"r{next(_ids)}", "status": "ok", "model": model,
        "router": router, "num_experts": None if router == "dense" else 16,
        "slots_per_expert": 1 if soft and router != "dense" else None,
        "k": 1 if router == "tokens_choice" else None,
        "capacity_factor": 1.0 if router in ("tokens_choice", "experts_choice") else None,
        "moe_layers": "none" if router == "dense" else "last_half", "pool": "gap",
        "seed": seed, "lr": 3e-3, "steps": 300, "batch_size": 128, "data": "synthetic",
        "image_size": 16, "test_accuracy": acc,
    }
    if router == "dense":
        out["slots_per_expert"] = None
    out.update(kw)
    return out


def agg(records):
    return aggregate(records_frame(records))


# --------------------------------------------------------------------------- Pareto front


def pareto_records(soft_acc: float):
    return [
        rec("dense", acc=0.40, train_exaflops=1.0, model="vit-a/4"),
        rec("dense", acc=0.50, train_exaflops=4.0, model="vit-b/4"),
        rec("tokens_choice", acc=0.45, train_exaflops=1.1, model="vit-a/4"),
        rec("soft", acc=soft_acc, train_exaflops=1.02, model="vit-a/4"),
        rec("soft", acc=0.55, train_exaflops=4.1, model="vit-b/4"),
        rec("dense", acc=0.90, train_exaflops=100.0, model="vit-c/4"),  # dearer than any soft
    ]


def test_pareto_holds_when_soft_leads_at_every_cost_it_covers():
    v = soft_on_pareto_front(agg(pareto_records(0.46)))
    assert v.status == HELD, v.evidence
    assert "3 configurations of other routers" in v.evidence  # the 100 EF dense is outside


def test_pareto_fails_when_a_cheaper_rival_beats_soft():
    v = soft_on_pareto_front(agg(pareto_records(0.30)))
    assert v.status == FAILED
    # both the cheaper dense (0.40) and Tokens Choice (0.45) beat Soft MoE's 0.30
    assert "2 beat Soft MoE" in v.evidence and "+0.15" in v.evidence


def test_pareto_tolerance_and_equal_cost_slack():
    # Tokens Choice 0.45 vs Soft 0.447: inside the 0.005 tolerance; dense at 1.0 EF is
    # within 5% of Soft's 1.02, so it counts as the same cost
    assert soft_on_pareto_front(agg(pareto_records(0.447))).status == HELD
    assert soft_on_pareto_front(agg(pareto_records(0.44))).status == FAILED


def test_pareto_lacks_data():
    assert soft_on_pareto_front(agg([rec("dense", train_exaflops=1.0)])).status == LACKS
    no_cost = agg([rec("dense"), rec("soft")])
    assert soft_on_pareto_front(no_cost).status == LACKS
    only_dearer = agg([rec("soft", train_exaflops=1.0), rec("dense", train_exaflops=9.0)])
    v = soft_on_pareto_front(only_dearer)
    assert v.status == LACKS and "nothing to compare" in v.evidence


def test_pareto_falls_back_to_eval_flops_and_respects_loss_direction():
    records = [rec("dense", acc=None, test_loss=1.0, gflops_per_image=1.0),
               rec("soft", acc=None, test_loss=1.2, gflops_per_image=1.0)]
    v = soft_on_pareto_front(agg(records))
    assert v.status == FAILED and "GFLOPs per image" in v.evidence  # lower loss is better


# --------------------------------------------------------------------------- Soft MoE scaling


def soft_sweep(accs, speeds, slots=64):
    out = []
    for (e, acc), speed in zip(zip((4, 16, 64), accs, strict=True), speeds, strict=True):
        kw = {} if speed is None else {"train_images_per_s": speed}
        out.append(rec("soft", num_experts=e, slots_per_expert=slots // e, acc=acc, **kw))
    return out


def test_soft_scaling_holds():
    v = soft_scales_with_experts(agg(soft_sweep((0.30, 0.32, 0.35), (1000, 950, 900))))
    assert v.status == HELD, v.evidence
    assert "64 slots" in v.evidence and "0.90-1.00x" in v.evidence


def test_soft_scaling_fails_on_quality_or_throughput():
    flat = soft_scales_with_experts(agg(soft_sweep((0.30, 0.32, 0.29), (1000, 950, 900))))
    assert flat.status == FAILED and "does not rise" in flat.evidence
    slow = soft_scales_with_experts(agg(soft_sweep((0.30, 0.32, 0.35), (1000, 800, 500))))
    assert slow.status == FAILED and "outside +-30%" in slow.evidence
    assert soft_scales_with_experts(agg(soft_sweep((0.30, 0.32, 0.35), (1000, 800, 500))),
                                    band=0.6).status == HELD


def test_soft_scaling_lacks_data():
    # different total slots (4x1, 16x1): not a sweep at fixed slots
    records = [rec("soft", num_experts=4), rec("soft", num_experts=16)]
    assert soft_scales_with_experts(agg(records)).status == LACKS
    no_speed = soft_scales_with_experts(agg(soft_sweep((0.3, 0.32, 0.35), (None,) * 3)))
    assert no_speed.status == LACKS and "not recorded" in no_speed.evidence
    assert soft_scales_with_experts(agg([rec("dense")])).status == LACKS


# --------------------------------------------------------------------------- sparse routers


def sparse_sweep(speeds, dropped, router="tokens_choice"):
    return [rec(router, num_experts=e, train_images_per_s=s, router_dropped_fraction=d)
            for e, s, d in zip((4, 16, 64), speeds, dropped, strict=True)]


def test_sparse_throughput_and_dropped_tokens_hold():
    records = (sparse_sweep((1000, 900, 600), (0.05, 0.10, 0.20))
               + sparse_sweep((1000, 850, 700), (0.02, 0.05, 0.09), "experts_choice"))
    a = agg(records)
    speed, dropped = sparse_throughput_falls(a), dropped_tokens_grow(a)
    assert speed.status == HELD
    assert "fewest ×0.6" in speed.evidence and "fewest ×0.7" in speed.evidence
    assert "falls" not in speed.evidence and "×-" not in speed.evidence
    assert dropped.status == HELD and "rises +0.15 (one seed: spread unknown)" in dropped.evidence


def test_sparse_claims_fail_when_any_sweep_goes_the_other_way():
    records = (sparse_sweep((1000, 900, 600), (0.05, 0.10, 0.20))
               + sparse_sweep((1000, 1000, 990), (0.10, 0.10, 0.105), "experts_choice"))
    a = agg(records)
    assert sparse_throughput_falls(a).status == FAILED  # Experts Choice falls only 1%
    assert dropped_tokens_grow(a).status == FAILED  # ... and drops only 0.005 more


def test_sparse_claims_lack_data():
    one_count = agg([rec("tokens_choice", train_images_per_s=1.0, router_dropped_fraction=0.1)])
    assert sparse_throughput_falls(one_count).status == LACKS
    assert dropped_tokens_grow(one_count).status == LACKS
    soft_only = agg(soft_sweep((0.3, 0.32, 0.35), (1000, 900, 800)))
    assert sparse_throughput_falls(soft_only).status == LACKS
    # different k: not the same other settings, so no sweep
    split = agg([rec("tokens_choice", num_experts=4, k=1, train_images_per_s=2.0),
                 rec("tokens_choice", num_experts=16, k=2, train_images_per_s=1.0)])
    assert sparse_throughput_falls(split).status == LACKS


# --------------------------------------------------------------------------- ablations


def ablation_records(soft_acc):
    out = []
    for seed in (0, 1):
        out += [rec("soft", acc=soft_acc + 0.01 * seed, seed=seed),
                rec("soft_uniform", acc=0.40, seed=seed), rec("uniform_soft", acc=0.38, seed=seed),
                rec("uniform", acc=0.35, seed=seed), rec("identity", acc=0.30, seed=seed),
                rec("dense", acc=0.25, seed=seed)]
    return out


def test_ablations_hold_fail_and_lack_data():
    held = learned_routing_beats_ablations(agg(ablation_records(0.45)))
    assert held.status == HELD and "Soft / Uniform 0.4 (+0.055 [+0.04" in held.evidence
    # -0.005 against Soft / Uniform with a seed spread of 0.007: the interval straddles 0
    unsure = learned_routing_beats_ablations(agg(ablation_records(0.39)))
    assert unsure.status == INCONCLUSIVE and "Soft / Uniform 0.4 (-0.005 [-0.0" in unsure.evidence
    assert "seeds each would settle it" in unsure.evidence
    failed = learned_routing_beats_ablations(agg(ablation_records(0.30)))
    assert failed.status == FAILED
    assert learned_routing_beats_ablations(agg([rec("soft"), rec("dense")])).status == LACKS
    # an ablation with other settings (lr) is not compared
    other = agg([rec("soft", acc=0.3), rec("uniform", acc=0.5, lr=1e-3)])
    assert learned_routing_beats_ablations(other).status == LACKS


def test_ablations_name_the_ones_not_run():
    v = learned_routing_beats_ablations(agg([rec("soft", acc=0.5), rec("identity", acc=0.4)]))
    assert v.status == HELD and "not run: Soft / Uniform, Uniform / Soft, Uniform" in v.evidence


# --------------------------------------------------------------------------- placement


def placement_records(last_acc, *, model="vit-w64d12h4m256/4"):
    rows = {"11": (64, 0.30), "10": (64, 0.31), "10,11": (32, last_acc), "5,11": (32, 0.33),
            "8,9,10,11": (16, last_acc + 0.02), "2,5,8,11": (16, 0.34),
            "4,5,6,7,8,9,10,11": (8, last_acc + 0.01), "1,2,3,4,8,9,10,11": (8, 0.335)}
    return [rec("soft", model=model, moe_layers=b, num_experts=e, acc=a)
            for b, (e, a) in rows.items()] + [rec("dense", model=model, acc=0.2)]


def test_placement_holds_fails_and_lacks_data():
    held = last_blocks_beat_spread(agg(placement_records(0.36)))
    assert held.status == HELD, held.evidence
    assert "4 blocks (64 experts in total): last {8,9,10,11} 0.38 vs spread {2,5,8,11}" in (
        held.evidence)
    assert held.evidence.count("blocks (64 experts in total)") == 3  # 2, 4 and 8 blocks
    failed = last_blocks_beat_spread(agg(placement_records(0.32)))
    assert failed.status == FAILED  # 2 blocks: last 0.32 < spread 0.33
    singles = agg([rec("soft", model="vit-w64d12h4m256/4", moe_layers="11"),
                   rec("soft", model="vit-w64d12h4m256/4", moe_layers="10")])
    assert last_blocks_beat_spread(singles).status == LACKS
    # spread and last with different totals of experts are not compared
    mixed = agg([rec("soft", model="vit-w64d12h4m256/4", moe_layers="10,11", num_experts=32),
                 rec("soft", model="vit-w64d12h4m256/4", moe_layers="5,11", num_experts=16)])
    assert last_blocks_beat_spread(mixed).status == LACKS


def test_placement_reads_named_placements():
    # last_half of a 4-block model = {2, 3}: last; every:2 = {1, 3}: spread
    records = [rec("soft", moe_layers="last_half", acc=0.4),
               rec("soft", moe_layers="every:2", acc=0.3)]
    assert last_blocks_beat_spread(agg(records)).status == HELD


# --------------------------------------------------------------------------- all together


def test_check_claims_runs_every_rule_and_the_section_escapes():
    records = (pareto_records(0.46) + ablation_records(0.45)
               + [rec("soft", model="<b>x</b>", acc=0.5)])
    a = agg(records)
    verdicts = check_claims(a)
    assert [v.key for v in verdicts] == ["pareto", "soft_experts", "sparse_speed", "dropped",
                                         "ablations", "placement", "compute"]
    assert {v.status for v in verdicts} <= {HELD, FAILED, LACKS}
    page = claims_section(a)
    assert page.count("<tr data-claim=") == 7
    assert 'data-verdict="held"' in page and 'data-verdict="lacks data"' in page
    assert "<b>x</b>" not in page


def test_claims_section_needs_a_quality():
    assert claims_section(agg([rec("soft", acc=None)])) is None
    assert claims_section(pl.DataFrame()) is None


def test_thresholds_are_stated_in_the_rules():
    a = agg(pareto_records(0.46))
    text = " ".join(v.rule for v in check_claims(a))
    for value in (f"{claims.FRONT_COST_TOL:.0%}", f"{claims.FRONT_QUALITY_TOL:g}",
                  f"{claims.THROUGHPUT_BAND:.0%}", f"{claims.MIN_THROUGHPUT_FALL:.0%}",
                  f"{claims.MIN_DROP_RISE:g}"):
        assert value in text, value


@pytest.mark.parametrize("rule", claims.RULES)
def test_every_rule_lacks_data_on_an_empty_frame(rule):
    empty = agg([rec("dense", status="failed")])
    assert rule(empty).status == LACKS


# --------------------------------------------------------------------------- seed noise


def seeded(router, accs, **kw):
    return [rec(router, acc=a, seed=s, **kw) for s, a in enumerate(accs)]


def pareto_with_seeds(soft, dense):
    return (seeded("soft", soft, train_exaflops=1.0, model="vit-a/4")
            + seeded("dense", dense, train_exaflops=1.0, model="vit-a/4"))


def test_pareto_is_inconclusive_when_routers_differ_by_less_than_their_seed_spread():
    # dense leads by 0.01 (more than the 0.005 tolerance) but seeds spread by ~0.05
    v = soft_on_pareto_front(agg(pareto_with_seeds([0.40, 0.50, 0.45], [0.41, 0.51, 0.46])))
    assert v.status == INCONCLUSIVE, v.evidence
    assert "may beat Soft MoE" in v.evidence and "seeds each would settle it" in v.evidence
    # the same means, seeds spread by 0.001: the lead is real, the claim fails as before
    v = soft_on_pareto_front(agg(pareto_with_seeds([0.449, 0.450, 0.451], [0.459, 0.46, 0.461])))
    assert v.status == FAILED and "+0.01 [+0.0" in v.evidence
    # Soft MoE ahead by far more than the spread: held
    v = soft_on_pareto_front(agg(pareto_with_seeds([0.55, 0.60, 0.65], [0.40, 0.45, 0.50])))
    assert v.status == HELD


def test_interval_matches_the_pooled_two_sample_t_interval():
    from scipy.stats import ttest_ind

    from reports.analyses.noise import difference, pooled

    a, b = np.array([0.52, 0.55, 0.58]), np.array([0.50, 0.51, 0.56])
    stds, ns = [a.std(ddof=1), b.std(ddof=1)], [3, 3]
    margin = difference(a.mean(), stds[0], 3, b.mean(), stds[1], 3, pooled(stds, ns))
    # the larger side's own variance is used, so the interval is at least scipy's pooled one
    ref = ttest_ind(a, b, equal_var=True).confidence_interval(0.95)
    assert margin.lo <= ref.low + 1e-12 and margin.hi >= ref.high - 1e-12
    same = difference(a.mean(), stds[0], 3, a.mean() - 0.01, stds[0], 3,
                      pooled([stds[0]] * 2, ns))
    ref = ttest_ind(a, a - 0.01, equal_var=True).confidence_interval(0.95)
    assert (same.lo, same.hi) == pytest.approx((ref.low, ref.high))


def test_seeds_to_settle_is_the_smallest_count_that_clears_the_threshold():
    from scipy.stats import t

    from reports.analyses.noise import difference

    m = difference(0.51, 0.05, 2, 0.50, 0.05, 2)  # +0.01 with a 0.05 spread: unsure
    assert m.outcome() == "unsure"
    n = m.seeds_to_settle()

    def half(k):
        return t.ppf(0.975, 2 * k - 2) * np.sqrt(2 * 0.05**2 / k)

    assert half(n) < 0.01 <= half(n - 1)
    assert 150 < n < 250  # ~ (1.96 * 0.0707 / 0.01)^2 = 192
    assert difference(0.51, None, 1, 0.50, None, 1).known is False  # one seed: no interval


def test_soft_throughput_band_is_judged_with_its_interval():
    def sweep(speeds_by_seed):  # quality rises clearly; throughput per seed as given
        out = []
        for seed, speeds in enumerate(speeds_by_seed):
            for (e, acc), speed in zip(((4, 0.30), (16, 0.40), (64, 0.50)), speeds, strict=True):
                out.append(rec("soft", num_experts=e, slots_per_expert=64 // e,
                               acc=acc + 0.001 * seed, seed=seed, train_images_per_s=speed))
        return out

    # the fall to 0.75x is inside +-30% on average, but seeds spread by ~20%: not settled
    noisy = soft_scales_with_experts(agg(sweep([(1000, 950, 600), (1000, 950, 900)])))
    assert noisy.status == INCONCLUSIVE and "not settled inside +-30%" in noisy.evidence
    steady = soft_scales_with_experts(agg(sweep([(1000, 950, 740), (1001, 951, 760)])))
    assert steady.status == HELD and "inside +-30%" in steady.evidence
