"""Points whose timings were flagged (busy machine, wide spread) are marked in the
time-based Pareto panels, and only there."""

from reports.aggregate import aggregate
from reports.figures.common import FLAGGED_LABEL, FLAGGED_SYMBOL
from reports.figures.pareto import fig_pareto
from reports.records import records_frame


def record(run_id, router, seed, step_ms, flagged):
    return {"study": "s", "run_id": run_id, "status": "ok", "model": "vit-ti/16",
            "router": router, "num_experts": None if router == "dense" else 8, "seed": seed,
            "spec": f"vit-ti/16:{router}", "gflops_per_image": 1.0 + (router == "soft"),
            "train_step_ms": step_ms, "test_accuracy": 0.5 + 0.1 * (router == "soft"),
            "timing_flagged": flagged}


def agg():
    return aggregate(records_frame([
        record("a", "dense", 0, 10.0, False), record("b", "dense", 1, 11.0, False),
        record("c", "soft", 0, 12.0, False), record("d", "soft", 1, 25.0, True)]))


def markers(fig):
    return {t.name: list(t.marker.symbol) for t in fig.data
            if t.mode == "markers" and t.x[0] is not None}


def test_a_configuration_with_a_flagged_run_is_marked_on_time_axes():
    fig = fig_pareto(agg(), "train_step_ms", ["test_accuracy"])
    symbols = markers(fig)
    assert symbols["Soft MoE"] == [FLAGGED_SYMBOL] and symbols["Dense"] == ["circle"]
    assert any(t.name == FLAGGED_LABEL for t in fig.data)


def test_flags_do_not_mark_counted_costs():
    fig = fig_pareto(agg(), "gflops_per_image", ["test_accuracy"])
    assert all(s == ["circle"] for s in markers(fig).values())
    assert not any(t.name == FLAGGED_LABEL for t in fig.data)


def test_the_paper_fronts_mark_them_too():
    from reports.figures.paper import fig_fronts

    fig = fig_fronts(agg(), ["gflops_per_image", "train_step_ms"], "test_accuracy")
    by_axis = {}
    for t in fig.data:
        if t.mode and "markers" in t.mode and t.x[0] is not None:
            by_axis.setdefault(t.xaxis, []).extend(t.marker.symbol)
    assert FLAGGED_SYMBOL not in by_axis["x"]  # GFLOP/img: counted, never flagged
    assert FLAGGED_SYMBOL in by_axis["x2"]  # train step time
    assert any(t.name == FLAGGED_LABEL for t in fig.data)
