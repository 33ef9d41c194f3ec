"""The dry run's memory table: each run's estimated peak per GPU, by part, and whether it fits."""

from __future__ import annotations

from rich.table import Table

from harness.cost.memory import MemoryPlan


def _gb(value: float) -> str:
    return f"{value:.1f}" if value >= 0.05 else ("0" if value == 0 else f"{value:.2g}")


def memory_table(study, specs, plans: dict[str, MemoryPlan]) -> Table:
    """One row per run: layout (``auto`` shows its choice), GPUs and nodes, micro-batch, the
    parts of the estimate and the peak, and ``fits`` against ``estimate.gpu_memory_gb``."""
    limit = study.estimate.gpu_memory_gb
    fitting = [p.fits for p in plans.values() if p.fits is not None]
    verdict = (f"{sum(fitting)} of {len(fitting)} GPU runs fit {limit:g} GB" if fitting
               else "CPU runs: no GPU memory to fit")
    title = (f"{study.name}: memory per GPU (ESTIMATE from the shapes, GB = 1e9 bytes); "
             f"{verdict}")
    table = Table(title=title, title_justify="left", caption_justify="left")
    for col in ("#", "run_id", "model", "layout", "GPUs", "micro"):
        table.add_column(col)
    for col in ("params", "grads", "optim", "activ.", "comm", "peak GB", "fits"):
        table.add_column(col, justify="right")
    for i, spec in enumerate(specs):
        p = plans[spec.run_id]
        layout = f"auto: {p.layout}" if spec.train.layout == "auto" and p.ranks > 1 else p.layout
        gpus = f"{p.ranks}" + (f" ({p.nodes} nodes)" if p.nodes > 1 else "")
        micro = f"{p.micro_batch}" + (f" x{p.accumulation}" if p.accumulation > 1 else "")
        micro += " ckpt" if p.checkpointing else ""
        fits = {None: "[dim]cpu", True: "[green]yes", False: "[bold red]NO"}[p.fits]
        table.add_row(str(i), spec.run_id, p.spec, layout, gpus, micro, _gb(p.params_gb),
                      _gb(p.grads_gb), _gb(p.optimizer_gb), _gb(p.activations_gb),
                      _gb(p.comm_gb), _gb(p.peak_gb), fits)
    table.caption = (
        "params: fp32 weights held (+ their bf16 copy under autocast); grads fp32; optim: "
        "AdamW's two moments; activ.: one micro-batch's saved tensors (micro: images per rank "
        "and pass, xN passes per step, ckpt: activation checkpointing); comm: DDP buckets, FSDP "
        "gathers, all-to-all buffers. peak: the larger of the backward and the optimizer step "
        "(docs/memory.md). cpu: a CPU run, no GPU limit.")
    return table
