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


def runs_words(frame: Any) -> str:
    """What the records ran on, in words read from them (never assumed): the models, the
    data (its folder's name for a dataset read from a path), the steps and the devices, e.g.
    'vit-w64d4h4m256/7 on fashion-mnist, 400 steps, on cpu'. ``frame``: the records' frame."""
    import json

    def values(col: str) -> list[Any]:
        return sorted({v for v in frame[col].to_list() if v is not None}, key=str) \
            if col in frame.columns else []

    data = []
    for name, spec in zip(frame["data"].to_list() if "data" in frame.columns else [],
                          frame["spec_json"].to_list() if "spec_json" in frame.columns
                          else [None] * frame.height, strict=False):
        path = None
        if isinstance(spec, str):
            try:
                path = (json.loads(spec).get("data") or {}).get("path")
            except (ValueError, AttributeError):
                path = None
        if name is not None:
            data.append(f"{name} data" if name == "synthetic" else
                        str(path).rstrip("/").rsplit("/", 1)[-1] if path else str(name))
    models, steps = values("model"), values("steps")
    devices = sorted({str(d).split(" (")[0] for d in values("device_type") or values("device")})
    parts = [", ".join(models) or "these models",
             f"on {', '.join(sorted(set(data)))}" if data else "on data the records do not name"]
    if steps:
        parts.append(f"{'-'.join(fmt(s) for s in (steps[0], steps[-1]) if s is not None)} steps"
                     if len(steps) > 1 else f"{fmt(steps[0])} steps")
    if devices:
        parts.append(f"on {', '.join(devices)}")
    return " ".join(parts[:2]) + "".join(f", {p}" for p in parts[2:])


def is_synthetic(frame: Any) -> bool:
    """Whether every record with a data name ran on the synthetic task."""
    names = {v for v in frame["data"].to_list() if v is not None} if "data" in frame.columns \
        else set()
    return names == {"synthetic"}
