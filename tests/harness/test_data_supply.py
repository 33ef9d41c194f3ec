"""The dry run's data check: images/s a run's GPUs consume against what its CPUs decode."""

from pathlib import Path

import pytest
from helpers import cli

from harness.cost.estimate import IMAGES_PER_CPU_S, data_supply, data_supply_notes, run_cost
from harness.spec.study import load

PAPER = Path(__file__).resolve().parents[2] / "studies" / "paper"
STUDIES = sorted(p.stem for p in PAPER.glob("*.yaml"))


def test_jpeg_folders_starve_eight_gpus():
    study = load(PAPER / "pareto.yaml", ["data.name=imagefolder", "data.loader.workers=1"],
                 profile="cluster")
    rows = data_supply(study)
    assert rows and all(r.bound for r in rows)
    worst = max(rows, key=lambda r: r.demand)
    spec = next(s for s in study.expand() if run_cost(s).spec == worst.spec)
    flops = 3 * run_cost(spec).gflops_per_image * 1e9  # training FLOPs per image
    assert worst.demand == pytest.approx(8 * 989e12 * 0.4 / flops)
    assert 100_000 < worst.demand < 150_000  # S/16: ~14-16k images/s per GPU, 8 GPUs
    assert worst.cpus == 8  # 1 worker per GPU process, 8 GPUs (of the 56 CPUs)
    assert worst.per_cpu == IMAGES_PER_CPU_S["imagefolder"]
    assert worst.cpus_needed == pytest.approx(worst.demand / worst.per_cpu, abs=1)
    (note,) = data_supply_notes(study)
    assert note.startswith(f"DATA-BOUND: {len(rows)} of {len(rows)} models")
    assert f"needs ~{worst.cpus_needed} CPUs" in note


@pytest.mark.parametrize("name", STUDIES)
def test_shipped_cluster_profiles_keep_their_gpus_fed(name):
    study = load(PAPER / f"{name}.yaml", profile="cluster")
    rows = data_supply(study)
    assert rows and not any(r.bound for r in rows), [r for r in rows if r.bound]
    assert data_supply_notes(study)[0].startswith("Data: fed.")


def test_measured_rate_overrides_and_laptop_runs_are_not_checked():
    study = load(PAPER / "pareto.yaml", ["estimate.images_per_cpu_s=100"], profile="cluster")
    assert all(r.per_cpu == 100 and r.bound for r in data_supply(study))
    assert data_supply(load(PAPER / "pareto.yaml", profile="laptop")) == []


def test_dry_run_prints_the_warning():
    out = cli("run", PAPER / "pareto.yaml", "--profile", "cluster", "--dry-run",
              "--set", "data.name=imagefolder").stdout
    assert "DATA-BOUND: 14 of 21 models would leave their GPUs waiting" in " ".join(out.split())
