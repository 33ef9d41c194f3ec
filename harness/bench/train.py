"""``moe-harness bench train``: training throughput and model-FLOPs utilisation (MFU).

For each model spec: the median time of one training step (forward and loss under the
chosen precision, backward, AdamW step at lr 0; ``harness.runtime.timing.time_train_step``, retimed
while the machine is disturbed), steps/s and images/s, the achieved training FLOP rate
(3 x forward FLOPs x batch per step, 2 FLOPs per multiply-add: the convention of the dry
run's GPU-hour estimate), and that rate as a share of a reference:

- on a GPU, the device's dense peak at the precision (``harness.cost.peaks``; ``--peak-tflops``
  for a device the table lacks): this share is the MFU, and the device's measured
  large-matmul rate is shown beside it;
- on a CPU, the machine's measured large-matmul rate in the same dtype, measured in the
  same run before and after the models (the median of the two): no datasheet describes a
  shared virtual CPU.

A saved result (``--out``) can feed a study's ``estimate.from_bench``.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from harness.cost.flops import CONVENTION
from harness.runtime.distributed import pick_device

#: Large-matmul shape (m, k, n) per device type and precision: big enough to reach the
#: device's rate. CPUs without bf16 matmul units run bf16 far slower than fp32 (0.3 against
#: 32 GFLOP/s per core on our CI's AMD EPYC), hence the smaller bf16 shape there.
MATMUL_SIZE = {("cuda", "bf16"): (8192, 8192, 8192), ("cuda", "fp32"): (8192, 8192, 8192),
               ("cpu", "fp32"): (4096, 1024, 1024), ("cpu", "bf16"): (1024, 512, 512)}
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' -> bf16 on GPU, fp32 on CPU (as training's autocast does)."""
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if precision not in DTYPES:
        from harness.errors import HarnessError

        raise HarnessError(f"--precision: {precision!r}; allowed: auto, bf16, fp32")
    return precision


def matmul_tflops(device: torch.device, precision: str, repeats: int = 5,
                  size: tuple[int, int, int] | None = None) -> float:
    """The device's measured rate on one large matmul in the precision's dtype."""
    from harness.runtime.timing import plain_matmul_gflops

    size = size or MATMUL_SIZE["cuda" if device.type == "cuda" else "cpu", precision]
    return plain_matmul_gflops(device, size, repeats=repeats, dtype=DTYPES[precision]) / 1e3


def bench_train(specs: Sequence[str], *, batch_size: int = 32, precision: str = "auto",
                device: str = "auto", repeats: int = 10, warmup: int = 3, rounds: int = 3,
                threads: int | None = None, counter: str = "analytic",
                num_classes: int = 1000, peak_tflops: float | None = None, seed: int = 0,
                matmul_size: tuple[int, int, int] | None = None,
                progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Time a training step of each spec (see the module doc). Returns ``{"machine": {...},
    "rows": [...]}``, every row flat; ``mfu`` is None where no peak is known (a CPU, unless
    ``peak_tflops`` is given, or a GPU the table lacks)."""
    from harness.cost import peaks
    from harness.runtime.timing import device_name, torch_threads

    dev = pick_device(device, "--device")
    precision = resolve_precision(precision, dev)
    say = progress or (lambda _msg: None)
    started = time.time()
    with torch_threads(threads) as used_threads:
        name = device_name(dev)
        machine: dict[str, Any] = {
            "device": name, "device_type": dev.type, "precision": precision,
            "threads": used_threads, "torch_version": torch.__version__,
            "flop_convention": CONVENTION, "batch_size": batch_size,
            "loadavg_before": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        }
        machine["tf32"] = dev.type == "cuda" and bool(torch.backends.cuda.matmul.allow_tf32)
        found = (peak_tflops, "given (--peak-tflops)") if peak_tflops else \
            peaks.peak_tflops(name, precision, machine["tf32"]) if dev.type == "cuda" else None
        machine["peak_tflops"], machine["peak_source"] = found or (None, None)
        machine["rounds"] = rounds
        before = matmul_tflops(dev, precision, size=matmul_size)
        say(f"{name}: large matmul {before:.3g} TFLOP/s ({precision})")
        rows = []
        for spec in specs:
            rows.append(_bench_one(spec, dev, precision, batch_size, repeats, warmup, rounds,
                                   counter, num_classes, seed))
            say(_progress_line(rows[-1]))
        after = matmul_tflops(dev, precision, size=matmul_size)
    machine["matmul_tflops_before"], machine["matmul_tflops_after"] = before, after
    machine["matmul_tflops"] = statistics.median([before, after])
    machine["reference_tflops"] = machine["peak_tflops"] or machine["matmul_tflops"]
    machine["reference"] = "peak" if machine["peak_tflops"] else "measured matmul"
    machine["loadavg_after"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    for row in rows:
        row["share_of_matmul"] = row["achieved_tflops"] / machine["matmul_tflops"]
        row["mfu"] = row["achieved_tflops"] / machine["peak_tflops"] \
            if machine["peak_tflops"] else None
        row["share_of_reference"] = row["achieved_tflops"] / machine["reference_tflops"]
        row["step_vs_first"] = row["step_ms"] / rows[0]["step_ms"]
    machine["seconds"] = time.time() - started
    return {"machine": machine, "rows": rows}


def _bench_one(spec: str, device: torch.device, precision: str, batch_size: int, repeats: int,
               warmup: int, rounds: int, counter: str, num_classes: int,
               seed: int) -> dict[str, Any]:
    from harness.nn.vit import build
    from harness.runtime.counting import count_flops
    from harness.runtime.timing import random_batch, time_train_step, timing_state
    from harness.spec.model import parse_model_spec

    cfg = parse_model_spec(spec, num_classes=num_classes)
    torch.manual_seed(seed)
    model = build(cfg).to(device)
    with timing_state(model, device):
        flops = count_flops(model, cfg, counter, device=device)
        images, labels = random_batch(cfg, batch_size, device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        t = time_train_step(model, images, labels, repeats=repeats, warmup=warmup,
                            rounds=rounds, precision=precision)
    step_s = t["median_ms"] / 1e3
    train_flops = 3 * flops.total * batch_size  # per step
    row = {
        "spec": cfg.spec, "batch_size": batch_size, "precision": precision,
        "gflops_per_image": flops.gflops, "flops_counter": flops.counter,
        "params_total": sum(p.numel() for p in model.parameters()),
        "step_ms": t["median_ms"], "step_ms_p10": t["p10_ms"], "step_ms_p90": t["p90_ms"],
        "steps_per_s": 1 / step_s, "images_per_s": batch_size / step_s,
        "achieved_tflops": train_flops / step_s / 1e12,
        "timing_method": t["method"], "timing_rounds": t["rounds"],
        "timing_spread": t["spread"], "timing_others_cpu": t["others_cpu"],
        "timing_flagged": t["flagged"], "repeats": repeats,
    }
    if device.type == "cuda":
        row["peak_memory_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    del model, images, labels
    if device.type == "cuda":
        torch.cuda.empty_cache()  # the next model starts from an empty cache
    return row


def _progress_line(row: dict[str, Any]) -> str:
    return (f"{row['spec']}: {row['step_ms']:.1f} ms/step, {row['images_per_s']:.1f} img/s, "
            f"{row['achieved_tflops']:.3g} TFLOP/s" + (" (flagged)" if row["timing_flagged"]
                                                       else ""))
