"""Cost of a model: parameters (total and active per token), FLOPs, time and memory.

Active parameters per token = the parameters one token's forward pass applies, on average:
- every non-expert parameter (embeddings, attention, dense MLPs, norms, routers, head);
- Soft MoE: the expert parameters times (slots / tokens), i.e. the experts' work spread over
  the tokens that fed the slots (n·p = m gives one expert's worth, as dense);
- Tokens Choice: k experts (the most a token passes through; dropped tokens use fewer);
- Experts Choice: capacity_factor experts on average (E·C slots shared by S tokens).

:func:`closed_form_params` gives both counts from a ModelConfig alone (no model built: the
paper's 54B-parameter H/14 counts in microseconds); tests check it against built models.

FLOPs (``harness.flops``) follow one convention: 1 multiply-add = 2 FLOPs. Time and memory
follow the protocol in ``harness.bench``. :func:`measure` is the one entry point a run calls.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch loads only where a model is built: closed forms stay instant
    from torch import nn


def _numel(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def parameter_counts(model: nn.Module, cfg) -> dict[str, int]:
    """``params_total`` (counted on ``model``) and ``params_active`` (per token, defined in
    the module doc) of the model built from ``cfg``."""
    from harness import routers

    total = _numel(model)
    active = float(total)
    per_token = routers.get(cfg.router).experts_per_token(cfg.router_settings, cfg.num_tokens)
    for layer in model.moe_layers():
        per_expert = _numel(layer.experts) / layer.num_experts
        active -= _numel(layer.experts) - per_token * per_expert
    return {"params_total": total, "params_active": round(active)}


def closed_form_params(cfg) -> dict[str, int]:
    """``params_total`` and ``params_active`` (per token) of the model ``cfg`` builds, from
    its shapes alone (the same definitions as :func:`parameter_counts`)."""
    from harness import routers

    s = cfg.shape
    w, h, c = s.width, s.mlp_dim, cfg.num_classes
    mlp = 2 * w * h + h + w  # fc1, fc2 with biases; one expert has the same
    attention = 3 * w * w + 3 * w + w * w + w  # qkv, proj
    block = 2 * 2 * w + attention + mlp  # two layer norms
    total = cfg.in_chans * cfg.patch_size**2 * w + w + cfg.num_tokens * w  # patches, pos
    total += s.depth * block + 2 * w + w * c + c  # blocks, final norm, head
    if cfg.pool == "map":  # probe, q, kv, proj, norm, mlp
        total += w + (w * w + w) + (2 * w * w + 2 * w) + (w * w + w) + 2 * w + mlp
    active = float(total)
    if cfg.moe_blocks:
        router, settings = routers.get(cfg.router), cfg.router_settings
        gate = router.router_params(settings, w)
        per_token = router.experts_per_token(settings, cfg.num_tokens)
        for _ in cfg.moe_blocks:
            total += (cfg.num_experts - 1) * mlp + gate
            active += gate + (per_token - 1) * mlp
    return {"params_total": total, "params_active": round(active)}


def measure(model, cfg, *, batch_size: int = 32, device=None, repeats: int = 10,
            warmup: int = 3, flops_counter: str = "fvcore", timing: bool = True,
            memory: bool = True, latency_batch_size: int | None = 1,
            images_seen: float | None = None, threads: int | None = None, rounds: int = 3,
            precision: str = "fp32") -> dict:
    """Cost of ``model`` (built from ``cfg``), as flat keys for the run's record.

    Always: ``params_total``, ``params_active``, ``gflops_per_image`` and
    ``gflops_<kind>`` for every kind of ``harness.flops.KINDS`` (also as the dict
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
    ``timing_flagged`` says if one still was (``harness.bench.time_stable``);
    ``timing_others_cpu`` is the largest share of the CPUs other processes used during a
    timing, ``timing_spread`` the widest (p90 - p10) / median, ``timing_method`` the clock.
    ``precision`` bf16 times the training step under bf16 autocast (``timing_precision``).
    """
    import torch

    from harness.bench import (
        peak_memory_mb,
        random_batch,
        time_inference,
        time_train_step,
        timing_state,
        torch_threads,
    )
    from harness.flops import CONVENTION, KINDS, count_flops, train_exaflops

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
    """The record's ``timing_*`` columns from several :func:`harness.bench.time_stable`
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


# --- the paper's model table (its Tables 1 and 8) -------------------------------------------------
JFT_CLASSES = 29_593
"""Classes of the JFT head the paper's models carry (≈29.6k); it moves parameters, not
FLOPs (0.1%)."""
PAPER_BATCH = 4096


@dataclass(frozen=True)
class PaperModel:
    """One row of the paper's Tables 1/8: its printed figures and our spec of the model."""

    label: str
    spec: str
    params: float
    eval_gflops: float  # per image, 2 FLOPs per multiply-add
    steps: float
    train_exaflops_printed: float | None = None  # the paper's convention: 3 × MACs × images


PAPER_MODELS = (
    PaperModel("ViT S/16", "vit-s/16", 33e6, 9.2, 4e6, 227.0),
    PaperModel("Soft MoE S/16 128E", "vit-s/16:soft:e128:s1", 933e6, 8.6, 4e6),
    PaperModel("Soft MoE S/14 256E", "vit-s/14:soft:e256:s1", 1.8e9, 13.2, 4e6),
    PaperModel("ViT B/16", "vit-b/16", 108e6, 35.1, 4e6),
    PaperModel("Soft MoE B/16 128E", "vit-b/16:soft:e128:s1", 3.7e9, 32.0, 4e6),
    PaperModel("ViT L/16", "vit-l/16", 333e6, 122.9, 4e6),
    PaperModel("Soft MoE L/16 128E", "vit-l/16:soft:e128:s1", 13.1e9, 111.1, 4e6),
    PaperModel("ViT H/14", "vit-h/14", 669e6, 334.2, 2e6),
    PaperModel("Soft MoE H/14 128E", "vit-h/14:soft:e128:s1", 27.3e9, 284.6, 2e6),
    PaperModel("Soft MoE H/14 256E", "vit-h/14:soft:e256:s1", 54.1e9, 342.4, 2e6),
)
"""The paper's Tables 1 and 8. Only ViT S/16's training exaFLOP (227) is taken from the
paper; for the other rows the table shows the figure the paper's own convention
gives from its printed GFLOP column, labelled as such."""


def paper_table(counter: str = "meta", max_build_params: float = 1e9) -> list[dict]:
    """Our parameters, eval GFLOP/img and training exaFLOP for each model of the paper's
    table, beside the paper's figures and the ratios (ours / paper).

    ``counter``: ``"meta"`` (default) builds every model on the ``meta`` device (no memory)
    and counts its parameters and FLOPs there (``FlopCounterMode``); ``"fvcore"`` builds the
    models with at most ``max_build_params`` parameters on the CPU and counts them with
    fvcore, the others on ``meta``; ``"analytic"`` uses the closed forms only. Every row
    also carries the closed-form figures and says how it was counted.
    """
    from harness.flops import analytic_flops, train_exaflops

    rows = []
    for paper in PAPER_MODELS:
        cfg = parse_paper_spec(paper.spec)
        analytic = closed_form_params(cfg)["params_total"], analytic_flops(cfg).gflops
        params, gflops, counted_by = _count_paper_model(cfg, counter, max_build_params,
                                                        analytic)
        images = paper.steps * PAPER_BATCH
        ours = train_exaflops(gflops, images)
        if paper.train_exaflops_printed is not None:
            paper_ef, source = paper.train_exaflops_printed, "printed"
        else:
            paper_ef = train_exaflops(paper.eval_gflops, images)["train_exaflops_paper"]
            source = "from its GFLOP column"
        rows.append({
            "model": paper.label,
            "spec": cfg.spec,
            "counted_by": counted_by,
            "params": params,
            "params_analytic": analytic[0],
            "params_paper": paper.params,
            "params_ratio": params / paper.params,
            "gflops_per_image": gflops,
            "gflops_analytic": analytic[1],
            "gflops_paper": paper.eval_gflops,
            "gflops_ratio": gflops / paper.eval_gflops,
            "images_seen": images,
            "train_exaflops": ours["train_exaflops"],
            "train_exaflops_paper_convention": ours["train_exaflops_paper"],
            "train_exaflops_paper": paper_ef,
            "train_exaflops_paper_source": source,
            "train_exaflops_ratio": ours["train_exaflops_paper"] / paper_ef,
        })
    return rows


def parse_paper_spec(spec: str):
    """The paper's configuration of a spec: 224 px, GAP head, JFT classes, MoE in the
    second half of the blocks (our default placement), 1 slot per expert."""
    from harness.models import parse_model_spec

    return parse_model_spec(spec, num_classes=JFT_CLASSES, pool="gap", image_size=224)


def _count_paper_model(cfg, counter: str, max_build_params: float, analytic):
    import torch

    from harness.flops import fvcore_flops, torch_flops
    from harness.models import build

    if counter == "analytic":
        return *analytic, "analytic"
    if counter not in ("meta", "fvcore"):
        raise ValueError(f"unknown counter {counter!r}; allowed: meta, fvcore, analytic")
    device = "cpu" if counter == "fvcore" and analytic[0] <= max_build_params else "meta"
    with torch.device(device):
        model = build(cfg)
    images = torch.randn(1, cfg.in_chans, cfg.image_size, cfg.image_size, device=device)
    params = sum(p.numel() for p in model.parameters())
    if device == "cpu":
        return params, fvcore_flops(model, images).gflops, "fvcore (built on CPU)"
    return params, torch_flops(model, images).gflops, "FlopCounterMode on meta"


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
    from harness.errors import HarnessError
    from harness.flops import KINDS, analytic_flops

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
            from harness.models import build

            model = build(cfg)
        measured = measure(model, cfg, batch_size=batch_size, repeats=repeats, warmup=warmup,
                           flops_counter="analytic", threads=threads)
        row.update({key: value for key, value in measured.items() if key.startswith(
            ("infer_", "train_step", "train_images", "peak_memory", "timing_", "device"))})
    return row


def _count_built(cfg, counter: str, timing: bool):
    """(model, FlopCount, how) for the counters that build the model."""
    import torch

    from harness.flops import build_for_counting, count_flops, torch_flops
    from harness.models import build

    if counter == "meta":
        with torch.device("meta"):
            model = build(cfg)
        images = torch.randn(1, cfg.in_chans, cfg.image_size, cfg.image_size, device="meta")
        return model, torch_flops(model, images), "FlopCounterMode on meta"
    # counting needs shapes only; timing needs the real initialisation
    model = build(cfg) if timing else build_for_counting(cfg)
    flops = count_flops(model, cfg, counter)
    return model, flops, flops.counter


def _console():
    import sys

    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else 250)


