import subprocess
import sys

import pytest
from helpers import cli


def test_help_does_not_import_torch():
    code = ("import sys; from harness.cli import app; import typer.testing as t; "
            "r = t.CliRunner().invoke(app, ['--help']); assert r.exit_code == 0, r.output; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stderr


@pytest.mark.slow
def test_inspect_prints_total_and_active_parameters():
    out = cli("inspect", "vit-s/16", "--router", "soft", "--experts", "128", "--slots", "1")
    assert "vit-s/16:soft:e128:s1" in out.stdout
    assert "922,699,630" in out.stdout  # total, closed form in test_models


def test_user_errors_are_one_line_exit_2():
    proc = cli("inspect", "vit-q/16", check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "unknown model size 'q'" in proc.stderr


def test_bench_report_times_the_report_over_synthetic_records():
    out = cli("bench", "report", "--records", "200")
    assert "report over 200 records:" in out.stdout and "target < 5 s" in out.stdout
