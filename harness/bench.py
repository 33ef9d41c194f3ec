"""Time and memory, measured one way everywhere, and the layer micro-benchmark.

**Timing protocol** (:func:`time_call`): ``warmup`` untimed calls, then ``repeats`` timed
calls; the figure is the **median**, with min, max and the 10th/90th percentiles beside it.
On CUDA each call is bracketed by CUDA events after a synchronisation; on CPU by
``time.perf_counter`` (the calls are synchronous). Nothing else runs in between.

**Peak memory** (:func:`peak_memory_mb`): on CUDA ``torch.cuda.max_memory_allocated`` over
one training step (after ``reset_peak_memory_stats``). On CPU: the bytes of every tensor
alive when the step starts (parameters, buffers, optimizer state, the batch), plus the
highest point of the running sum of PyTorch's CPU allocator events (allocations minus
frees, from ``torch.profiler`` with ``profile_memory=True``) during one training step; i.e.
the peak of memory held by PyTorch tensors, the CPU analogue of ``max_memory_allocated``
(it leaves out the interpreter, libraries and allocator slack that RSS would include).

**Layer micro-benchmark** (:func:`bench_layers`): forward and forward+backward time of each
MLP kind at matched shapes; our Soft MoE interleaved with ``soft-moe-pytorch`` (optional) in
the same configuration, reported as the median of per-pair ratios with their spread; the
bare time of each layer's expert matmuls; our experts' achieved FLOP rate against the
machine's plain large-matmul rate, measured in the same run.
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from harness.flops import CONVENTION


# --- timing --------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _percentile(sorted_values: list[float], q: float) -> float:
    if len(sorted_values) == 1:
        return sorted_values[0]
    pos = q * (len(sorted_values) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def summarize(times_s: list[float]) -> dict[str, float]:
    """median / min / max / p10 / p90 in milliseconds of a list of seconds."""
    ms = sorted(t * 1e3 for t in times_s)
    return {
        "median_ms": statistics.median(ms),
        "min_ms": ms[0],
        "max_ms": ms[-1],
        "p10_ms": _percentile(ms, 0.1),
        "p90_ms": _percentile(ms, 0.9),
        "n": len(ms),
    }


def time_once(fn: Callable[[], Any], device: torch.device) -> float:
    """Seconds of one call of ``fn`` (CUDA events on GPU, perf_counter on CPU)."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(device)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize(device)
        return start.elapsed_time(end) / 1e3
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def time_call(fn: Callable[[], Any], *, device: torch.device | str = "cpu", repeats: int = 10,
              warmup: int = 3) -> dict[str, Any]:
    """The protocol: ``warmup`` untimed calls, then the median (and spread) of ``repeats``.

    Beside the times: ``spread`` = (p90 - p10) / median, ``method`` (CUDA events or
    perf_counter) and, on a Linux CPU, ``others_cpu``: the share of the machine's CPUs that
    other processes used during the timed calls (:class:`Interference`; None elsewhere).
    """
    device = torch.device(device)
    for _ in range(warmup):
        fn()
    _sync(device)
    meter = Interference() if device.type == "cpu" else None
    meter = meter if meter is not None and meter.available else None
    before = meter.snapshot() if meter else None
    out: dict[str, Any] = summarize([time_once(fn, device) for _ in range(repeats)])
    out["others_cpu"] = meter.others(before, meter.snapshot()) if meter else None
    out["spread"] = (out["p90_ms"] - out["p10_ms"]) / out["median_ms"] if out["median_ms"] \
        else 0.0
    out["method"] = TIMING_METHODS[device.type == "cuda"]
    return out


TIMING_METHODS = {True: "CUDA events", False: "time.perf_counter"}
MAX_SPREAD = 0.25
"""A timing whose (p90 - p10) / median exceeds this is retimed, then flagged."""
MAX_OTHERS_CPU = 0.25
"""A CPU timing during which other processes used more than this share of the machine's
CPUs is retimed, then flagged."""


def timing_ok(result: dict[str, Any]) -> bool:
    """Narrow enough, and (on CPU) not taken while other processes held the machine."""
    others = result.get("others_cpu")
    return result["spread"] <= MAX_SPREAD and (others is None or others <= MAX_OTHERS_CPU)