def print_inspect(rows: list[dict]) -> None:
    """The ``inspect`` table: parameters, GFLOP/img by layer kind, and timings if measured."""
    from rich.table import Table

    from harness.flops import CONVENTION

    timed = any("infer_images_per_s" in row for row in rows)
    table = Table(title=f"Cost per image ({CONVENTION})")
    columns = ["model", "params total", "params active / token", "GFLOP/img", "attention",
               "dense MLP", "experts", "routing", "embed + head", "counted by"]
    if timed:
        columns += ["infer img/s", "infer ms/batch", "train img/s", "train ms/step",
                    "peak MB"]
    for i, name in enumerate(columns):
        table.add_column(name, justify="left" if i in (0, 9) else "right",
                         min_width=max(len(row["model"]) for row in rows) if i == 0 else None,
                         overflow="fold")
    for row in rows:
        cells = [row["model"], f"{row['params_total']:,}", f"{row['params_active']:,}",
                 f"{row['gflops_per_image']:.3f}", f"{row['gflops_attention']:.3f}",
                 f"{row['gflops_mlp']:.3f}", f"{row['gflops_experts']:.3f}",
                 f"{row['gflops_routing']:.3f}",
                 f"{row['gflops_patch_embed'] + row['gflops_head']:.3f}", row["counted_by"]]
        if timed:
            flag = " !" if row.get("timing_flagged") else ""
            cells += [f"{row['infer_images_per_s']:.1f}{flag}", f"{row['infer_latency_ms']:.1f}",
                      f"{row['train_images_per_s']:.1f}{flag}", f"{row['train_step_ms']:.1f}",
                      f"{row['peak_memory_mb']:.0f}"]
        table.add_row(*cells)
    console = _console()
    console.print(table)
    if timed:
        batch = rows[0].get("timing_batch_size")
        console.print(f"Timings: median of {rows[0].get('timing_repeats')} after warm-up, batch "
                      f"{batch}, on {rows[0].get('device')} with {rows[0].get('timing_threads')} "
                      f"threads ({rows[0].get('timing_method')}); train step = forward, loss, "
                      f"backward, AdamW; peak MB: {rows[0].get('peak_memory_method')}.")
        for row in rows:
            if row.get("timing_flagged"):
                console.print(f"! {row['model']}: timing flagged after {row['timing_rounds']} "
                              f"rounds: spread (p90-p10)/median {row['timing_spread']:.0%}, "
                              f"other processes used {_share(row.get('timing_others_cpu'))} of "
                              f"the CPUs; rerun when the machine is quieter.")


