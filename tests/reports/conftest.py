"""Set-up for the report tests: Debian chromium for the browser test.

``chromium_executable`` (session) returns /usr/bin/chromium, installing the Debian package
with apt-get first when it is missing and we are root (about 25 s). Without root, or without
playwright, the browser tests are skipped with the reason; a failed install as root fails
them, so that CI never passes by silently not looking at the page.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
#: Flags that work in containers without a GPU, a sandbox or a network.
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
#: Screenshots and pages the browser test leaves for people and CI artifacts (git-ignored).
TEST_OUTPUT = Path(__file__).resolve().parents[2] / "test-output" / "reports"


def _apt_get(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    return subprocess.run(
        ["apt-get", "-q", "-o", "DPkg::Lock::Timeout=300", *args],
        capture_output=True, text=True, env=env, timeout=900,
    )


@pytest.fixture(scope="session")
def chromium_executable() -> str:
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip "
                        "install -e '.[dev]')")
    if CHROMIUM.exists():
        return str(CHROMIUM)
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip(f"{CHROMIUM} is missing and installing it needs root: "
                    "apt-get install chromium")
    if shutil.which("apt-get") is None:
        pytest.skip(f"{CHROMIUM} is missing and there is no apt-get to install it")
    result = _apt_get("install", "-y", "chromium")
    if result.returncode != 0:  # stale package lists: refresh once and retry
        _apt_get("update")
        result = _apt_get("install", "-y", "chromium")
    if result.returncode != 0 or not CHROMIUM.exists():
        pytest.fail(f"apt-get install chromium failed ({result.returncode}):\n"
                    f"{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return str(CHROMIUM)


@pytest.fixture(scope="session")
def chromium_launch(chromium_executable) -> dict:
    """Keyword arguments for playwright's ``chromium.launch``: Debian chromium, offline flags."""
    return {"executable_path": chromium_executable, "args": list(CHROMIUM_ARGS)}


@pytest.fixture(scope="session")
def test_output_dir() -> Path:
    TEST_OUTPUT.mkdir(parents=True, exist_ok=True)
    return TEST_OUTPUT
