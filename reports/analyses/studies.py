"""Two studies compared: the configurations both ran, and how every quality and cost changed.

A configuration is the run spec apart from its seed: records match on their ``spec_json``
(the canonical spec: everything but the study name, the trackers and the layout) without
``seed``, or, when a side has records without one, on the flat spec columns
(:data:`reports.metrics.SPEC_KEYS`) without ``study`` and ``seed``. For each matched
configuration and each quality and cost metric both sides measured, the change ``B - A`` of
the means over seeds gets the t interval of :func:`reports.analyses.noise.difference` (each side's
seed variance the larger of its own and the two studies' pooled one). A change whose interval
excludes 0 is **flagged**: it is larger than the seed noise. Everything returned is plain
JSON data; :func:`compare_text` renders it for a terminal.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import polars as pl

from reports.analyses.noise import CONFIDENCE, difference, pooled
from reports.metrics import METRICS, QUALITY_AXES, SEED_KEY, SPEC_KEYS, label

KINDS = ("quality", "cost")
#: Spec columns that tell two configurations of one model spec apart in a label.
KNOBS = ("lr", "steps", "batch_size", "weight_decay", "aux_loss_weight", "warmup_steps", "data",
         "pool", "attention", "gelu", "group_size", "capacity_rounding", "router_noise")
FRONT_COSTS = ("train_exaflops", "gflops_per_image", "params_total")
NOTHING = "nothing matches"


def _records(runs: pl.DataFrame | Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    rows = runs.to_dicts() if isinstance(runs, pl.DataFrame) else [dict(r) for r in runs]
    return [r for r in rows if r.get("status") == "ok"]


def _drop(tree: dict[str, Any], path: str) -> None:
    head, _, rest = path.partition(".")
    if rest and isinstance(tree.get(head), dict):
        _drop(tree[head], rest)
    else:
        tree.pop(head, None)


def config_key(record: Mapping[str, Any], use_json: bool = True,
               ignore: Sequence[str] = ()) -> str:
    """The record's configuration: its spec without the seed (``ignore``: more dotted paths,
    e.g. ``measure`` or ``train.eval_every``), as sorted JSON."""
    if use_json and record.get("spec_json"):
        spec = json.loads(record["spec_json"])
    else:
        spec = {k: record.get(k) for k in SPEC_KEYS if k != "study"}
    for path in (SEED_KEY, *ignore):
        _drop(spec, path)
    return json.dumps(spec, sort_keys=True, default=str)


def _groups(records: list[dict], use_json: bool, ignore) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in records:
        out.setdefault(config_key(r, use_json, ignore), []).append(r)
    return out


def _values(runs: list[dict], metric: str) -> list[float]:
    out = []
    for r in runs:
        try:
            v = float(r.get(metric))
        except (TypeError, ValueError):
            continue
        if math.isfinite(v):
            out.append(v)
    return out


def _stats(values: list[float]) -> tuple[float, float | None, int]:
    return (statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None,
            len(values))


def _labels(keys: list[str], groups: dict[str, list[dict]]) -> dict[str, str]:
    first = {k: groups[k][0] for k in keys}
    varying = [k for k in KNOBS if len({str(r.get(k)) for r in first.values()}) > 1]
    out: dict[str, str] = {}
    for k, r in first.items():
        text = str(r.get("spec") or r.get("model") or "configuration")
        if varying:
            text += " (" + ", ".join(f"{v}={r.get(v)}" for v in varying) + ")"
        out[k] = text
    seen: dict[str, int] = {}
    for k in keys:  # configurations that differ elsewhere (data seed, measure, ...)
        seen[out[k]] = seen.get(out[k], 0) + 1
        if seen[out[k]] > 1:
            out[k] += f" #{seen[out[k]]}"
    return out


def _metrics(groups_a, groups_b, keys, metrics) -> list[str]:
    if metrics is not None:
        return list(metrics)
    return [m for m, info in METRICS.items() if info.kind in KINDS and any(
        _values(groups_a[k], m) and _values(groups_b[k], m) for k in keys)]


def _num(v: float | None) -> float | None:
    return float(v) if v is not None and math.isfinite(v) else None


def compare(records_a: pl.DataFrame | Iterable[Mapping[str, Any]],
            records_b: pl.DataFrame | Iterable[Mapping[str, Any]], *,
            names: tuple[str, str] = ("A", "B"), metrics: Sequence[str] | None = None,
            ignore: Sequence[str] = ()) -> dict[str, Any]:
    """Study B against study A (records or frames of records; ok runs only): the matched
    configurations, each metric's change with its interval and flag, the flagged changes, a
    summary line and both studies' Pareto fronts (see the module note). JSON-serialisable."""
    a, b = _records(records_a), _records(records_b)
    use_json = all(r.get("spec_json") for r in a + b)
    groups_a, groups_b = _groups(a, use_json, ignore), _groups(b, use_json, ignore)
    keys = sorted(set(groups_a) & set(groups_b))
    labels = _labels(keys, {**groups_b, **groups_a})
    out: dict[str, Any] = {
        "names": {"a": names[0], "b": names[1]}, "matched": len(keys),
        "only_a": len(set(groups_a) - set(groups_b)),
        "only_b": len(set(groups_b) - set(groups_a)), "confidence": CONFIDENCE,
        "matched_on": "spec_json without the seed" if use_json else
                      "the flat spec columns without study and seed",
        "ignored": list(ignore), "metrics": [], "rows": [], "flagged": [],
        "fronts": fronts(groups_a, groups_b, names)}
    if not keys:
        out["note"] = (f"{NOTHING}: {names[0]}'s {len(groups_a)} configurations and "
                       f"{names[1]}'s {len(groups_b)} share none (same spec apart from the seed)")
        out["summary"] = out["note"]
        return out
    chosen = _metrics(groups_a, groups_b, keys, metrics)
    spreads = {m: pooled(*_spread_inputs([*groups_a.values(), *groups_b.values()], m))
               for m in chosen}
    for key in sorted(keys, key=lambda k: labels[k]):
        row: dict[str, Any] = {"config": labels[key], "seeds_a": len(groups_a[key]),
                               "seeds_b": len(groups_b[key]), "changes": {}}
        for m in chosen:
            va, vb = _values(groups_a[key], m), _values(groups_b[key], m)
            if not va or not vb:
                continue
            change = _change(va, vb, spreads[m])
            row["changes"][m] = change
            if change["flagged"]:
                out["flagged"].append({"config": labels[key], "metric": m, **change})
        out["rows"].append(row)
    out["metrics"] = chosen
    out["note"] = None
    out["summary"] = (f"{len(keys)} configurations in both ({out['only_a']} only in "
                      f"{names[0]}, {out['only_b']} only in {names[1]}); "
                      f"{len(out['flagged'])} changes beyond the seed noise "
                      f"({CONFIDENCE:.0%} intervals) over {len(chosen)} metrics")
    return out


