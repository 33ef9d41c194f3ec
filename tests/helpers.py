"""Helpers shared by the test modules (importable everywhere: pytest's pythonpath has tests/)."""

import subprocess
import sys


def cli(*args, check: bool = True, timeout: float = 900) -> subprocess.CompletedProcess:
    """``moe-harness ARGS`` in a fresh Python process (arguments may be paths or numbers);
    with ``check``, a non-zero exit fails the test with both output streams."""
    proc = subprocess.run([sys.executable, "-m", "harness.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc
