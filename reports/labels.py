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


_FLOP_UNITS = ("FLOPs", "kFLOPs", "MFLOPs", "GFLOPs", "TFLOPs", "PFLOPs", "EFLOPs")
#: How :func:`fmt_flops` names amounts: SI prefixes, powers of 1000.
FLOP_UNITS_NOTE = "FLOP amounts in SI units: 1 TFLOPs = 10¹² FLOPs, 1 EFLOPs = 10¹⁸ FLOPs"


def fmt_flops(flops: float | None, digits: int = 3) -> str:
    """An amount of FLOPs in the unit its magnitude calls for (SI prefixes, powers of 1000,
    :data:`FLOP_UNITS_NOTE`), ``digits`` significant digits: 1.023e12 -> '1.02 TFLOPs';
    from EFLOPs up, EFLOPs with thousands grouped ('1,000 EFLOPs'); 1e9 -> '1 GFLOPs'."""
    if flops is None or flops != flops:
        return "-"
    if flops == 0:
        return "0 FLOPs"
    power = min(max(int(math.floor(math.log10(abs(flops)) / 3)), 0), len(_FLOP_UNITS) - 1)
    value = flops / 1000**power
    value = float(f"{value:.{digits}g}")  # 999.6 GFLOPs rounds to 1000: one unit up
    if abs(value) >= 1000 and power < len(_FLOP_UNITS) - 1:
        power, value = power + 1, value / 1000
    text = f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.{digits}g}"
    return f"{text} {_FLOP_UNITS[power]}"


def fmt_exaflops(exaflops: float | None) -> str:
    """Training compute recorded in exaFLOPs (``train_exaflops``), in :func:`fmt_flops` units."""
    return "-" if exaflops is None or exaflops != exaflops else fmt_flops(exaflops * 1e18)


def fmt_value_error(value: Any, error: Any, digits: int = 2) -> str:
    """A value and its error to the same decimal place, the error to ``digits`` significant
    digits: (0.746, 0.04596) -> '0.746 ± 0.046'; (12345, 678) -> '12,350 ± 680'; outside
    1e-3..1e6, one power of ten for both: '(1.235 ± 0.034)×10⁻⁵'."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if error is None or (isinstance(error, float) and math.isnan(error)) or error == 0:
        return fmt(value)
    value, error = float(value), abs(float(error))
    scale = max(abs(value), error)
    exponent = 0
    if scale >= 1e6 or scale < 1e-3:
        exponent = int(math.floor(math.log10(scale)))
        value, error = value / 10**exponent, error / 10**exponent
    error = float(f"{error:.{digits}g}")  # 0.00999999 is 0.010, not 0.0100
    place = int(math.floor(math.log10(error))) - (digits - 1)  # last digit kept, as a power
    decimals = max(-place, 0)
    if place > 0:  # half up, not to even: 12345 -> 12,350
        value, error = (math.floor(v / 10**place + 0.5) * 10**place for v in (value, error))
    text = f"{value:,.{decimals}f} ± {error:,.{decimals}f}"
    if exponent:
        sup = str(exponent).translate(str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹"))
        return f"({text})×10{sup}"
    return text


def fmt_mean_std(mean: Any, std: Any) -> str:
    """A mean and its standard deviation (:func:`fmt_value_error`)."""
    return fmt_value_error(mean, std)


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
    if row.get("moe_layers") and row["moe_layers"] != "none" and row.get("router") != "dense":
        parts.append(str(row["moe_layers"]))  # a dense model has no MoE layers to place
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
