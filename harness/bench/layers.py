"""The layer micro-benchmark (``moe-harness bench layers``), timed with the protocol of
``harness.runtime.timing``.

:func:`bench_layers`: forward and forward+backward time of each MLP kind at matched shapes;
our Soft MoE interleaved with ``soft-moe-pytorch`` (optional, ``harness.bench.reference``) in the
same configuration, reported as the median of per-pair ratios with their spread; the bare time
of each layer's expert matmuls; our experts' achieved FLOP rate against the machine's plain
large-matmul rate, measured in the same run. ``harness.views.bench`` prints the table.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from harness.bench.reference import reference_soft_moe
from harness.cost.flops import CONVENTION
from harness.runtime.timing import (
    device_name,
    plain_matmul_gflops,
    precision_autocast,
    time_call,
    time_pairs,
)


def _fwd(layer, x, precision: str = "fp32"):
    autocast = precision_autocast(x.device, precision)

    @torch.no_grad()
    def run():
        with autocast:
            layer(x)

    return run


def _fwd_bwd(layer, x, grad, precision: str = "fp32"):
    autocast = precision_autocast(x.device, precision)

    def run():
        layer.zero_grad(set_to_none=True)
        x.grad = None
        with autocast:
            y = layer(x)
        y.backward(grad.to(y.dtype))

    return run


def _bare_expert_matmuls(num_experts: int, rows: int, dim: int, hidden: int, device,
                         repeats: int, warmup: int) -> dict[str, float]:
    """The two expert matmuls alone (fwd), and with the four backward ones (fwd+bwd)."""
    x = torch.randn(num_experts, rows, dim, device=device)
    w1 = torch.randn(num_experts, dim, hidden, device=device)
    w2 = torch.randn(num_experts, hidden, dim, device=device)
    g = torch.randn(num_experts, rows, dim, device=device)

    def fwd():
        return torch.bmm(torch.bmm(x, w1), w2)

    def fwd_bwd():
        h = torch.bmm(x, w1)
        torch.bmm(h, w2)
        dh = torch.bmm(g, w2.transpose(1, 2))
        torch.bmm(h.transpose(1, 2), g)  # d w2
        torch.bmm(x.transpose(1, 2), dh)  # d w1
        torch.bmm(dh, w1.transpose(1, 2))  # d x

    return {
        "fwd": time_call(fwd, device=device, repeats=repeats, warmup=warmup)["median_ms"],
        "fwd_bwd": time_call(fwd_bwd, device=device, repeats=repeats, warmup=warmup)["median_ms"],
    }


def bench_layers(*, dim: int = 384, tokens: int = 196, batch: int = 32,
                 experts: tuple[int, ...] = (8, 32, 128), slots: tuple[int, ...] = (1, 2),
                 kinds: tuple[str, ...] = ("dense", "soft", "tokens_choice", "experts_choice"),
                 repeats: int = 7, warmup: int = 2, device: str = "cpu", seed: int = 0,
                 compare_reference: bool = True,
                 plain_matmul_size: tuple[int, int, int] = (2048, 1024, 1024),
                 budget_s: float | None = 150.0, precision: str = "fp32",
                 progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Forward and forward+backward time of each MLP kind at matched shapes (see module doc).

    ``precision`` bf16 runs every layer (ours and the reference) under bf16 autocast; the
    expert-matmul columns, which time bare float32 matmuls, are then left out.

    Soft MoE rows (with the comparison, 2 x ``repeats`` + 1 pairs) come first. Past
    ``budget_s`` seconds the remaining rows are timed with 3 repeats and 1 warm-up (the row
    says so in ``repeats``), so that a loaded machine stretches the run less. Returns
    ``{"machine": {...}, "rows": [...]}``; every row is flat.
    """
    from harness.nn.moe import MoELayer
    from harness.nn.moe.experts import onednn_ok
    from harness.spec import routers

    device = torch.device(device)
    torch.manual_seed(seed)
    hidden = 4 * dim
    say = progress or (lambda _msg: None)
    started = time.time()
    machine = {
        "device": device_name(device),
        "threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "loadavg_before": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "thp_advice": os.environ.get("MOE_HARNESS_THP", "1") != "0",
        "onednn_inference": onednn_ok(torch.zeros(1, device=device)) and precision == "fp32",
        "flop_convention": CONVENTION,
        "precision": precision,
    }
    machine["plain_matmul_gflops_per_s"] = plain_matmul_gflops(device, plain_matmul_size)
    say(f"plain matmul: {machine['plain_matmul_gflops_per_s']:.0f} GFLOP/s")

    configs = [("soft", e, p) for e in experts for p in slots] if "soft" in kinds else []
    if "dense" in kinds:
        configs.append(("dense", None, None))
    configs += [(k, e, None) for e in experts for k in kinds if k not in ("soft", "dense")]

    rows = []
    x = torch.randn(batch, tokens, dim, device=device)
    grad = torch.randn(batch, tokens, dim, device=device)
    full = (repeats, warmup)
    for kind, e, p in configs:
        if budget_s is not None and time.time() - started > budget_s:
            repeats, warmup = min(full[0], 3), min(full[1], 1)
        settings = routers.resolve(kind, num_experts=e, slots_per_expert=p)
        layer = settings.build(dim, hidden).to(device)
        layer.train()
        if isinstance(layer, MoELayer):  # a fresh layer, timed without its diagnostics
            layer.track_metrics = False
        xg = x.clone().requires_grad_(True)
        row: dict[str, Any] = {"kind": kind, "experts": e, "slots_per_expert": p, "dim": dim,
                               "tokens": tokens, "batch": batch, "repeats": repeats}
        ref = reference_soft_moe(dim, e, p, hidden) if kind == "soft" and compare_reference \
            else None
        if ref is not None:
            ref = ref.to(device).train()
            pairs = 2 * repeats + 1  # the targets read these medians: more pairs than rows
            fwd = time_pairs(_fwd(layer, x, precision), _fwd(ref, x, precision), device=device,
                             repeats=pairs, warmup=warmup)
            bwd = time_pairs(_fwd_bwd(layer, xg, grad, precision),
                             _fwd_bwd(ref, xg, grad, precision), device=device,
                             repeats=pairs, warmup=warmup)
            for name, res in (("fwd", fwd), ("fwd_bwd", bwd)):
                row[f"{name}_ms"] = res["ours"]["median_ms"]
                row[f"{name}_ms_p10"], row[f"{name}_ms_p90"] = res["ours"]["p10_ms"], \
                    res["ours"]["p90_ms"]
                row[f"ref_{name}_ms"] = res["theirs"]["median_ms"]
                for stat in ("median", "min", "max", "p10", "p90"):
                    row[f"speedup_{name}_{stat}"] = res[f"ratio_{stat}"]
                row[f"speedup_{name}_median_all_pairs"] = res["ratio_median_all_pairs"]
                row[f"pairs_{name}_clean"] = res["pairs_clean"]
                row[f"pairs_{name}_total"] = res["pairs_total"]
                row[f"others_cpu_{name}"] = res["others_cpu_median"]
            del ref
        else:
            for name, fn in (("fwd", _fwd(layer, x, precision)),
                             ("fwd_bwd", _fwd_bwd(layer, xg, grad, precision))):
                res = time_call(fn, device=device, repeats=repeats, warmup=warmup)
                row[f"{name}_ms"] = res["median_ms"]
                row[f"{name}_ms_p10"], row[f"{name}_ms_p90"] = res["p10_ms"], res["p90_ms"]
        # the machine's rate now (the load of a shared machine drifts during a run)
        row["plain_matmul_gflops_per_s"] = plain_matmul_gflops(device, plain_matmul_size,
                                                               repeats=3)
        if settings.entry.is_moe and precision == "fp32":
            rows_per_expert = batch * settings.expert_rows(tokens)
            _expert_columns(row, layer, round(rows_per_expert), dim, hidden, device, repeats,
                            warmup, row["plain_matmul_gflops_per_s"])
        rows.append(row)
        say(_progress_line(row))
        del layer
    machine["loadavg_after"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    machine["plain_matmul_gflops_per_s_median"] = statistics.median(
        [machine["plain_matmul_gflops_per_s"]] + [r["plain_matmul_gflops_per_s"] for r in rows])
    machine["seconds"] = time.time() - started
    return {"machine": machine, "rows": rows}


def _expert_columns(row, layer, rows_per_expert, dim, hidden, device, repeats, warmup,
                    plain_rate) -> None:
    repeats = max(3, (repeats + 1) // 2)  # secondary columns: fewer repeats, to fit the budget
    e = layer.num_experts
    expert_in = torch.randn(e, rows_per_expert, dim, device=device)
    expert_in_g = expert_in.clone().requires_grad_(True)
    expert_grad = torch.randn(e, rows_per_expert, dim, device=device)
    experts = layer.experts
    t_fwd = time_call(_fwd(experts, expert_in), device=device, repeats=repeats,
                      warmup=warmup)["median_ms"]
    t_bwd = time_call(_fwd_bwd(experts, expert_in_g, expert_grad), device=device,
                      repeats=repeats, warmup=warmup)["median_ms"]
    bare = _bare_expert_matmuls(e, rows_per_expert, dim, hidden, device, repeats, warmup)
    flops_fwd = 2 * 2 * e * rows_per_expert * dim * hidden  # two matmuls, 2 FLOPs per MAC
    row.update({
        "expert_rows": rows_per_expert,
        "experts_fwd_ms": t_fwd,
        "experts_fwd_bwd_ms": t_bwd,
        "bare_matmul_fwd_ms": bare["fwd"],
        "bare_matmul_fwd_bwd_ms": bare["fwd_bwd"],
        "experts_gflops_per_s_fwd": flops_fwd / t_fwd / 1e6,
        "experts_gflops_per_s_fwd_bwd": 3 * flops_fwd / t_bwd / 1e6,
        "bare_gflops_per_s_fwd": flops_fwd / bare["fwd"] / 1e6,
        "bare_gflops_per_s_fwd_bwd": 3 * flops_fwd / bare["fwd_bwd"] / 1e6,
        "experts_fraction_of_plain_fwd": flops_fwd / t_fwd / 1e6 / plain_rate,
        "experts_fraction_of_plain_fwd_bwd": 3 * flops_fwd / t_bwd / 1e6 / plain_rate,
        "layer_over_bare_fwd": row["fwd_ms"] / bare["fwd"],
        "layer_over_bare_fwd_bwd": row["fwd_bwd_ms"] / bare["fwd_bwd"],
    })


def _progress_line(row: dict[str, Any]) -> str:
    name = row["kind"] + (f" e{row['experts']}" if row["experts"] else "") + (
        f" s{row['slots_per_expert']}" if row["slots_per_expert"] else "")
    line = f"{name}: fwd {row['fwd_ms']:.1f} ms, fwd+bwd {row['fwd_bwd_ms']:.1f} ms"
    if "speedup_fwd_median" in row:
        line += (f"; vs soft-moe-pytorch x{row['speedup_fwd_median']:.2f} fwd, "
                 f"x{row['speedup_fwd_bwd_median']:.2f} fwd+bwd")
    return line
