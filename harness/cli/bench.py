"""``moe-harness bench``: the layer, training, input-pipeline, report, all-to-all and
tracking benchmarks."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from harness.cli.common import output_file, positive, save_json

app = typer.Typer(no_args_is_help=True,
                  help="Benchmarks (layers, train, data, report, tracking, all-to-all).")

OutOpt = Annotated[Path | None, typer.Option(help="Write the results as JSON")]


def _progress(line: str) -> None:
    """A benchmark's progress line, shown at once."""
    print(line, flush=True)


def _choice(value: str, allowed: tuple[str, ...], option: str) -> str:
    if value not in allowed:
        raise typer.BadParameter(f"{value!r}; allowed: {', '.join(allowed)}", param_hint=option)
    return value


@app.command("layers")
def bench_layers(
    dim: Annotated[int, typer.Option(help="Model width", min=1)] = 384,
    tokens: Annotated[int, typer.Option(help="Tokens per image", min=1)] = 196,
    batch: Annotated[int, typer.Option(help="Images per batch", min=1)] = 32,
    experts: Annotated[list[int] | None, typer.Option(
        help="Expert counts (repeatable; default 8 32 128)", min=1)] = None,
    slots: Annotated[list[int] | None, typer.Option(
        help="Soft MoE slots per expert (repeatable; default 1 2)", min=1)] = None,
    repeats: Annotated[int | None, typer.Option(
        help="Timed repeats per measurement (default 5, --quick 3); the comparison with "
             "soft-moe-pytorch times 2 x repeats + 1 pairs", min=1)] = None,
    quick: Annotated[bool, typer.Option(help="Fewer repeats, 1 slot only")] = False,
    reference: Annotated[bool, typer.Option(
        help="Compare with soft-moe-pytorch when installed")] = True,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:N")] = "cpu",
    precision: Annotated[str, typer.Option(
        help="fp32, or bf16 (every layer under bf16 autocast)")] = "fp32",
    out: OutOpt = None,
) -> None:
    """Forward and forward+backward time of each MLP kind at matched shapes; our Soft MoE
    against soft-moe-pytorch (interleaved, median of per-pair ratios); expert matmul rates."""
    from harness.bench import layers as bench
    from harness.views.bench import print_layers

    output_file(out, "--out")
    result = bench.bench_layers(
        dim=dim, tokens=tokens, batch=batch, experts=tuple(experts or (8, 32, 128)),
        slots=tuple(slots or ((1,) if quick else (1, 2))),
        repeats=repeats or (3 if quick else 5), warmup=1,
        compare_reference=reference, device=_bench_device(device),
        precision=_choice(precision, ("fp32", "bf16"), "--precision"),
        progress=_progress)
    print_layers(result)
    save_json(out, result)


def _bench_device(name: str) -> str:
    from harness.runtime.distributed import pick_device

    return str(pick_device(name, "--device"))


@app.command("train")
def bench_train(
    specs: Annotated[list[str], typer.Argument(
        help="Model specs, e.g. vit-s/16 vit-s/16:soft:e128:s1 (the first is the 'x first' "
             "baseline)")],
    batch_size: Annotated[int, typer.Option(help="Images per training step", min=1)] = 32,
    precision: Annotated[str, typer.Option(
        help="auto (bf16 autocast on GPU, fp32 on CPU), bf16, fp32")] = "auto",
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N")] = "auto",
    repeats: Annotated[int, typer.Option(help="Timed steps (median)", min=1)] = 10,
    warmup: Annotated[int, typer.Option(help="Untimed steps first", min=0)] = 3,
    rounds: Annotated[int, typer.Option(
        help="Time again, up to this many rounds, while the spread or other processes' CPU "
             "use is high; then flag", min=1)] = 3,
    threads: Annotated[int | None, typer.Option(
        help="torch CPU threads (default: torch's count), recorded", min=1)] = None,
    counter: Annotated[str, typer.Option(
        help="FLOP counter: analytic (closed form), fvcore, torch")] = "analytic",
    num_classes: Annotated[int, typer.Option(help="Classes of the head", min=1)] = 1000,
    peak_tflops: Annotated[float | None, typer.Option(
        help="The device's dense peak TFLOP/s at this precision (a GPU the table lacks, or "
             "a CPU): MFU is measured against it", callback=positive)] = None,
    out: Annotated[Path | None, typer.Option(
        help="Write the results as JSON (a study's estimate.from_bench reads it)")] = None,
) -> None:
    """Training steps/s, images/s, achieved TFLOP/s and its share of the device's peak (MFU;
    on a CPU, of the measured large-matmul rate)."""
    from harness.bench.train import bench_train as run_bench
    from harness.views.bench import print_train

    _choice(counter, ("analytic", "fvcore", "torch"), "--counter")
    output_file(out, "--out")
    result = run_bench(specs, batch_size=batch_size, precision=precision, device=device,
                       repeats=repeats, warmup=warmup, rounds=rounds, threads=threads,
                       counter=counter,
                       num_classes=num_classes, peak_tflops=peak_tflops,
                       progress=_progress)
    print_train(result)
    save_json(out, result)


