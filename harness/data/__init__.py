"""Datasets (synthetic, digits, image folders, CIFAR-10, IDX files, prepared shards) and the
input pipeline. :func:`load_data` is the one entry point; a new dataset is a loader in
``datasets.py`` (or its own module) named in ``DataConfig.name`` and in ``LOADERS``.
"""

from __future__ import annotations

from harness.data.datasets import LOADERS, Datasets, check_not_empty
from harness.data.prepared import load_prepared
from harness.errors import HarnessError
from harness.spec.config import DataConfig


def load_data(cfg: DataConfig) -> Datasets:
    """The train and test sets that ``cfg`` names (see the module docstring)."""
    if cfg.name == "prepared":
        return check_not_empty(load_prepared(cfg), cfg)
    if cfg.augment != "none" and cfg.name not in ("imagefolder", "prepared"):
        raise HarnessError(f"data.augment: {cfg.augment} applies to imagefolder and prepared "
                           f"(decoded per image); {cfg.name} is held in memory, use 'none'")
    return check_not_empty(LOADERS[cfg.name](cfg), cfg)
