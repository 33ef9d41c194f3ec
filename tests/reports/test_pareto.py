"""Pareto fronts on hand-built frames: ties, directions, groups, single points, nulls."""

import itertools
import random

import polars as pl
import pytest

from reports.pareto import pareto_mask


def mask(df, *args, **kwargs):
    return pareto_mask(df, *args, **kwargs).to_list()


def pareto_front(df, cost, quality, *, by=None):
    """The rows on the front (per ``by`` group), sorted by group then cost: each group's rows
    are then the vertices of its front line, in drawing order."""
    by = [by] if isinstance(by, str) else list(by or [])
    return df.filter(pareto_mask(df, cost, quality, by=by or None)).sort(
        [*by, cost, quality], nulls_last=True)


def brute_force(costs, qualities, cost_lower, quality_higher):
    """O(n^2) reference: i is on the front when no j is as good on both and better on one."""
    out = []
    for i, (ci, qi) in enumerate(zip(costs, qualities, strict=True)):
        if ci is None or qi is None:
            out.append(False)
            continue
        dominated = False
        for j, (cj, qj) in enumerate(zip(costs, qualities, strict=True)):
            if i == j or cj is None or qj is None:
                continue
            c_ok = cj <= ci if cost_lower else cj >= ci
            q_ok = qj >= qi if quality_higher else qj <= qi
            strict = cj != ci or qj != qi
            if c_ok and q_ok and strict:
                dominated = True
                break
        out.append(not dominated)
    return out


def test_single_point_is_its_own_front():
    df = pl.DataFrame({"cost": [3.0], "acc": [0.5]})
    assert mask(df, "cost", "acc") == [True]
    assert pareto_front(df, "cost", "acc").height == 1


def test_empty_frame():
    df = pl.DataFrame({"cost": [], "acc": []}, schema={"cost": pl.Float64, "acc": pl.Float64})
    assert mask(df, "cost", "acc") == []
    assert pareto_front(df, "cost", "acc").height == 0


def test_lower_cost_higher_quality():
    df = pl.DataFrame({
        "cost": [1.0, 2.0, 3.0, 4.0, 2.5],
        "acc": [0.5, 0.7, 0.6, 0.9, 0.7],
    })
    # 3.0/0.6 is dominated by 2.0/0.7; 2.5/0.7 by 2.0/0.7 (same quality, cheaper)
    assert mask(df, "cost", "acc") == [True, True, False, True, False]
    front = pareto_front(df, "cost", "acc")
    assert front["cost"].to_list() == [1.0, 2.0, 4.0]  # sorted by cost, drawing order


def test_exact_ties_are_all_kept():
    df = pl.DataFrame({"cost": [1.0, 1.0, 2.0, 2.0], "acc": [0.5, 0.5, 0.8, 0.8]})
    assert mask(df, "cost", "acc") == [True, True, True, True]


def test_equal_cost_keeps_only_the_best_quality():
    df = pl.DataFrame({"cost": [1.0, 1.0, 1.0], "acc": [0.5, 0.7, 0.6]})
    assert mask(df, "cost", "acc") == [False, True, False]


def test_equal_quality_keeps_only_the_cheapest():
    df = pl.DataFrame({"cost": [3.0, 1.0, 2.0], "acc": [0.7, 0.7, 0.7]})
    assert mask(df, "cost", "acc") == [False, True, False]


def test_quality_lower_is_better_from_the_metrics_table():
    # test_loss is lower-is-better: the cheap, low-loss point dominates everything
    df = pl.DataFrame({"gflops_per_image": [1.0, 2.0, 3.0], "test_loss": [0.5, 0.4, 0.6]})
    assert mask(df, "gflops_per_image", "test_loss") == [True, True, False]
    # the _mean suffix of aggregated columns is understood
    agg = df.rename({"gflops_per_image": "gflops_per_image_mean", "test_loss": "test_loss_mean"})
    assert mask(agg, "gflops_per_image_mean", "test_loss_mean") == [True, True, False]
    # and explicit flags win over the table
    assert mask(df, "gflops_per_image", "test_loss", quality_higher_is_better=True) == [
        True, False, True]


def test_cost_higher_is_better_images_per_second():
    df = pl.DataFrame({"infer_images_per_s": [100.0, 50.0, 80.0], "test_accuracy": [0.6, 0.7, 0.5]})
    # from the table: more images/s is better; 80/0.5 is dominated by 100/0.6
    assert mask(df, "infer_images_per_s", "test_accuracy") == [True, True, False]
    # read as a lower-is-better cost, 50 images/s at 0.7 would dominate everything
    assert mask(df, "infer_images_per_s", "test_accuracy", cost_lower_is_better=True) == [
        False, True, False]


def test_nulls_and_nans_are_never_on_the_front():
    df = pl.DataFrame({"cost": [1.0, None, 2.0, float("nan")], "acc": [0.5, 0.9, None, 0.99]})
    assert mask(df, "cost", "acc") == [True, False, False, False]


def test_fronts_per_group_with_a_null_group():
    df = pl.DataFrame({
        "router": ["soft", "soft", "dense", None, None],
        "cost": [1.0, 2.0, 0.5, 1.0, 3.0],
        "acc": [0.6, 0.8, 0.9, 0.5, 0.4],
    })
    assert mask(df, "cost", "acc", by="router") == [True, True, True, True, False]
    assert mask(df, "cost", "acc") == [False, False, True, False, False]  # dense wins overall
    front = pareto_front(df, "cost", "acc", by=["router"])
    assert front.height == 4


@pytest.mark.parametrize("cost_lower, quality_higher",
                         list(itertools.product([True, False], repeat=2)))
def test_matches_brute_force_on_random_integer_grids(cost_lower, quality_higher):
    rng = random.Random(1234)
    for _ in range(30):
        n = rng.randint(1, 25)
        costs = [rng.choice([None, *range(5)]) if rng.random() < 0.1 else rng.randrange(5)
                 for _ in range(n)]
        quals = [rng.randrange(4) if rng.random() > 0.05 else None for _ in range(n)]
        groups = [rng.choice(["a", "b", None]) for _ in range(n)]
        df = pl.DataFrame({"g": groups, "c": costs, "q": quals},
                          schema={"g": pl.String, "c": pl.Int64, "q": pl.Int64})
        got = mask(df, "c", "q", cost_lower_is_better=cost_lower,
                   quality_higher_is_better=quality_higher)
        assert got == brute_force(costs, quals, cost_lower, quality_higher)
        got_by = mask(df, "c", "q", cost_lower, quality_higher, by="g")
        for g in ("a", "b", None):
            idx = [i for i, x in enumerate(groups) if x == g]
            want = brute_force([costs[i] for i in idx], [quals[i] for i in idx],
                               cost_lower, quality_higher)
            assert [got_by[i] for i in idx] == want
