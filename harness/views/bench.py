"""The ``bench`` tables: layers, training steps, the input pipeline."""

from __future__ import annotations

from typing import Any

from harness.cost.flops import CONVENTION
from harness.views.console import wide_console


def print_layers(result: dict[str, Any]) -> None:
    """The ``bench layers`` table."""
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
    console = wide_console()
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


def print_train(result: dict[str, Any]) -> None:
    """The ``bench train`` table and its footnote."""
    from rich.table import Table

    machine, rows = result["machine"], result["rows"]
    ref = "MFU (of peak)" if machine["peak_tflops"] else "% of matmul"
    table = Table(title=f"Training step, batch {machine['batch_size']}, {machine['precision']}")
    for name in ("model", "GFLOP/img", "ms/step [p10-p90]", "steps/s", "images/s",
                 "TFLOP/s", ref, "% of matmul" if machine["peak_tflops"] else "x first",
                 "x first" if machine["peak_tflops"] else "peak MB", "timing"):
        table.add_column(name, justify="left" if name == "model" else "right")
    for row in rows:
        cells = [row["spec"], f"{row['gflops_per_image']:.3f}",
                 f"{row['step_ms']:.1f} [{row['step_ms_p10']:.1f}-{row['step_ms_p90']:.1f}]",
                 f"{row['steps_per_s']:.2f}", f"{row['images_per_s']:.1f}",
                 f"{row['achieved_tflops']:.3g}", f"{100 * row['share_of_reference']:.1f}%"]
        if machine["peak_tflops"]:
            cells += [f"{100 * row['share_of_matmul']:.1f}%", f"{row['step_vs_first']:.2f}"]
        else:
            cells += [f"{row['step_vs_first']:.2f}", "-"]
        cells.append("flagged" if row["timing_flagged"] else "ok")
        table.add_row(*cells)
    console = wide_console()
    console.print(table)
    peak = (f"peak {machine['peak_tflops']:g} TFLOP/s ({machine['peak_source']})"
            if machine["peak_tflops"] else
            "no peak table for this device: the reference is the measured matmul rate"
            + (" (give --peak-tflops for an MFU)" if machine["device_type"] == "cuda" else ""))
    console.print(
        f"{machine['device']}, torch {machine['torch_version']}, {machine['threads']} threads; "
        f"large matmul {machine['matmul_tflops_before']:.3g} / {machine['matmul_tflops_after']:.3g}"
        f" TFLOP/s before / after ({machine['precision']}); {peak}. TFLOP/s = 3 x forward FLOPs "
        f"x batch / step time ({CONVENTION}); step = forward + loss, backward, AdamW (lr 0); "
        f"median of {rows[0]['repeats'] if rows else '-'} after warm-up, timed up to "
        f"{machine['rounds']} times "
        f"while the spread or other processes' CPU use is high ('flagged' if still so); load "
        f"average {machine['loadavg_before']:.2f} before, {machine['loadavg_after']:.2f} after; "
        f"{machine['seconds']:.0f} s.")


def print_data(result: dict) -> None:
    from rich.table import Table

    table = Table(title=f"Input pipeline, {result['image_size']} px, augment "
                        f"{result['augment']}, batch {result['batch']}, {result['cpus']} CPUs")
    for col in ("source", "images per CPU-s", "workers", "images/s (wall)"):
        table.add_column(col, justify="right" if col != "source" else "left")
    for row in result["rows"]:
        table.add_row(row["source"], f"{row['images_per_cpu_s']:,.0f}", str(row["workers"]),
                      f"{row['images_per_s']:,.0f}")
    core = {r["source"]: r["images_per_cpu_s"] for r in result["rows"]}
    if "jpeg" in core and "prepared" in core:
        table.caption = (f"Per CPU core (a worker's CPU time): prepared shards "
                         f"{core['prepared'] / core['jpeg']:.0f}x JPEG (their crop and resize "
                         f"run on the device, not counted). Wall rates depend on the machine's "
                         f"load. Preparing {result['images']} + val images took "
                         f"{result['prepare_s']:.1f} s")
    wide_console().print(table)


def print_tracking(result: dict[str, Any]) -> None:
    """The ``bench tracking`` line: ms per step with the tracker off and on, their ratio
    (wall and process CPU time), and the share of the loop spent inside the tracker."""
    steps, pairs = result["steps"], len(result["ratios"])
    off, on = result["median_s"]["off"], result["median_s"]["on"]
    print(f"{result['spec']}, {steps} steps of {result['batch_size']} images, {pairs} pairs: "
          f"off {1e3 * off / steps:.2f} ms/step, on {1e3 * on / steps:.2f} ms/step; "
          f"on/off {result['ratio_on_off']:.4f} wall (median of pairs; "
          f"{', '.join(f'{r:.3f}' for r in result['ratios'])}), "
          f"{result['cpu_ratio_on_off']:.4f} process CPU time (pairs: "
          f"{', '.join(f'{r:.3f}' for r in result['cpu_ratios'])}); time inside the "
          f"tracker's calls: {100 * result['log_share']:.3f}% of the loop")


def print_all_to_all(result: dict[str, Any]) -> None:
    print(f"Soft MoE layer, {result['experts']} experts x {result['slots']} slot(s) sharded "
          f"over {result['ranks']} {result['device']} processes ({result['threads_per_rank']} "
          f"thread(s) each); per rank {result['batch']} images x {result['tokens']} tokens x "
          f"{result['dim']} dims; forward+backward, median of {result['repeats']}:")
    print(f"  layer {result['layer_ms']:.2f} ms, all-to-all {result['all_to_all_ms']:.2f} ms: "
          f"{100 * result['share']:.1f}% of the layer's time")