def time_stable(fn: Callable[[], Any], *, device: torch.device | str = "cpu",
                repeats: int = 10, warmup: int = 3, rounds: int = 3) -> dict[str, Any]:
    """:func:`time_call` until a round passes :func:`timing_ok`, at most ``rounds`` rounds.

    Returns the passing round, or else the round with the lowest median (contention only
    ever adds time), marked ``flagged``; ``rounds`` says how many were timed. A shared
    machine's load thus either waits out a burst or shows on the measurement, never
    silently averaged in.
    """
    results = []
    for i in range(max(1, rounds)):
        results.append(time_call(fn, device=device, repeats=repeats,
                                 warmup=warmup if i == 0 else min(warmup, 1)))
        if timing_ok(results[-1]):
            break
    best = results[-1] if timing_ok(results[-1]) else min(results, key=lambda r: r["median_ms"])
    return {**best, "rounds": len(results), "flagged": not timing_ok(best)}


@contextlib.contextmanager
def torch_threads(threads: int | None):
    """``torch.set_num_threads(threads)`` inside (nothing when None); the old count after."""
    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(old)


class Interference:
    """CPU time that *other* processes took while we timed something (Linux: /proc/stat
    minus our own ``os.times``), as a fraction of the machine's CPUs. On a shared machine a
    timing taken while others ran is not a measurement of our code; with this we can tell
    such timings apart instead of averaging them in. ``available`` is False elsewhere."""

    def __init__(self):
        self.available = os.path.exists("/proc/stat") and hasattr(os, "sysconf")
        if self.available:
            self.hz = os.sysconf("SC_CLK_TCK")
            self.cpus = os.cpu_count() or 1

    def snapshot(self) -> tuple[float, float, float]:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        busy = v[0] + v[1] + v[2] + sum(v[5:8])  # user nice system irq softirq steal
        t = os.times()
        return busy / self.hz, t.user + t.system, time.perf_counter()

    def others(self, before, after) -> float:
        wall = max(after[2] - before[2], 1e-9)
        busy = max(0.0, (after[0] - before[0]) - (after[1] - before[1])) / (wall * self.cpus)
        return min(1.0, busy)  # tick rounding and steal time can overshoot a full machine


def time_pairs(ours: Callable[[], Any], theirs: Callable[[], Any], *, device="cpu",
               repeats: int = 7, warmup: int = 2, gate: float | None = 0.1,
               max_pairs: int | None = None, budget_s: float = 10.0) -> dict[str, Any]:
    """Interleaved timing of two implementations; ratio = theirs / ours per pair (> 1: ours
    is faster). The order inside a pair alternates so that neither always runs first.

    With ``gate`` (CPU only, Linux), pairs are timed in blocks of at least 0.25 s and a
    block counts as *clean* when other processes used at most ``gate`` of the machine's
    CPUs during it; timing goes on until ``repeats`` clean pairs are in, or ``max_pairs``
    (default 3 x repeats) were timed, or ``budget_s`` is spent with ``repeats`` pairs in
    (so that a saturated machine cannot stretch a run without end). The ratios are those
    of the clean pairs when there are at least 3 of them, else of all pairs (``clean``
    False); the all-pairs median and the counts are reported too.
    """
    device = torch.device(device)
    t0 = time.perf_counter()
    for _ in range(warmup):
        ours()
        theirs()
    _sync(device)
    pair_s = (time.perf_counter() - t0) / max(warmup, 1)
    meter = Interference() if gate is not None and device.type == "cpu" else None
    if meter is not None and not meter.available:
        meter = None
    block = min(50, max(1, math.ceil(0.25 / max(pair_s, 1e-6)))) if meter and warmup else 1
    max_pairs = max_pairs or 3 * repeats
    all_ours, all_theirs, clean_ours, clean_theirs, load = [], [], [], [], []
    i = 0
    start = time.perf_counter()

    def more() -> bool:
        if len(all_ours) < repeats:
            return True
        if not meter or len(clean_ours) >= repeats or len(all_ours) >= max_pairs:
            return False
        return time.perf_counter() - start < budget_s

    while more():
        before = meter.snapshot() if meter else None
        b_ours, b_theirs = [], []
        for _ in range(block):
            pair = [(ours, b_ours), (theirs, b_theirs)]
            for fn, sink in pair if i % 2 == 0 else pair[::-1]:
                sink.append(time_once(fn, device))
            i += 1
        all_ours += b_ours
        all_theirs += b_theirs
        if meter:
            others = meter.others(before, meter.snapshot())
            load.append(others)
            if others <= gate:
                clean_ours += b_ours
                clean_theirs += b_theirs
    clean = meter is not None and len(clean_ours) >= 3
    t_ours, t_theirs = (clean_ours, clean_theirs) if clean else (all_ours, all_theirs)
    ratios = sorted(b / a for a, b in zip(t_ours, t_theirs, strict=True))
    ratios_all = [b / a for a, b in zip(all_ours, all_theirs, strict=True)]
    return {
        "ours": summarize(t_ours),
        "theirs": summarize(t_theirs),
        "ratio_median": statistics.median(ratios),
        "ratio_min": ratios[0],
        "ratio_max": ratios[-1],
        "ratio_p10": _percentile(ratios, 0.1),
        "ratio_p90": _percentile(ratios, 0.9),
        "ratio_median_all_pairs": statistics.median(ratios_all),
        "pairs_clean": len(clean_ours) if meter else None,
        "pairs_total": len(all_ours),
        "clean": clean,
        "others_cpu_median": statistics.median(load) if load else None,
    }


