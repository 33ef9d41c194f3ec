"""The environment is the locked one: every package of requirements.lock installed at exactly
its version (``make setup`` installs from the lock). Under CI (a fresh clone, a fresh venv)
nothing else is installed either, except torch, the project and pip's own tools."""

import os
import re
from importlib.metadata import distributions
from pathlib import Path

LOCK = Path(__file__).resolve().parents[1] / "requirements.lock"
UNLOCKED = {"torch", "moe-harness", "pip", "setuptools", "wheel"}


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def locked() -> dict[str, str]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep, f"requirements.lock: {line!r} is not NAME==VERSION"
            pins[normalise(name)] = version
    return pins


def installed() -> dict[str, str]:
    return {normalise(d.metadata["Name"]): d.version for d in distributions()}


def test_the_lock_pins_everything_but_torch_and_the_project():
    pins = locked()
    assert pins and not {"torch", "moe-harness"} & set(pins)
    for name in ("typer", "polars", "optuna", "fvcore", "submitit", "pytest"):
        assert name in pins


def test_installed_versions_equal_the_lock():
    pins, have = locked(), installed()
    wrong = {n: (v, have.get(n)) for n, v in pins.items() if have.get(n) != v}
    assert not wrong, f"installed differs from requirements.lock (locked, installed): {wrong}"
    if os.environ.get("CI"):
        extra = sorted(set(have) - set(pins) - UNLOCKED)
        assert not extra, f"installed but not in requirements.lock: {extra}"
