"""The README's main command, end to end on the real quickstart grid (short training)."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
SHORT = ["--set", "train.steps=8", "--set", "train.eval_every=0", "--set",
         "train.checkpoint_every=0", "--set", "data.train_size=1024", "--set",
         "data.test_size=512", "--set", "measure.repeats=1", "--set", "measure.warmup=0"]


@pytest.mark.slow
def test_quickstart_runs_every_grid_point_and_writes_the_report(tmp_path):
    def cli(*args):
        proc = subprocess.run([sys.executable, "-m", "harness.cli", *args, *SHORT,
                               "--results", str(tmp_path)], capture_output=True, text=True,
                              cwd=ROOT, timeout=900)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout

    out = cli("run", "studies/quickstart.yaml", "--quiet")
    assert "18 runs: 18 ok, 0 failed, 0 diverged" in out
    assert len(list((tmp_path / "quickstart" / "runs").glob("*.json"))) == 18
    assert "Nothing to do" in cli("run", "studies/quickstart.yaml")
    report = cli("report", "studies/quickstart.yaml")
    page = tmp_path / "quickstart" / "report.html"
    assert f"report: {page}" in report
    html = page.read_text()
    assert "moe-harness report: quickstart" in html and "Partial results" not in html
    # the fitted-curves section: a curve where a router has 3+ distinct costs, else the note
    assert 'id="fits"' in html and ('id="fig-fit-' in html or 'id="fits-note"' in html)
