"""The README's GPU performance targets, read from the files tests/gpu/run.sh writes.

Targets, not tests: each line says the measured value, the goal, and whether it was met.
Usage: python tests/gpu/targets.py GPU_OUT
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _load(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def targets(folder: Path) -> list[str]:
    lines = []
    train, layers = _load(folder / "train.json"), _load(folder / "layers.json")

    def report(name, value, goal, met, how):
        if value is None:
            lines.append(f"{name}: not measured ({how})")
        else:
            lines.append(f"{name}: {value} (goal {goal}): {'met' if met else 'NOT met'}; {how}")

    row = next((r for r in (layers or {}).get("rows", [])
                if r["kind"] == "soft" and r["experts"] == 128 and r["slots_per_expert"] == 1),
               None)
    speedup = row.get("speedup_fwd_bwd_median") if row else None
    report("Soft MoE layer fwd+bwd vs soft-moe-pytorch, 128 experts, bf16",
           speedup and f"x{speedup:.2f}", ">= x3", speedup is not None and speedup >= 3,
           "bench layers, median of interleaved pairs" if row else "layers.json has no such row "
           "(is soft-moe-pytorch installed?)")
    rows = {r["spec"]: r for r in (train or {}).get("rows", [])}
    dense, soft = rows.get("vit-s/16"), rows.get("vit-s/16:soft:e128:s1")
    mfu = dense.get("mfu") if dense else None
    device = (train or {}).get("machine", {}).get("device", "?")
    report("dense ViT-S/16 training MFU", mfu and f"{100 * mfu:.1f}%", ">= 40%",
           mfu is not None and mfu >= 0.4, f"bench train on {device}, batch "
           f"{dense['batch_size'] if dense else '?'}, bf16")
    ratio = soft["step_ms"] / dense["step_ms"] if soft and dense else None
    report("Soft MoE S/16 128E step / dense S/16 step", ratio and f"x{ratio:.2f}", "<= x1.3",
           ratio is not None and ratio <= 1.3, "bench train, same batch and precision")
    return lines


if __name__ == "__main__":
    print("\n".join(targets(Path(sys.argv[1] if len(sys.argv) > 1 else "results/gpu"))))
