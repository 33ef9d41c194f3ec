"""Debian's dataset-fashion-mnist for the tests that read the real Fashion-MNIST.

``fashion_mnist_dir()`` returns its folder, installing the package with apt-get first when it
is missing and we are root (about 10 s). Without root the caller skips with the reason; under
``CI=true`` it fails instead, so that CI never passes by not looking at the real data.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
PACKAGE = "dataset-fashion-mnist"


def _unavailable(reason: str):
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: the real-data tests must run)")
    pytest.skip(reason)


def _apt_get(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    return subprocess.run(["apt-get", "-q", "-o", "DPkg::Lock::Timeout=300", *args],
                          capture_output=True, text=True, env=env, timeout=900)


def fashion_mnist_dir() -> Path:
    if (FASHION_MNIST / "t10k-labels-idx1-ubyte.gz").is_file():
        return FASHION_MNIST
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        _unavailable(f"{FASHION_MNIST} is missing and installing it needs root: "
                     f"apt-get install {PACKAGE}")
    if shutil.which("apt-get") is None:
        _unavailable(f"{FASHION_MNIST} is missing and there is no apt-get to install it")
    result = _apt_get("install", "-y", PACKAGE)
    if result.returncode != 0:  # stale or missing package lists: refresh once and retry
        _apt_get("update")
        result = _apt_get("install", "-y", PACKAGE)
    if result.returncode != 0 or not FASHION_MNIST.is_dir():
        pytest.fail(f"apt-get install {PACKAGE} failed ({result.returncode}):\n"
                    f"{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return FASHION_MNIST