@app.command("report")
def bench_report(
    records: Annotated[int, typer.Option(help="Synthetic records in the store", min=1)] = 10_000,
) -> None:
    """Time `report` (read the store, aggregate, fronts, figures, claims, page) over synthetic
    records; the target is under 5 s for 10,000 on 2 cores."""
    from harness.bench.report import main as bench_main

    bench_main([str(records)])


@app.command("data")
def bench_data(
    path: Annotated[Path | None, typer.Option(
        help="An imagefolder of JPEGs (default: write a temporary one)")] = None,
    image_size: Annotated[int, typer.Option(help="Training image size", min=1)] = 224,
    resolution: Annotated[int, typer.Option(help="Prepared shards' resolution", min=1)] = 256,
    images: Annotated[int, typer.Option(help="Images to write when no --path", min=1)] = 512,
    workers: Annotated[list[int] | None, typer.Option(
        help="Worker processes (repeatable; default 1 and 2)", min=1)] = None,
    batch: Annotated[int, typer.Option(help="Batch size", min=1)] = 64,
    batches: Annotated[int, typer.Option(help="Timed batches per pass", min=1)] = 6,
    repeats: Annotated[int, typer.Option(help="Passes (median)", min=1)] = 3,
    augment: Annotated[bool, typer.Option(help="Training augmentation (crop, flip)")] = True,
    out: Annotated[Path | None, typer.Option(help="Also write the result as JSON")] = None,
) -> None:
    """Images/s of each input source (JPEG imagefolder, prepared shards, in-memory tensors)
    through N DataLoader worker processes; with 1 worker, one CPU core's rate."""
    from harness.bench.data import bench_data as run_bench
    from harness.views.bench import print_data

    output_file(out, "--out")
    result = run_bench(path, image_size=image_size, resolution=resolution, images=images,
                       workers=tuple(workers or (1, 2)), batch=batch, batches=batches,
                       repeats=repeats, augment=augment,
                       progress=_progress)
    print_data(result)
    save_json(out, result)


@app.command("all-to-all")
def bench_all_to_all(
    ranks: Annotated[int, typer.Option(
        help="Processes (ranks) on this machine", min=1, max=256)] = 2,
    dim: Annotated[int, typer.Option(help="Model width", min=1)] = 384,
    tokens: Annotated[int, typer.Option(help="Tokens per image", min=1)] = 196,
    batch: Annotated[int, typer.Option(help="Images per rank", min=1)] = 8,
    experts: Annotated[int, typer.Option(help="Experts (divisible by --ranks)", min=1)] = 32,
    slots: Annotated[int, typer.Option(help="Slots per expert", min=1)] = 1,
    repeats: Annotated[int, typer.Option(help="Timed repeats", min=1)] = 10,
    threads: Annotated[int, typer.Option(help="torch CPU threads per rank", min=1)] = 1,
    device: Annotated[str, typer.Option(help="cpu (gloo) or cuda (NCCL, one GPU a rank)")] =
        "cpu",
    out: OutOpt = None,
) -> None:
    """The all-to-all overhead of a Soft MoE layer with its experts sharded over --ranks
    processes: its share of the layer's forward+backward time."""
    from harness.bench.all_to_all import bench_all_to_all as run_bench
    from harness.views.bench import print_all_to_all

    output_file(out, "--out")
    result = run_bench(ranks=ranks, dim=dim, tokens=tokens, batch=batch, experts=experts,
                       slots=slots, repeats=repeats, threads=threads,
                       device=_choice(device, ("cpu", "cuda"), "--device"))
    print_all_to_all(result)
    save_json(out, result)


@app.command("tracking")
def bench_tracking(
    steps: Annotated[int, typer.Option(help="Training steps per run", min=2)] = 150,
    repeats: Annotated[int, typer.Option(help="Interleaved pairs of runs (on, off)", min=1)] = 5,
    model: Annotated[str, typer.Option(help="Backbone")] = "vit-w64d4h4m256/4",
    router: Annotated[str, typer.Option(help="Router")] = "soft",
    batch_size: Annotated[int, typer.Option(help="Images per step", min=1)] = 128,
    threads: Annotated[int | None, typer.Option(
        help="torch CPU threads (default: all)", min=1)] = None,
    out: OutOpt = None,
) -> None:
    """The training loop's speed with TensorBoard event files on against off (the target:
    within 2%)."""
    from harness.bench.tracking import bench_tracking as run_bench
    from harness.views.bench import print_tracking

    output_file(out, "--out")
    result = run_bench(model=model, router=router, steps=steps, batch_size=batch_size,
                       repeats=repeats, threads=threads, progress=_progress)
    print_tracking(result)
    save_json(out, result)
