"""The layer benchmark (harness.bench.layers) and the inspect command."""

import json
import math

import pytest
from typer.testing import CliRunner

from harness.bench import layers as bench
from harness.cli import app
from harness.errors import HarnessError


# --- the layer benchmark ------------------------------------------------------------------------
def test_bench_layers_small_config_runs_and_reports_every_column():
    result = bench.bench_layers(dim=32, tokens=8, batch=2, experts=(4,), slots=(1, 2),
                                repeats=2, warmup=1, plain_matmul_size=(256, 256, 256))
    kinds = [(r["kind"], r["experts"], r["slots_per_expert"]) for r in result["rows"]]
    assert kinds == [("soft", 4, 1), ("soft", 4, 2), ("dense", None, None),
                     ("tokens_choice", 4, None), ("experts_choice", 4, None)]
    soft = result["rows"][0]
    for key in ("fwd_ms", "fwd_bwd_ms", "experts_fwd_ms", "bare_matmul_fwd_ms",
                "experts_gflops_per_s_fwd", "experts_fraction_of_plain_fwd",
                "layer_over_bare_fwd", "layer_over_bare_fwd_bwd", "plain_matmul_gflops_per_s"):
        assert soft[key] > 0, key
    if bench.reference_soft_moe(32, 4, 1, 128) is None:
        pytest.skip("soft-moe-pytorch not installed (pip install 'moe-harness[bench]'): "
                    "the comparison columns were not measured")
    assert soft["ref_fwd_ms"] > 0 and soft["speedup_fwd_median"] > 0
    assert soft["speedup_fwd_p10"] <= soft["speedup_fwd_median"] <= soft["speedup_fwd_p90"]
    assert math.isfinite(result["machine"]["plain_matmul_gflops_per_s"])


def test_bench_layers_cli_writes_json(tmp_path):
    out = tmp_path / "layers.json"
    result = CliRunner().invoke(app, ["bench", "layers", "--dim", "32", "--tokens", "8",
                                      "--batch", "2", "--experts", "4", "--quick",
                                      "--repeats", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "speedup" in result.output
    data = json.loads(out.read_text())
    assert {r["kind"] for r in data["rows"]} == {"dense", "soft", "tokens_choice",
                                                 "experts_choice"}


def test_inspect_cli_json_and_paper(tmp_path):
    out = tmp_path / "inspect.json"
    runner = CliRunner()
    result = runner.invoke(app, ["inspect", "vit-ti/16@64", "vit-ti/16@64:soft:e8",
                                 "--json", str(out)])
    assert result.exit_code == 0, result.output
    rows = json.loads(out.read_text())
    assert [r["model"] for r in rows] == ["vit-ti/16@64", "vit-ti/16@64:soft:e8:s1"]
    assert rows[1]["gflops_routing"] > 0 and rows[0]["gflops_experts"] == 0
    paper = runner.invoke(app, ["inspect", "--paper"])
    assert paper.exit_code == 0, paper.output
    for label in ("ViT S/16", "ViT B/16", "ViT L/16", "ViT H/14", "Soft MoE S/16 128E",
                  "Soft MoE H/14 128E", "Soft MoE H/14 256E"):
        assert label in paper.output


@pytest.mark.slow
def test_inspect_time_adds_measurements(tmp_path):
    out = tmp_path / "t.json"
    result = CliRunner().invoke(app, ["inspect", "vit-w32d2h2m64/8@16:soft:e4", "--time",
                                      "--batch-size", "4", "--repeats", "2", "--json",
                                      str(out)])
    assert result.exit_code == 0, result.output
    row = json.loads(out.read_text())[0]
    assert row["infer_images_per_s"] > 0 and row["train_step_ms"] > 0
    assert row["peak_memory_mb"] > 0


def test_bench_tracking_trains_at_the_resolution_the_model_names(monkeypatch):
    import harness.runtime.train
    from harness.bench.tracking import bench_tracking

    class Stop(Exception):
        pass

    def fit(net, run, data, **kwargs):
        raise Stop(run.data.image_size, run.model_config_().spec)

    monkeypatch.setattr(harness.runtime.train, "fit", fit)
    with pytest.raises(Stop) as stopped:
        bench_tracking(model="vit-w64d4h4m256/4@8", steps=2, repeats=1, batch_size=4)
    assert stopped.value.args[0] == 8 and "@8:" in stopped.value.args[1]
    with pytest.raises(HarnessError, match="--model 'vit-s': expected a backbone"):
        bench_tracking(model="vit-s", steps=2, repeats=1, batch_size=4)
