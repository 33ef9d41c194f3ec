"""The timing and memory protocol (harness.runtime.timing)."""

import pytest
import torch

from harness.runtime import timing


# --- the protocol ----------------------------------------------------------------------------
def test_time_call_warms_up_then_takes_the_median(monkeypatch):
    calls = []
    scripted = iter([0.005, 0.001, 0.003, 0.002, 0.004])
    monkeypatch.setattr(timing, "time_once", lambda fn, device: (fn(), next(scripted))[1])
    result = timing.time_call(lambda: calls.append(1), repeats=5, warmup=3)
    assert len(calls) == 3 + 5
    assert result["median_ms"] == pytest.approx(3.0)
    assert (result["min_ms"], result["max_ms"], result["n"]) == (pytest.approx(1.0),
                                                                pytest.approx(5.0), 5)


def test_time_pairs_interleaves_and_reports_the_median_ratio(monkeypatch):
    order = []
    times = {"ours": iter([1.0, 1.0, 2.0, 1.0]), "theirs": iter([3.0, 2.0, 2.0, 5.0])}

    def fake(fn, device):
        name = fn()
        order.append(name)
        return next(times[name])

    monkeypatch.setattr(timing, "time_once", fake)
    result = timing.time_pairs(lambda: "ours", lambda: "theirs", repeats=4, warmup=0, gate=None)
    assert order == ["ours", "theirs", "theirs", "ours", "ours", "theirs", "theirs", "ours"]
    assert (result["ratio_min"], result["ratio_max"]) == (1.0, 5.0)
    assert result["ratio_median"] == pytest.approx(2.5)  # ratios 3, 2, 1, 5
    assert result["pairs_total"] == 4 and result["clean"] is False


def test_time_pairs_keeps_only_blocks_without_other_load(monkeypatch):
    loads = iter([0.5, 0.0, 0.02, 0.9, 0.0])  # other processes' share of the CPUs per block
    monkeypatch.setattr(timing.Interference, "others", lambda self, a, b: next(loads))
    times = iter([1.0, 9.0] + [1.0, 2.0] * 4)  # the disturbed first pair looks like x9
    monkeypatch.setattr(timing, "time_once", lambda fn, device: next(times))
    result = timing.time_pairs(lambda: None, lambda: None, repeats=3, warmup=0, gate=0.1)
    assert result["clean"] and result["pairs_clean"] == 3 and result["pairs_total"] == 5
    assert result["ratio_median"] == pytest.approx(2.0)
    assert result["ratio_median_all_pairs"] == pytest.approx(2.0)
    assert result["ratio_max"] == pytest.approx(2.0)  # the x9 pair is left out


def test_peak_memory_counts_weights_grads_and_optimizer_state():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 512),
                                torch.nn.Linear(512, 10))
    images, labels = torch.randn(4, 3, 8, 8), torch.randint(0, 10, (4,))
    out = timing.peak_memory_mb(model, images, labels)
    weights_mb = sum(p.numel() for p in model.parameters()) * 4 / 2**20
    assert 4 * weights_mb <= out["peak_memory_mb"] < 4 * weights_mb + 1  # w, grad, 2 moments
    assert "allocator" in out["peak_memory_method"]