# --- model-level timing and memory -------------------------------------------------------------
@contextlib.contextmanager
def timing_state(model: nn.Module, device: torch.device):
    """No MoE metric tracking; RNG state and train/eval mode restored afterwards."""
    from harness.moe.base import tracking_metrics

    training = model.training
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), tracking_metrics(model, False):
        try:
            yield
        finally:
            model.train(training)


def random_batch(cfg, batch_size: int, device: torch.device):
    images = torch.randn(batch_size, cfg.in_chans, cfg.image_size, cfg.image_size, device=device)
    labels = torch.randint(0, cfg.num_classes, (batch_size,), device=device)
    return images, labels


def _train_step_fn(model: nn.Module, images, labels, optimizer, precision: str = "fp32"):
    aux = getattr(model, "aux_loss", None)
    autocast = _autocast(images.device, precision)

    def step():
        with autocast:
            loss = nn.functional.cross_entropy(model(images), labels)
            if aux is not None:
                loss = loss + aux()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def _autocast(device: torch.device, precision: str):
    """bf16 autocast for ``precision`` 'bf16' (re-enterable: one object serves every step)."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision != "fp32":
        raise ValueError(f"precision must be fp32 or bf16, got {precision!r}")
    return contextlib.nullcontext()


def _zero_lr_optimizer(model: nn.Module) -> torch.optim.Optimizer:
    # lr = 0 (and so no decay either): the same kernels run, the weights stay bit-identical.
    return torch.optim.AdamW(model.parameters(), lr=0.0, weight_decay=0.0)


def time_inference(model: nn.Module, images: torch.Tensor, *, repeats: int = 10,
                   warmup: int = 3, rounds: int = 1) -> dict[str, Any]:
    """Median time of one eval-mode forward of ``images`` (no grad); see :func:`time_stable`
    for ``rounds``."""
    model.eval()

    @torch.no_grad()
    def forward():
        model(images)

    return time_stable(forward, device=images.device, repeats=repeats, warmup=warmup,
                       rounds=rounds)


def time_train_step(model: nn.Module, images, labels, *, repeats: int = 10,
                    warmup: int = 3, rounds: int = 1, precision: str = "fp32") -> dict[str, Any]:
    """Median time of one training step: forward, loss (+ aux loss), backward, AdamW step
    (with lr = 0, so the weights are left as they were); ``precision`` bf16: the forward and
    loss under bf16 autocast, as training runs them. See :func:`time_stable` for ``rounds``."""
    model.train()
    step = _train_step_fn(model, images, labels, _zero_lr_optimizer(model), precision)
    result = time_stable(step, device=images.device, repeats=repeats, warmup=warmup,
                         rounds=rounds)
    model.zero_grad(set_to_none=True)
    return result


def _tensor_bytes(tensors) -> int:
    seen, total = set(), 0
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in seen:
            seen.add(t.untyped_storage().data_ptr())
            total += t.untyped_storage().nbytes()
    return total


def peak_memory_mb(model: nn.Module, images, labels) -> dict[str, Any]:
    """Peak memory of one training step (see the module doc for the CPU definition)."""
    device = images.device
    model.train()
    optimizer = _zero_lr_optimizer(model)
    step = _train_step_fn(model, images, labels, optimizer)
    step()  # the optimizer state exists from here on, as in a real run
    model.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        method = "torch.cuda.max_memory_allocated"
    else:
        state = [t for s in optimizer.state.values() for t in s.values()]
        alive = _tensor_bytes([*model.parameters(), *model.buffers(), *state, images, labels])
        peak = alive + _allocator_peak_growth(step)
        method = "live tensors + peak of PyTorch CPU allocator events (torch.profiler)"
    model.zero_grad(set_to_none=True)
    return {"peak_memory_mb": peak / 2**20, "peak_memory_method": method}


def _allocator_peak_growth(fn: Callable[[], Any]) -> int:
    from torch.profiler import ProfilerActivity, profile

    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"
              and e.device_type() == torch.autograd.DeviceType.CPU]
    running, peak = 0, 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        running += e.nbytes()
        peak = max(peak, running)
    return peak


@contextlib.contextmanager
def _quiet_stderr():
    """Silence the C++ profiler's start/stop lines (written to fd 2, not sys.stderr)."""
    import sys

    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