def print_paper_table(rows: list[dict]) -> None:
    """Ours beside the paper's Tables 1/8: parameters, eval GFLOP/img, training exaFLOP."""
    from rich.table import Table

    table = Table(title="The paper's models (Tables 1 and 8): ours / paper")
    for name in ("model", "params ours", "paper", "ratio", "GFLOP/img ours", "paper", "ratio",
                 "train EF ours (paper conv.)", "paper", "ratio", "train EF ours (2/MAC)",
                 "counted by"):
        table.add_column(name, justify="left" if name in ("model", "counted by") else "right")
    for row in rows:
        paper_ef = f"{row['train_exaflops_paper']:.1f}" + (
            "" if row["train_exaflops_paper_source"] == "printed" else "*")
        table.add_row(
            row["model"], _si(row["params"]), _si(row["params_paper"]),
            f"{row['params_ratio']:.3f}", f"{row['gflops_per_image']:.2f}",
            f"{row['gflops_paper']:.1f}", f"{row['gflops_ratio']:.3f}",
            f"{row['train_exaflops_paper_convention']:.1f}", paper_ef,
            f"{row['train_exaflops_ratio']:.3f}", f"{row['train_exaflops']:.1f}",
            row["counted_by"] + ("" if _agrees(row) else " (differs from closed form!)"),
        )
    console = _console()
    console.print(table)
    console.print(
        "FLOPs: 2 per multiply-add (matrix products; elementwise ops not counted). Train EF: "
        "exaFLOP over the paper's schedule (batch 4096; 4M steps, H/14 2M), in the paper's "
        "convention (3 x forward multiply-adds x images) and in ours (3 x forward FLOPs x "
        "images = 2x). * = not taken from the paper: its convention applied to its "
        "GFLOP column. Models: GAP head, 29,593 JFT classes, MoE in the last half, 1 slot "
        "per expert. Gaps explained in docs/paper-costs.md."
    )


def _agrees(row: dict) -> bool:
    return row["params"] == row["params_analytic"] and \
        abs(row["gflops_per_image"] / row["gflops_analytic"] - 1) < 1e-6


def _share(value: float | None) -> str:
    return "an unknown share" if value is None else f"{value:.0%}"


def _si(n: float) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"
