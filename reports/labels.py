"""How the page names things for people: numbers, configurations and routers (plain text,
unescaped; the page escapes it for HTML, ``reports.figures.common.ptext`` for plotly), and the
router groups the analyses compare, read from the router registry."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from harness.spec import routers
from harness.spec.routers import ROUTERS

SOFT_ROUTERS = routers.names("soft")  # Soft MoE and its fixed-routing ablations
SPARSE_ROUTERS = routers.names("sparse")


def fmt(value: Any) -> str:
    """A number (or text) for people: 4 significant digits, thousands grouped, '-' for null."""
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        if value != 0 and (abs(value) >= 1e6 or abs(value) < 1e-3):
            return f"{value:.3e}"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.4g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    if isinstance(value, list):
        return ", ".join(fmt(v) for v in value)
    return str(value)


def fmt_mean_std(mean: Any, std: Any) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "-"
    if std is None or (isinstance(std, float) and math.isnan(std)):
        return fmt(mean)
    return f"{fmt(mean)} ± {fmt(std)}"


def short(value: Any) -> str:
    """A spec value as a short label: 16, 0.5, 2."""
    if value is None:
        return "-"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return f"{value:g}" if isinstance(value, float) else str(value)


def router_name(router: str | None) -> str:
    """The router's label in ``harness.spec.routers`` (its name if it is not registered)."""
    return ROUTERS[router].label if router in ROUTERS else str(router)


def sorted_routers(values: Sequence[str | None]) -> list[str | None]:
    """Routers in the page's fixed order (registered ones first, as registered), each once."""
    order = list(ROUTERS)
    unique = list(dict.fromkeys(values))
    return sorted(unique, key=lambda r: (order.index(r) if r in order else len(order), str(r)))


def config_label(row: dict[str, Any]) -> str:
    """Short name of a configuration (unescaped): ``vit-s/16 Soft MoE E=32 p=1 last_half``."""
    parts = [str(row.get("model")), router_name(row.get("router"))]
    for key, short in (("num_experts", "E"), ("slots_per_expert", "p"), ("k", "k"),
                       ("capacity_factor", "C")):
        if row.get(key) is not None:
            parts.append(f"{short}={fmt(row[key])}")
    if row.get("moe_layers"):
        parts.append(str(row["moe_layers"]))
    return " ".join(parts)
