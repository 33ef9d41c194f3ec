"""Fixtures shared by several test modules."""

import pytest
from fixtures.browser import chromium_executable, chromium_launch, test_output_dir  # noqa: F401
from fixtures.postgres import pg_url, postgres  # noqa: F401


@pytest.fixture(scope="module")
def small():
    """A small Soft MoE ViT (4 experts, 16 px) and its config, seeded: one per test module."""
    import torch

    from harness.nn.vit import build
    from harness.spec.model import parse_model_spec

    cfg = parse_model_spec("vit-w32d2h2m64/8@16:soft:e4", num_classes=5)
    torch.manual_seed(0)
    return cfg, build(cfg)