# --- the layer micro-benchmark -------------------------------------------------------------------
def plain_matmul_gflops(device="cpu", size: tuple[int, int, int] = (4096, 1024, 1024),
                        repeats: int = 5, dtype: torch.dtype = torch.float32) -> float:
    """The machine's rate on one plain large matmul (FLOPs at 2 per multiply-add)."""
    m, k, n = size
    a = torch.randn(m, k, device=device, dtype=dtype)
    b = torch.randn(k, n, device=device, dtype=dtype)
    out = torch.empty(m, n, device=device, dtype=dtype)
    t = time_call(lambda: torch.mm(a, b, out=out), device=device, repeats=repeats, warmup=2)
    return 2 * m * k * n / (t["median_ms"] / 1e3) / 1e9


def reference_soft_moe(dim: int, num_experts: int, slots: int, hidden: int):
    """soft-moe-pytorch's SoftMoE in our configuration, or None if it is not installed.

    Matched: dim, num_experts, slots per expert, expert hidden = ``hidden`` (expert_mult =
    hidden / dim), exact GELU, no dropout. Different by design: its normalisation is an
    RMSNorm (l2-normalise × sqrt(dim) × a learned gain) applied to x *before* dispatch (so
    slots mix normalised tokens) and to the slot embeddings, where ours L2-normalises x and
    Φ only inside the logits, with one learned scale. ``offload_unused_experts_to_cpu`` is
    off (on one device it only adds a ``.to()`` per expert per call).
    """
    try:
        from soft_moe_pytorch import SoftMoE as RefSoftMoE
    except ImportError:
        return None
    return RefSoftMoE(dim, num_slots=slots, num_experts=num_experts, expert_mult=hidden / dim,
                      offload_unused_experts_to_cpu=False, is_distributed=False)


def _fwd(layer, x, precision: str = "fp32"):
    autocast = _autocast(x.device, precision)

    @torch.no_grad()
    def run():
        with autocast:
            layer(x)

    return run


