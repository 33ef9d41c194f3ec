"""Synthetic records shaped like the store's, for the report benchmark and the browser test.

The numbers are made up (plausible orders of magnitude, a little noise); they exercise every
part of the page (all routers, seeds, failures, divergences, nested histories) without
training anything. Never mix them with real results.
"""

from __future__ import annotations

import itertools
import json
import math
import random
from pathlib import Path
from typing import Any

_MODELS = {  # name: (width, depth, tokens, base accuracy)
    "vit-ti/16": (192, 12, 196, 0.55),
    "vit-s/16": (384, 12, 196, 0.62),
    "vit-b/16": (768, 12, 196, 0.68),
    "vit-w64d4h4m256/4": (64, 4, 16, 0.45),
}


def _configs(small: bool) -> list[dict[str, Any]]:
    models = list(_MODELS)[:2] if small else list(_MODELS)
    experts = (8, 32) if small else (4, 8, 16, 32, 64, 128, 256, 512)
    slots = (1, 2) if small else (1, 2, 4)
    layers = ("last_half",) if small else ("last_half", "last:2", "last:4")
    lrs = (1e-3,) if small else (1e-3, 3e-4, 1e-4)
    out: list[dict[str, Any]] = []
    for model, lr in itertools.product(models, lrs):
        base = {"model": model, "lr": lr, "num_experts": None, "slots_per_expert": None,
                "k": None, "capacity_factor": None, "moe_layers": None}
        out.append({**base, "router": "dense"})
        for e, placement in itertools.product(experts, layers):
            moe = {**base, "num_experts": e, "moe_layers": placement}
            out += [{**moe, "router": "soft", "slots_per_expert": p} for p in slots]
            out += [{**moe, "router": "tokens_choice", "k": k, "capacity_factor": cf}
                    for k in (1, 2) for cf in (1.0, 2.0)][: 1 if small else None]
            out += [{**moe, "router": "experts_choice", "capacity_factor": cf}
                    for cf in (1.0, 2.0)][: 1 if small else None]
    return out


def _measure(config: dict[str, Any], seed: int, rng: random.Random) -> dict[str, Any]:
    width, depth, tokens, acc0 = _MODELS[config["model"]]
    router, e = config["router"], config["num_experts"] or 1
    dense_params = 12 * width * width * depth + 1000 * width
    placement = config["moe_layers"] or ""
    moe_blocks = 0 if router == "dense" else (
        int(placement[5:]) if placement.startswith("last:") else depth // 2)
    mlp = 8 * width * width
    params_total = dense_params + moe_blocks * mlp * (e - 1)
    slots = (config["slots_per_expert"] or 1) * e if router == "soft" else tokens
    flop_scale = slots / tokens if router == "soft" else (config["k"] or 1)
    gflops = 2 * tokens * (dense_params + moe_blocks * mlp * (flop_scale - 1)) / 1e9
    gain = 0.0 if router == "dense" else 0.03 * math.log2(e) / 8
    gain *= {"soft": 1.2, "tokens_choice": 0.8, "experts_choice": 0.9}.get(router, 1.0)
    accuracy = min(0.99, acc0 + gain + rng.gauss(0, 0.004))
    step_ms = gflops * 3 * 128 / 50 * (1 + 0.02 * math.log2(e)) * rng.uniform(0.97, 1.03)
    record: dict[str, Any] = {
        "params_total": params_total,
        "params_active": dense_params,
        "gflops_per_image": gflops,
        "train_exaflops": 3 * gflops * 1e9 * 128 * 1000 / 1e18,
        "train_exaflops_paper": 1.5 * gflops * 1e9 * 128 * 1000 / 1e18,
        "train_step_ms": step_ms,
        "train_images_per_s": 128 / step_ms * 1000,
        "infer_images_per_s": 3 * 128 / step_ms * 1000,
        "infer_latency_ms": step_ms / 3,
        "peak_memory_mb": params_total * 16 / 2**20 + 200,
        "test_accuracy": accuracy,
        "test_loss": -math.log(max(accuracy, 1e-3)) + rng.gauss(0, 0.01),
        "fewshot_accuracy": accuracy - 0.1 + rng.gauss(0, 0.005),
        "router_dropped_fraction": None,
        "router_token_coverage": None,
        "router_slot_entropy": None,
        "router_expert_load_cv": None,
    }
    if router == "tokens_choice":
        dropped = 0.02 * math.log2(e) / config["capacity_factor"]
        record["router_dropped_fraction"] = min(0.5, dropped)
        record["router_expert_load_cv"] = 0.1 * math.log2(e)
    elif router == "experts_choice":
        record["router_token_coverage"] = max(0.5, 1 - 0.03 * math.log2(e))
    elif router == "soft":
        record["router_slot_entropy"] = 0.9 - 0.02 * math.log2(e) + rng.gauss(0, 0.01)
    record["history"] = [
        {"step": s, "train_loss": 2.5 * math.exp(-s / 300) + 0.1,
         "test_accuracy": accuracy * (1 - math.exp(-s / 200)) if s % 200 == 0 else None}
        for s in range(0, 1001, 100)
    ]
    return record


def synthetic_records(
    n: int = 10_000, *, seed: int = 0, seeds_per_config: int = 3, study: str = "synthetic",
    failure_rate: float = 0.03, small: bool = False,
) -> list[dict[str, Any]]:
    """``n`` records: configs x seeds, cycled, with failed and diverged runs mixed in.

    ``small=True`` uses a reduced grid (2 models, 2 expert counts), for fast tests.
    """
    rng = random.Random(seed)
    configs = _configs(small)
    records = []
    for i in range(n):
        config = configs[(i // seeds_per_config) % len(configs)]
        cycle = i // (seeds_per_config * len(configs))
        run_seed = i % seeds_per_config + seeds_per_config * cycle
        record: dict[str, Any] = {
            "study": study,
            "run_id": f"{rng.getrandbits(48):012x}",
            "status": "ok",
            "error": None,
            "diverged_step": None,
            **config,
            "seed": run_seed,
            "steps": 1000,
            "batch_size": 128,
            "data": "synthetic",
            "device": "cpu (synthetic)",
            "torch_version": "2.13.0+cpu",
            "attention_backend": "sdpa",
            "git_sha": "0000000",
            "hostname": "synthetic",
            "started_at": f"2026-01-01T00:{i // 60 % 60:02d}:{i % 60:02d}",
            "finished_at": f"2026-01-01T01:{i // 60 % 60:02d}:{i % 60:02d}",
        }
        draw = rng.random()
        if draw < failure_rate:
            record.update(status="failed", error=(
                "RuntimeError: out of memory while running <script>alert('x')</script>\n"
                "Traceback (most recent call last):\n  ..."))
        elif draw < failure_rate * 1.3:
            record.update(status="diverged", diverged_step=rng.randrange(10, 1000),
                          error="loss is NaN")
            record.update(_measure(config, run_seed, rng))
            record.update(test_accuracy=None, test_loss=None, fewshot_accuracy=None)
        else:
            record.update(_measure(config, run_seed, rng))
        records.append(record)
    return records


def write_store(records: list[dict[str, Any]], runs_dir: Path) -> Path:
    """Write records as a store would: one ``RUN_ID.json`` per record."""
    runs_dir.mkdir(parents=True, exist_ok=True)
    for record in records:
        (runs_dir / f"{record['run_id']}.json").write_text(json.dumps(record))
    return runs_dir
