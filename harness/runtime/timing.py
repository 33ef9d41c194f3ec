"""Time and memory, measured one way everywhere: the protocol every run's ``measure``, ``inspect
--time`` and the benchmarks use.

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

**The machine** (:func:`plain_matmul_gflops`, :func:`device_name`): the rate of one plain
large matmul, against which the benchmarks state their achieved FLOP rates, and the device's
name in words.
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
    from harness.nn.moe.base import tracking_metrics

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
    autocast = precision_autocast(images.device, precision)

    def step():
        with autocast:
            loss = nn.functional.cross_entropy(model(images), labels)
            if aux is not None:
                loss = loss + aux()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def precision_autocast(device: torch.device, precision: str):
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



# --- the machine ----------------------------------------------------------------------------
def plain_matmul_gflops(device="cpu", size: tuple[int, int, int] = (4096, 1024, 1024),
                        repeats: int = 5, dtype: torch.dtype = torch.float32) -> float:
    """The machine's rate on one plain large matmul (FLOPs at 2 per multiply-add)."""
    m, k, n = size
    a = torch.randn(m, k, device=device, dtype=dtype)
    b = torch.randn(k, n, device=device, dtype=dtype)
    out = torch.empty(m, n, device=device, dtype=dtype)
    t = time_call(lambda: torch.mm(a, b, out=out), device=device, repeats=repeats, warmup=2)
    return 2 * m * k * n / (t["median_ms"] / 1e3) / 1e9



def device_name(device: torch.device) -> str:
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


