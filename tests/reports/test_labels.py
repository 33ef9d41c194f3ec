"""Numbers people can read: FLOPs in the unit their magnitude calls for, a value and its error
to the same precision, configuration names, and words about the runs read from the records."""

from __future__ import annotations

import html
import json
import re

import pytest

from reports.labels import (
    config_label,
    fmt_exaflops,
    fmt_flops,
    fmt_mean_std,
    fmt_value_error,
    is_synthetic,
    runs_words,
)
from reports.records import records_frame


@pytest.mark.parametrize(("exaflops", "text"), [
    (1e-9, "1 GFLOPs"), (1.023e-6, "1.02 TFLOPs"), (3.0681e-7, "307 GFLOPs"),
    (1e-3, "1 PFLOPs"), (0.5, "500 PFLOPs"), (0.9996, "1 EFLOPs"), (1.0, "1 EFLOPs"),
    (12.3456, "12.3 EFLOPs"), (999.6, "1,000 EFLOPs"), (1e3, "1,000 EFLOPs"),
])
def test_training_compute_in_the_unit_its_magnitude_calls_for(exaflops, text):
    assert fmt_exaflops(exaflops) == text


def test_every_magnitude_from_1e_9_to_1e3_exaflops_reads_with_three_digits_at_most():
    for power in range(-9 * 4, 3 * 4 + 1):  # quarter decades
        value = 10 ** (power / 4)
        text = fmt_exaflops(value)
        number, unit = text.split(" ")
        assert unit in ("GFLOPs", "TFLOPs", "PFLOPs", "EFLOPs"), text
        digits = re.sub(r"[^0-9]", "", number).lstrip("0")
        assert len(digits.rstrip("0")) <= 3, text
        scale = {"GFLOPs": 1e-9, "TFLOPs": 1e-6, "PFLOPs": 1e-3, "EFLOPs": 1.0}[unit]
        assert float(number.replace(",", "")) * scale == pytest.approx(value, rel=5e-3), text
        assert unit == "EFLOPs" or float(number.replace(",", "")) < 1000, text
    assert fmt_flops(512) == "512 FLOPs" and fmt_flops(0) == "0 FLOPs"
    assert fmt_exaflops(None) == fmt_exaflops(float("nan")) == "-"


@pytest.mark.parametrize(("value", "error", "text"), [
    (0.746, 0.04596, "0.746 ± 0.046"), (0.746, 0.4596, "0.75 ± 0.46"),
    (12345, 678, "12,350 ± 680"), (145.2, 12.0, "145 ± 12"), (-0.02, 0.013, "-0.020 ± 0.013"),
    (1.2346e-9, 3.4e-11, "(1.235 ± 0.034)×10⁻⁹"), (2.5e7, 1.2e5, "(2.500 ± 0.012)×10⁷"),
    (1.023e3, 7.0, "1,023.0 ± 7.0"), (0.5, None, "0.5"), (0.5, 0.0, "0.5"),
])
def test_a_value_and_its_error_to_the_same_precision(value, error, text):
    assert fmt_value_error(value, error) == text
    assert fmt_mean_std(value, error) == text


def test_a_dense_configuration_is_named_without_placement():
    row = {"model": "vit-w64d4h4m256/4", "router": "dense", "moe_layers": "none"}
    assert config_label(row) == "vit-w64d4h4m256/4 Dense"
    moe = {"model": "m", "router": "soft", "num_experts": 16, "moe_layers": "last:2"}
    assert config_label(moe).endswith("last:2")


def _record(data, path=None, **extra):
    return {"study": "s", "run_id": f"r{len(extra)}{data}", "status": "ok",
            "model": "vit-w64d4h4m256/7", "router": "dense", "data": data, "steps": 400,
            "device_type": "cpu", "spec_json": json.dumps({"data": {"name": data,
                                                                    "path": path}}), **extra}


def test_words_about_the_runs_come_from_the_records():
    real = records_frame([_record("mnist", "/usr/share/datasets/fashion-mnist/")])
    assert runs_words(real) == "vit-w64d4h4m256/7 on fashion-mnist, 400 steps, on cpu"
    assert not is_synthetic(real)
    fake = records_frame([_record("synthetic")])
    assert "on synthetic data" in runs_words(fake) and is_synthetic(fake)


def test_the_answer_says_which_gaps_its_intervals_resolve():
    from reports.aggregate import aggregate
    from reports.page.answer import best_at_equal_cost

    def run(router, seed, acc):
        return {"study": "s", "run_id": f"{router}{seed}", "status": "ok", "model": "m",
                "router": router, "seed": seed, "num_experts": None if router == "dense"
                else 4, "spec": router, "train_exaflops": 1e-6, "test_accuracy": acc}

    records = [run("tokens_choice", s, a) for s, a in enumerate((0.80, 0.81, 0.82))]
    records += [run("soft", s, a) for s, a in enumerate((0.79, 0.81, 0.80))]
    records += [run("dense", s, a) for s, a in enumerate((0.60, 0.61, 0.62))]
    text = html.unescape(re.sub("<[^>]+>", "", best_at_equal_cost(
        aggregate(records_frame(records)))))
    assert "at most 1 TFLOPs of training compute" in text
    assert "resolve Tokens Choice's lead over Dense by 0.200 ± 0.020" in text
    assert "0.810 ± 0.010" in text
    assert "Soft MoE is within noise of Tokens Choice" in text