def _spread_inputs(groups: list[list[dict]], metric: str) -> tuple[list, list]:
    stds, counts = [], []
    for runs in groups:
        values = _values(runs, metric)
        if len(values) > 1:
            stds.append(statistics.stdev(values))
            counts.append(len(values))
    return stds, counts


def _change(va: list[float], vb: list[float], spread) -> dict[str, Any]:
    mean_a, std_a, n_a = _stats(va)
    mean_b, std_b, n_b = _stats(vb)
    margin = difference(mean_b, std_b, n_b, mean_a, std_a, n_a, spread)
    scale = max(abs(mean_a), abs(mean_b))
    flagged = bool(margin.known and abs(margin.value) > 1e-12 * scale
                   and (margin.lo > 0 or margin.hi < 0))
    return {"a": mean_a, "b": mean_b, "change": margin.value,
            "relative": margin.value / abs(mean_a) if mean_a else None,
            "interval": [_num(margin.lo), _num(margin.hi)] if margin.known else None,
            "flagged": flagged, "text": margin.text()}


def _front(groups: dict[str, list[dict]], cost: str, quality: str) -> list[dict[str, Any]]:
    higher = not METRICS[quality].lower_is_better
    points = []
    for key, label_ in _labels(list(groups), groups).items():
        c, q = _values(groups[key], cost), _values(groups[key], quality)
        if c and q:
            points.append({"config": label_, "cost": statistics.fmean(c),
                           "quality": statistics.fmean(q)})
    points.sort(key=lambda p: (p["cost"], -p["quality"] if higher else p["quality"]))
    front, best = [], -math.inf
    for p in points:
        score = p["quality"] if higher else -p["quality"]
        if score > best:
            front.append(p)
            best = score
    return front


def fronts(groups_a: dict[str, list[dict]], groups_b: dict[str, list[dict]],
           names: tuple[str, str]) -> dict[str, Any] | None:
    """Each study's Pareto front (means over seeds; every configuration, matched or not) on
    the first cost of :data:`FRONT_COSTS` and quality of ``QUALITY_AXES`` both measured."""
    def measured(metric):
        return all(any(_values(runs, metric) for runs in g.values()) for g in (groups_a,
                                                                               groups_b))

    cost = next((c for c in FRONT_COSTS if measured(c)), None)
    quality = next((q for q in QUALITY_AXES if measured(q)), None)
    if cost is None or quality is None:
        return None
    return {"cost": cost, "quality": quality, "cost_label": label(cost),
            "quality_label": label(quality), "names": list(names),
            "a": _front(groups_a, cost, quality), "b": _front(groups_b, cost, quality)}


def compare_text(data: Mapping[str, Any], limit: int = 20) -> str:
    """``moe-harness compare A B``: the summary line, then up to ``limit`` flagged changes,
    largest relative change first (one line each)."""
    lines = [data["summary"]]
    flagged = sorted(data["flagged"], key=lambda f: -abs(f["relative"] or 0.0))
    for f in flagged[:limit]:
        rel = f" ({f['relative']:+.1%})" if f["relative"] is not None else ""
        lines.append(f"  {f['config']}: {label(f['metric'])} {f['a']:.4g} -> {f['b']:.4g}, "
                     f"change {f['text']}{rel}")
    if len(flagged) > limit:
        lines.append(f"  ... and {len(flagged) - limit} more (--json has all)")
    return "\n".join(lines)


__all__ = ["NOTHING", "compare", "compare_text", "config_key", "fronts"]
