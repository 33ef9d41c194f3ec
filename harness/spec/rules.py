"""The MoE layers' rules that configurations check before any layer exists: GELU forms and
expert capacity. Plain Python (no torch), so that the closed-form counts (``inspect``,
``run --dry-run``, study validation) load fast; the layers import them from here."""

from __future__ import annotations

import math
import re
from fractions import Fraction

from harness.errors import ConfigError

#: GELU forms: ``erf`` (exact; PyTorch's default) or ``tanh`` (the tanh approximation,
#: flax's default and so what the paper's models use), as torch's ``approximate`` argument.
GELUS = {"erf": "none", "tanh": "tanh"}


def check_gelu(gelu: str) -> str:
    if gelu not in GELUS:
        raise ConfigError(f"gelu must be one of {', '.join(GELUS)}, got {gelu!r}")
    return gelu


#: Capacity rules: ``ceil`` or ``round`` (half to even) of c·S·K/E, then, with a number
#: after it, up to a multiple of that number (``ceil4``: vmoe's default for its sparse routers).
CAPACITY_RULE = re.compile(r"(ceil|round)([1-9]\d*)?")
CAPACITY_RULE_HELP = "'ceil', 'round', or either followed by a multiple, e.g. 'ceil4'"


def check_capacity_rule(rule: str) -> str:
    if not isinstance(rule, str) or not CAPACITY_RULE.fullmatch(rule):
        raise ConfigError(f"capacity_rounding must be {CAPACITY_RULE_HELP}, got {rule!r}")
    return rule


def compute_capacity(group_tokens: int, num_experts: int, capacity_factor: float,
                     rounding: str = "ceil", k: int = 1) -> int:
    """Buffer rows per expert and group: ``rounding`` applied to c·S·K/E.

    Exact arithmetic: the factor is taken as the decimal it prints as (1.1 is 11/10, not the
    binary float just above it), so the rule, not float error, decides at integers
    (50 tokens, 5 experts, c = 1.1: exactly 11). One rule for every router, so that Tokens
    Choice (K choices, factor c) and Experts Choice (factor c·K) with the same product get
    the same buffers. At least 1; at most ``group_tokens`` (an expert never holds a token
    twice from one group), also after rounding up to a multiple.
    """
    if capacity_factor <= 0:
        raise ConfigError(f"capacity_factor must be > 0, got {capacity_factor}")
    kind, multiple = CAPACITY_RULE.fullmatch(check_capacity_rule(rounding)).groups()
    group_tokens = int(group_tokens)  # a traced size (fvcore's jit trace) is a tensor
    exact = Fraction(repr(float(capacity_factor))) * group_tokens * k / num_experts
    capacity = max(1, math.ceil(exact) if kind == "ceil" else round(exact))
    if multiple:
        capacity += -capacity % int(multiple)
    return min(group_tokens, capacity)


BACKENDS = ("auto", "sdpa", "xformers", "math")


def check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ConfigError(f"attention: unknown backend {backend!r}; allowed: {', '.join(BACKENDS)}")
