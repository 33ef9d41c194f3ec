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


def test_legend_items_keep_the_routers_colour_and_a_plain_circle():
    from reports.figures.common import router_color

    fig = fig_pareto(agg(), "train_step_ms", ["test_accuracy"])
    legend = {t.name: t for t in fig.data if t.showlegend is not False}
    for router, name in (("soft", "Soft MoE"), ("dense", "Dense")):
        assert legend[name].marker.symbol == "circle"  # not the flagged point's symbol
        assert legend[name].marker.color == router_color(router)


def test_the_page_says_in_one_line_why_timings_are_flagged():
    from reports.figures.common import flagged_note

    frame = records_frame([record("a", "dense", 0, 10.0, False),
                           {**record("d", "soft", 1, 25.0, True), "timing_others_cpu": 0.6}])
    assert flagged_note(frame).startswith("Timing flagged for 1 of 2 ok runs (1 of them while "
                                          "other processes used over 25% of the CPUs")
    assert flagged_note(records_frame([record("a", "dense", 0, 10.0, False)])) is None
