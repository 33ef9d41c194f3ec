"""The ``moe-harness`` command, one module per group of commands: ``study`` (run, status,
cancel, report, plan, export), ``tune``, ``bench``, ``data`` and ``tools`` (inspect, doctor,
schema); ``root`` joins them and turns every failure into one line. A command parses its
arguments, calls the service that does the work and prints; heavy modules (torch, plotly,
optuna, polars) load inside the commands, so ``moe-harness --help`` stays instant. Nothing
imports this package but the console script and the tests."""

from harness.cli.root import app, main, run_cli

__all__ = ["app", "main", "run_cli"]
