"""Expert capacity: one rounding rule for every router. Plain Python (no torch), so that the
closed-form counts (``harness.cost``, ``harness.flops``, ``harness.estimate``) load fast."""

from __future__ import annotations

import math

from harness.errors import ConfigError


def compute_capacity(group_tokens: int, num_experts: int, capacity_factor: float) -> int:
    """Buffer size per expert and group: ceil(capacity_factor * group_tokens / num_experts).

    One rounding rule for every router, so that Tokens Choice (capacity_factor = k * C) and
    Experts Choice (capacity_factor = c) with the same factor get the same buffers. At least
    1, at most ``group_tokens`` (an expert never holds a token twice from one group).
    """
    if capacity_factor <= 0:
        raise ConfigError(f"capacity_factor must be > 0, got {capacity_factor}")
    capacity = math.ceil(capacity_factor * group_tokens / num_experts - 1e-9)
    return max(1, min(group_tokens, capacity))
