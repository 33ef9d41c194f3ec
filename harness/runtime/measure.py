"""Cost of a model: parameters (total and active per token), FLOPs, time and memory.

Active parameters per token = the parameters one token's forward pass applies, on average:
every non-expert parameter (embeddings, attention, dense MLPs, norms, routers, head) plus, in
each MoE layer, the router's experts per token (``harness.spec.routers``) times one expert's:
- Soft MoE: slots / tokens, i.e. the experts' work spread over the tokens that fed the
  slots (n·p = m gives one expert's worth, as dense);
- Tokens Choice: k experts (the most a token passes through; dropped tokens use fewer);
- Experts Choice: capacity_factor experts on average (E·C slots shared by S tokens).

``harness.cost.params.closed_form_params`` gives both counts from a ModelConfig alone.

FLOPs (``harness.runtime.counting``) follow one convention: 1 multiply-add = 2 FLOPs. Time and
memory follow the protocol in ``harness.runtime.timing``. :func:`measure` is the one entry
point a run calls; :func:`inspect_model` is ``moe-harness inspect`` (``harness.views.cost``
prints it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from harness.cost.params import closed_form_params

if TYPE_CHECKING:  # torch loads only where a model is built: closed forms stay instant
    from torch import nn


def _numel(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def parameter_counts(model: nn.Module, cfg) -> dict[str, int]:
    """``params_total`` (counted on ``model``) and ``params_active`` (per token, defined in
    the module doc) of the model built from ``cfg``."""
    total = _numel(model)
    active = float(total)
    per_token = cfg.routing.experts_per_token(cfg.num_tokens)
    for layer in model.moe_layers():
        per_expert = _numel(layer.experts) / layer.num_experts
        active -= _numel(layer.experts) - per_token * per_expert
    return {"params_total": total, "params_active": round(active)}


def measure(model, cfg, *, batch_size: int = 32, device=None, repeats: int = 10,
            warmup: int = 3, flops_counter: str = "fvcore", timing: bool = True,
            memory: bool = True, latency_batch_size: int | None = 1,
            images_seen: float | None = None, threads: int | None = None, rounds: int = 3,
            precision: str = "fp32") -> dict:
    """Cost of ``model`` (built from ``cfg``), as flat keys for the run's record.

    Always: ``params_total``, ``params_active``, ``gflops_per_image`` and
    ``gflops_<kind>`` for every kind of ``harness.cost.flops.KINDS`` (also as the dict
    ``gflops_by_kind``), ``flops_counter``, ``flop_convention``. With ``images_seen``:
    ``train_exaflops`` (ours: 3 × forward FLOPs × images) and ``train_exaflops_paper`` (the
    paper's: half of it). With ``timing``: ``infer_latency_ms`` (median time of one eval
    forward of ``batch_size`` images), ``infer_images_per_s``, ``infer_latency_ms_b1`` (one
    image; skipped if ``latency_batch_size`` is None), ``train_step_ms`` (forward, loss,
    backward, AdamW step at lr 0), ``train_images_per_s``, and spreads (``*_p10``,
    ``*_p90``). With ``memory``: ``peak_memory_mb`` and ``peak_memory_method``.
    ``device`` defaults to the model's; MoE metric tracking is off while timing; the weights,
    the RNG state and the train/eval mode are as before on return.

    Timing you can trust on a shared machine: every timing runs with ``threads`` torch
    threads (None: the process's count), recorded as ``timing_threads``; each is retimed up
    to ``rounds`` times while its spread is wide or other processes load the CPUs, and
    ``timing_flagged`` says if one still was (``harness.runtime.timing.time_stable``);
    ``timing_others_cpu`` is the largest share of the CPUs other processes used during a
    timing, ``timing_spread`` the widest (p90 - p10) / median, ``timing_method`` the clock.
    ``precision`` bf16 times the training step under bf16 autocast (``timing_precision``).
    """
    import torch

    from harness.cost.flops import CONVENTION, KINDS, train_exaflops
    from harness.runtime.counting import count_flops
    from harness.runtime.timing import (
        peak_memory_mb,
        random_batch,
        time_inference,
        time_train_step,
        timing_state,
        torch_threads,
    )

    device = torch.device(device) if device is not None else next(model.parameters()).device
    out: dict = {"device": str(device)}
    out.update(parameter_counts(model, cfg))
    with timing_state(model, device):
        flops = count_flops(model, cfg, flops_counter, device=device)
    out["gflops_per_image"] = flops.gflops
    by_kind = {kind: flops.by_kind.get(kind, 0.0) / 1e9 for kind in KINDS}
    out.update({f"gflops_{kind}": value for kind, value in by_kind.items()})
    out["gflops_by_kind"] = by_kind
    out["flops_counter"] = flops.counter
    out["flop_convention"] = CONVENTION
    if images_seen is not None:
        out.update(train_exaflops(flops.gflops, images_seen))
    if timing or memory:
        with timing_state(model, device), torch_threads(threads) as used_threads:
            images, labels = random_batch(cfg, batch_size, device)
            if timing:
                kw = dict(repeats=repeats, warmup=warmup, rounds=rounds)
                infer = time_inference(model, images, **kw)
                out["infer_latency_ms"] = infer["median_ms"]
                out["infer_latency_ms_p10"] = infer["p10_ms"]
                out["infer_latency_ms_p90"] = infer["p90_ms"]
                out["infer_images_per_s"] = batch_size / (infer["median_ms"] / 1e3)
                timings = [infer]
                if latency_batch_size:
                    one = time_inference(model, images[:latency_batch_size], **kw)
                    out["infer_latency_ms_b1"] = one["median_ms"]
                    timings.append(one)
                train = time_train_step(model, images, labels, precision=precision, **kw)
                timings.append(train)
                out["train_step_ms"] = train["median_ms"]
                out["train_step_ms_p10"] = train["p10_ms"]
                out["train_step_ms_p90"] = train["p90_ms"]
                out["train_images_per_s"] = batch_size / (train["median_ms"] / 1e3)
                out["timing_batch_size"] = batch_size
                out["timing_repeats"] = repeats
                out.update(timing_quality(timings, used_threads, precision))
            if memory:
                out.update(peak_memory_mb(model, images, labels))
    return out


def timing_quality(timings: list[dict], threads: int, precision: str = "fp32") -> dict:
    """The record's ``timing_*`` columns from several :func:`harness.runtime.timing.time_stable`
    results (see :func:`measure`)."""
    others = [t["others_cpu"] for t in timings if t.get("others_cpu") is not None]
    return {
        "timing_method": timings[0]["method"],
        "timing_threads": threads,
        "timing_precision": precision,
        "timing_others_cpu": max(others) if others else None,
        "timing_spread": max(t["spread"] for t in timings),
        "timing_rounds": max(t["rounds"] for t in timings),
        "timing_flagged": any(t["flagged"] for t in timings),
    }


# --- `moe-harness inspect` ---------------------------------------------------------------------
BUILD_LIMIT_PARAMS = 2e9
"""``inspect --time`` does not build models above this many parameters."""


def inspect_model(cfg, *, counter: str = "auto", timing: bool = False, batch_size: int = 32,
                  repeats: int = 5, warmup: int = 2, threads: int | None = None) -> dict:
    """Parameters, FLOPs per image by layer kind (and, with ``timing``, the measured
    throughput, latency and peak memory) of the model ``cfg``: one flat dict.

    ``counter``: ``auto`` or ``analytic`` (the closed forms: nothing is built, torch is not
    even imported, so a cold ``inspect`` takes about a second), ``fvcore`` / ``torch``
    (build on the CPU and trace a forward), ``meta`` (build on the meta device, count with
    FlopCounterMode). ``threads``: torch threads while timing (see :func:`measure`).
    """
    from harness.cost.flops import KINDS, analytic_flops
    from harness.errors import HarnessError

    closed = closed_form_params(cfg)
    if counter == "auto":
        counter = "analytic"
    if timing and counter == "meta":
        raise HarnessError(
            f"inspect --time: {cfg.spec} is counted with 'meta' (not built on this machine, "
            f"{closed['params_total']:,} parameters); time it where it fits"
        )
    if timing and closed["params_total"] > BUILD_LIMIT_PARAMS:
        raise HarnessError(
            f"inspect --time: {cfg.spec} has {closed['params_total']:,} parameters (more than "
            f"{BUILD_LIMIT_PARAMS:,.0f}); time it where it fits"
        )
    row: dict = {"model": cfg.spec}
    model = None
    if counter == "analytic":
        row.update(closed)
        flops, counted_by = analytic_flops(cfg), "analytic"
    else:
        model, flops, counted_by = _count_built(cfg, counter, timing)
        row.update(parameter_counts(model, cfg))
    row["gflops_per_image"] = flops.gflops
    row.update({f"gflops_{kind}": flops.by_kind.get(kind, 0.0) / 1e9 for kind in KINDS})
    row["counted_by"] = counted_by
    if timing:
        if model is None:
            from harness.nn.vit import build

            model = build(cfg)
        measured = measure(model, cfg, batch_size=batch_size, repeats=repeats, warmup=warmup,
                           flops_counter="analytic", threads=threads)
        row.update({key: value for key, value in measured.items() if key.startswith(
            ("infer_", "train_step", "train_images", "peak_memory", "timing_", "device"))})
    return row


def _count_built(cfg, counter: str, timing: bool):
    """(model, FlopCount, how) for the counters that build the model."""
    import torch

    from harness.nn.vit import build
    from harness.runtime.counting import build_for_counting, count_flops, torch_flops

    if counter == "meta":
        with torch.device("meta"):
            model = build(cfg)
        images = torch.randn(1, cfg.in_chans, cfg.image_size, cfg.image_size, device="meta")
        return model, torch_flops(model, images), "FlopCounterMode on meta"
    # counting needs shapes only; timing needs the real initialisation
    model = build(cfg) if timing else build_for_counting(cfg)
    flops = count_flops(model, cfg, counter)
    return model, flops, flops.counter