def _fwd_bwd(layer, x, grad, precision: str = "fp32"):
    autocast = _autocast(x.device, precision)

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
    from harness import routers
    from harness.moe import MoELayer, make_mlp
    from harness.moe.experts import onednn_ok

    device = torch.device(device)
    torch.manual_seed(seed)
    hidden = 4 * dim
    say = progress or (lambda _msg: None)
    started = time.time()
    machine = {
        "device": _device_name(device),
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
        settings = routers.get(kind).settings(num_experts=e, slots_per_expert=p)
        layer = make_mlp(kind, dim, hidden, num_experts=e, slots_per_expert=p).to(device)
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
        if kind != "dense" and precision == "fp32":
            rows_per_expert = batch * routers.get(kind).expert_rows(settings, tokens)
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


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    return f"{name} ({torch.get_num_threads()} threads)"


def print_layers(result: dict[str, Any]) -> None:
    """The ``bench layers`` table."""
    import sys

    from rich.console import Console
    from rich.table import Table

    machine, rows = result["machine"], result["rows"]
    table = Table(title="MLP layers: forward / forward+backward (median ms)")
    for name in ("kind", "E", "p", "fwd ms", "f+b ms", "ref fwd", "ref f+b",
                 "speedup fwd [p10-p90] clean/pairs", "speedup f+b [p10-p90] clean/pairs",
                 "experts GFLOP/s f / f+b",
                 "% of plain", "layer / bare matmuls f, f+b"):
        table.add_column(name, justify="left" if name == "kind" else "right")
    opt = lambda row, key, fmt: fmt.format(row[key]) if row.get(key) is not None else "-"  # noqa: E731
    for row in rows:
        speed = {}
        for name in ("fwd", "fwd_bwd"):
            speed[name] = "-" if f"speedup_{name}_median" not in row else (
                f"x{row[f'speedup_{name}_median']:.2f} [{row[f'speedup_{name}_p10']:.2f}-"
                f"{row[f'speedup_{name}_p90']:.2f}] "
                f"{row[f'pairs_{name}_clean'] if row[f'pairs_{name}_clean'] is not None else '-'}"
                f"/{row[f'pairs_{name}_total']}")
        rates = "-" if "experts_gflops_per_s_fwd" not in row else (
            f"{row['experts_gflops_per_s_fwd']:.0f} / {row['experts_gflops_per_s_fwd_bwd']:.0f}")
        share = "-" if "experts_fraction_of_plain_fwd" not in row else (
            f"{100 * row['experts_fraction_of_plain_fwd']:.0f}% / "
            f"{100 * row['experts_fraction_of_plain_fwd_bwd']:.0f}%")
        over = "-" if "layer_over_bare_fwd" not in row else (
            f"{row['layer_over_bare_fwd']:.2f}, {row['layer_over_bare_fwd_bwd']:.2f}")
        table.add_row(row["kind"], opt(row, "experts", "{}"), opt(row, "slots_per_expert", "{}"),
                      f"{row['fwd_ms']:.1f}", f"{row['fwd_bwd_ms']:.1f}",
                      opt(row, "ref_fwd_ms", "{:.1f}"), opt(row, "ref_fwd_bwd_ms", "{:.1f}"),
                      speed["fwd"], speed["fwd_bwd"], rates, share, over)
    console = Console(width=None if sys.stdout.isatty() else 250)
    console.print(table)
    r0 = rows[0] if rows else {}
    console.print(
        f"dim {r0.get('dim')}, {r0.get('tokens')} tokens, batch {r0.get('batch')}, "
        f"{machine.get('precision', 'fp32')}"
        f"{' autocast, ours and the reference' if machine.get('precision') == 'bf16' else ''}; "
        f"{machine['device']}, torch {machine['torch_version']}; plain matmul "
        f"{machine['plain_matmul_gflops_per_s_median']:.0f} GFLOP/s (median; measured beside "
        f"every row, '% of plain' uses the row's own); load average "
        f"{machine['loadavg_before']:.2f} before, {machine['loadavg_after']:.2f} after; "
        f"{machine['seconds']:.0f} s. speedup = soft-moe-pytorch time / ours, median of "
        f"interleaved pairs (> 1: ours faster), over the clean pairs (timed while other "
        f"processes used <= 10% of the CPUs; all pairs if fewer than 3 were clean); "
        f"ref = soft-moe-pytorch 0.1.9, same dim, "
        f"experts, slots, hidden = 4 dim (its RMSNorm normalises x before dispatch, ours only "
        f"inside the logits). GFLOP/s at 2 FLOPs per multiply-add; bare = the expert matmuls "
        f"alone (torch.bmm, no bias/GELU)."
        + (" fwd runs without gradients: our experts then run oneDNN's matmul with bias and "
           "GELU fused, on weights it packed at the first call (kept until the weights "
           "change)." if machine.get("onednn_inference") else ""))
