"""Helpers shared by the test modules (importable everywhere: pytest's pythonpath has tests/)."""

import os
import socket
import subprocess
import sys
from pathlib import Path

from harness.spec import routers


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


PROVISION = Path(__file__).resolve().parent / "provision.sh"


def provision(*components: str) -> str | None:
    """Install the Debian packages of ``components`` where missing (``tests/provision.sh``).
    None when they are there; the reason when they cannot be installed here (not root, no
    apt-get), for the caller to skip (or fail under CI); a failed apt-get fails the test."""
    import pytest

    proc = subprocess.run(["bash", str(PROVISION), *components], capture_output=True,
                          text=True, timeout=1800, stdin=subprocess.DEVNULL)
    if proc.returncode == 3:
        return proc.stderr.strip().splitlines()[-1].removeprefix("provision: ")
    if proc.returncode != 0:
        pytest.fail(f"tests/provision.sh {' '.join(components)} failed ({proc.returncode}):\n"
                    f"{proc.stderr[-3000:]}", pytrace=False)
    return None


def in_memory(data) -> bool:
    """Whether both sets of ``harness.data.load_data``'s result are held as tensors."""
    from harness.data.datasets import InMemoryImages

    return isinstance(data.train, InMemoryImages) and isinstance(data.test, InMemoryImages)


def free_ports(n: int) -> tuple[int, ...]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return tuple(s.getsockname()[1] for s in sockets)
    finally:
        for s in sockets:
            s.close()


def make_mlp(router: str, dim: int, hidden_dim: int, *, gelu: str = "erf",
             group_size: int | None = None, **fields):
    """One MLP block of ``router`` with ``fields`` (resolved as a ModelConfig resolves them),
    built by its registry entry: the layer tests' shorthand."""
    return routers.resolve(router, group_size, **fields).build(dim, hidden_dim, gelu=gelu)
