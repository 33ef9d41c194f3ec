"""Helpers shared by the test modules (importable everywhere: pytest's pythonpath has tests/)."""

import os
import subprocess
import sys
from pathlib import Path


def cli(*args, check: bool = True, timeout: float = 900) -> subprocess.CompletedProcess:
    """``moe-harness ARGS`` in a fresh Python process (arguments may be paths or numbers);
    with ``check``, a non-zero exit fails the test with both output streams."""
    proc = subprocess.run([sys.executable, "-m", "harness.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def processes_with(*needles: str) -> list[int]:
    """PIDs of the processes (this one aside) whose command line contains every needle."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            try:
                cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if all(needle in cmd for needle in needles):
                pids.append(int(proc.name))
    return pids
