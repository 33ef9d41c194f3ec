"""The ``inspect`` tables: a model's cost, and the paper's models beside ours."""

from __future__ import annotations

from harness.views.console import wide_console


def print_inspect(rows: list[dict]) -> None:
    """The ``inspect`` table: parameters, GFLOP/img by layer kind, and timings if measured."""
    from rich.table import Table

    from harness.cost.flops import CONVENTION

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
    console = wide_console()
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
    console = wide_console()
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
