"""Set-up for the report tests: Debian chromium for the browser test.

``chromium_executable`` (session) returns /usr/bin/chromium, installing the Debian package
(``tests/provision.sh``) first when it is missing and we are root (about 25 s). Without root,
or without playwright, the browser tests are skipped with the reason; a failed install as root fails
them, so that CI never passes by silently not looking at the page.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import provision

CHROMIUM = Path("/usr/bin/chromium")
#: Flags that work in containers without a GPU, a sandbox or a network.
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
#: Screenshots and pages the browser test leaves for people and CI artifacts (git-ignored).
TEST_OUTPUT = Path(__file__).resolve().parents[2] / "test-output" / "reports"


@pytest.fixture(scope="session")
def chromium_executable() -> str:
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip "
                        "install -e '.[dev]')")
    if CHROMIUM.exists():
        return str(CHROMIUM)
    reason = provision("chromium")
    if reason:
        pytest.skip(f"{CHROMIUM} is missing: {reason}")
    if not CHROMIUM.exists():
        pytest.fail(f"the chromium package is installed but {CHROMIUM} is missing")
    return str(CHROMIUM)


@pytest.fixture(scope="session")
def chromium_launch(chromium_executable) -> dict:
    """Keyword arguments for playwright's ``chromium.launch``: Debian chromium, offline flags."""
    return {"executable_path": chromium_executable, "args": list(CHROMIUM_ARGS)}


@pytest.fixture(scope="session")
def test_output_dir() -> Path:
    TEST_OUTPUT.mkdir(parents=True, exist_ok=True)
    return TEST_OUTPUT
