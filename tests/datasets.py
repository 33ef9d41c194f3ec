"""Debian's dataset-fashion-mnist for the tests that read the real Fashion-MNIST.

``fashion_mnist_dir()`` returns its folder, installing the package (``tests/provision.sh``)
first when it is missing and we are root (about 10 s). Without root the caller skips with the
reason; under ``CI=true`` it fails instead, so that CI never passes by not looking at the real data.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import provision

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
PACKAGE = "dataset-fashion-mnist"


def _unavailable(reason: str):
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: the real-data tests must run)")
    pytest.skip(reason)


def fashion_mnist_dir() -> Path:
    if (FASHION_MNIST / "t10k-labels-idx1-ubyte.gz").is_file():
        return FASHION_MNIST
    reason = provision("fashion-mnist")
    if reason:
        _unavailable(f"{FASHION_MNIST} is missing: {reason}")
    if not FASHION_MNIST.is_dir():
        pytest.fail(f"the {PACKAGE} package is installed but {FASHION_MNIST} is missing")
    return FASHION_MNIST
