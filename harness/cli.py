"""The ``moe-harness`` command. Heavy modules (torch, plotly, optuna) load lazily inside the
commands, so ``moe-harness --help`` stays instant."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from harness.errors import HarnessError
from harness.views.console import wide_console

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Benchmark Soft MoE against sparse MoEs and dense ViTs: studies, costs, reports.",
)


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            print(f"moe-harness {version('moe-harness')}")
        except PackageNotFoundError:
            print("moe-harness (not installed as a package)")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option(
        "--version", callback=_print_version, is_eager=True,
        help="Print the version and exit")] = False,
) -> None:
    """Benchmark Soft MoE against sparse MoEs and dense ViTs: studies, costs, reports."""


@app.command()
def inspect(
    specs: Annotated[list[str] | None, typer.Argument(
        help="Model specs, e.g. vit-s/16 vit-s/16:soft:e128:s1")] = None,
    router: Annotated[str | None, typer.Option(help="Router for every spec")] = None,
    experts: Annotated[int | None, typer.Option(help="Experts per MoE layer")] = None,
    slots: Annotated[int | None, typer.Option(help="Slots per expert (Soft MoE)")] = None,
    k: Annotated[int | None, typer.Option(help="Experts per token (Tokens Choice)")] = None,
    num_classes: Annotated[int, typer.Option(help="Classes of the head")] = 1000,
    counter: Annotated[str, typer.Option(
        help="FLOP counter: auto (= analytic: closed forms, nothing built, instant), fvcore "
             "(a traced forward), torch, meta")] = "auto",
    time_: Annotated[bool, typer.Option(
        "--time", help="Also measure inference/training throughput and peak memory")] = False,
    batch_size: Annotated[int, typer.Option(help="Batch size for --time")] = 32,
    repeats: Annotated[int, typer.Option(help="Timed repeats for --time (median)")] = 5,
    threads: Annotated[int | None, typer.Option(
        help="torch CPU threads for --time (default: torch's count), recorded", min=1)] = None,
    json_out: Annotated[Path | None, typer.Option(
        "--json", help="Also write the table as JSON to this file")] = None,
    paper: Annotated[bool, typer.Option(
        "--paper", help="The paper's Tables 1/8 (S/16..H/14, Soft MoE 128E/256E): ours beside "
                        "theirs")] = False,
) -> None:
    """Parameters (total, active per token) and GFLOP/img by layer kind of one or more
    models (1 multiply-add = 2 FLOPs); --time adds measured throughput and memory."""

    from harness.runtime import measure as cost
    from harness.spec.model import parse_model_spec
    from harness.views.cost import print_inspect, print_paper_table

    output_file(json_out, "--json")
    if paper:
        from harness.runtime.counting import paper_table

        rows = paper_table("meta" if counter == "auto" else counter)
        print_paper_table(rows)
    else:
        if not specs:
            raise typer.BadParameter("give at least one model spec, or --paper")
        overrides = {key: value for key, value in dict(
            router=router, num_experts=experts, slots_per_expert=slots, k=k).items()
            if value is not None}
        rows = [cost.inspect_model(
            parse_model_spec(spec, num_classes=num_classes).replace(**overrides),
            counter=counter, timing=time_, batch_size=batch_size, repeats=repeats,
            threads=threads)
            for spec in specs]
        print_inspect(rows)
    save_json(json_out, rows)


@app.command()
def doctor(
    results: Annotated[Path | None, typer.Option(
        help="Results root to check (default: $MOE_HARNESS_RESULTS or ./results)")] = None,
    storage: Annotated[str | None, typer.Option(
        help="Also check that this Optuna storage URL is reachable")] = None,
    gpu: Annotated[bool, typer.Option("--gpu", help="A CUDA device is required")] = False,
    slurm: Annotated[bool, typer.Option("--slurm", help="SLURM is required")] = False,
    json_: Annotated[bool, typer.Option("--json", help="Print the checks as JSON")] = False,
) -> None:
    """Is this environment ready? Python, torch (CUDA, cuDNN, NCCL), GPUs, xformers, fvcore,
    the results root, SLURM, an Optuna storage: one line each. Exit 1 if a check fails (a
    missing GPU only warns, unless --gpu; SLURM likewise with --slurm), else 0."""
    from harness.results.store import results_root
    from harness.runtime.doctor import as_json, print_checks, run_checks

    checks = run_checks(results_root(results), storage, gpu=gpu, slurm=slurm)
    if json_:
        print(json.dumps(as_json(checks), indent=1))
    else:
        print_checks(checks)
    if any(c.status == "fail" for c in checks):
        raise typer.Exit(1)


# --- micro-benchmarks ----------------------------------------------------------------------
bench_app = typer.Typer(no_args_is_help=True,
                        help="Benchmarks (layers, train, data, report, tracking, all-to-all).")
app.add_typer(bench_app, name="bench")


@bench_app.command("layers")
def bench_layers(
    dim: Annotated[int, typer.Option(help="Model width")] = 384,
    tokens: Annotated[int, typer.Option(help="Tokens per image")] = 196,
    batch: Annotated[int, typer.Option(help="Images per batch")] = 32,
    experts: Annotated[list[int] | None, typer.Option(
        help="Expert counts (repeatable; default 8 32 128)")] = None,
    slots: Annotated[list[int] | None, typer.Option(
        help="Soft MoE slots per expert (repeatable; default 1 2)")] = None,
    repeats: Annotated[int | None, typer.Option(
        help="Timed repeats per measurement (default 5, --quick 3); the comparison with "
             "soft-moe-pytorch times 2 x repeats + 1 pairs")] = None,
    quick: Annotated[bool, typer.Option(help="Fewer repeats, 1 slot only")] = False,
    reference: Annotated[bool, typer.Option(
        help="Compare with soft-moe-pytorch when installed")] = True,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:N")] = "cpu",
    precision: Annotated[str, typer.Option(
        help="fp32, or bf16 (every layer under bf16 autocast)")] = "fp32",
    out: Annotated[Path | None, typer.Option(help="Write the results as JSON")] = None,
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
        progress=lambda line: print(line, flush=True))
    print_layers(result)
    save_json(out, result)


def _choice(value: str, allowed: tuple[str, ...], option: str) -> str:
    if value not in allowed:
        raise typer.BadParameter(f"{value!r}; allowed: {', '.join(allowed)}", param_hint=option)
    return value


def _bench_device(name: str) -> str:
    from harness.runtime.distributed import pick_device

    return str(pick_device(name, "--device"))


@bench_app.command("train")
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
             "a CPU): MFU is measured against it")] = None,
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
                       progress=lambda line: print(line, flush=True))
    print_train(result)
    save_json(out, result)


@bench_app.command("report")
def bench_report(
    records: Annotated[int, typer.Option(help="Synthetic records in the store")] = 10_000,
) -> None:
    """Time `report` (read the store, aggregate, fronts, figures, claims, page) over synthetic
    records; the target is under 5 s for 10,000 on 2 cores."""
    from reports.bench import main as bench_main

    bench_main([str(records)])


@bench_app.command("data")
def bench_data(
    path: Annotated[Path | None, typer.Option(
        help="An imagefolder of JPEGs (default: write a temporary one)")] = None,
    image_size: Annotated[int, typer.Option(help="Training image size")] = 224,
    resolution: Annotated[int, typer.Option(help="Prepared shards' resolution")] = 256,
    images: Annotated[int, typer.Option(help="Images to write when no --path")] = 512,
    workers: Annotated[list[int] | None, typer.Option(
        help="Worker processes (repeatable; default 1 and 2)")] = None,
    batch: Annotated[int, typer.Option(help="Batch size")] = 64,
    batches: Annotated[int, typer.Option(help="Timed batches per pass")] = 6,
    repeats: Annotated[int, typer.Option(help="Passes (median)")] = 3,
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
                       progress=lambda line: print(line, flush=True))
    print_data(result)
    save_json(out, result)


@bench_app.command("all-to-all")
def bench_all_to_all(
    ranks: Annotated[int, typer.Option(help="Processes (ranks) on this machine")] = 2,
    dim: Annotated[int, typer.Option(help="Model width")] = 384,
    tokens: Annotated[int, typer.Option(help="Tokens per image")] = 196,
    batch: Annotated[int, typer.Option(help="Images per rank")] = 8,
    experts: Annotated[int, typer.Option(help="Experts (divisible by --ranks)")] = 32,
    slots: Annotated[int, typer.Option(help="Slots per expert")] = 1,
    repeats: Annotated[int, typer.Option(help="Timed repeats")] = 10,
    threads: Annotated[int, typer.Option(help="torch CPU threads per rank")] = 1,
    device: Annotated[str, typer.Option(help="cpu (gloo) or cuda (NCCL, one GPU a rank)")] =
        "cpu",
    out: Annotated[Path | None, typer.Option(help="Write the results as JSON")] = None,
) -> None:
    """The all-to-all overhead of a Soft MoE layer with its experts sharded over --ranks
    processes: its share of the layer's forward+backward time."""

    from harness.bench.all_to_all import bench_all_to_all as run_bench
    from harness.bench.all_to_all import print_all_to_all

    output_file(out, "--out")
    result = run_bench(ranks=ranks, dim=dim, tokens=tokens, batch=batch, experts=experts,
                       slots=slots, repeats=repeats, threads=threads,
                       device=_choice(device, ("cpu", "cuda"), "--device"))
    print_all_to_all(result)
    save_json(out, result)


@bench_app.command("tracking")
def bench_tracking(
    steps: Annotated[int, typer.Option(help="Training steps per run")] = 150,
    repeats: Annotated[int, typer.Option(help="Interleaved pairs of runs (on, off)")] = 5,
    model: Annotated[str, typer.Option(help="Backbone")] = "vit-w64d4h4m256/4",
    router: Annotated[str, typer.Option(help="Router")] = "soft",
    batch_size: Annotated[int, typer.Option(help="Images per step")] = 128,
    threads: Annotated[int | None, typer.Option(help="torch CPU threads (default: all)")] = None,
    out: Annotated[Path | None, typer.Option(help="Write the results as JSON")] = None,
) -> None:
    """The training loop's speed with TensorBoard event files on against off (the target:
    within 2%)."""

    from harness.bench.tracking import bench_tracking as run_bench

    output_file(out, "--out")
    result = run_bench(model=model, router=router, steps=steps, batch_size=batch_size,
                       repeats=repeats, threads=threads,
                       progress=lambda line: print(line, flush=True))
    off, on = result["median_s"]["off"], result["median_s"]["on"]
    print(f"{result['spec']}, {steps} steps of {batch_size} images, {repeats} pairs: "
          f"off {1e3 * off / steps:.2f} ms/step, on {1e3 * on / steps:.2f} ms/step; "
          f"on/off {result['ratio_on_off']:.4f} wall (median of pairs; "
          f"{', '.join(f'{r:.3f}' for r in result['ratios'])}), "
          f"{result['cpu_ratio_on_off']:.4f} process CPU time (pairs: "
          f"{', '.join(f'{r:.3f}' for r in result['cpu_ratios'])}); time inside the "
          f"tracker's calls: {100 * result['log_share']:.3f}% of the loop")
    save_json(out, result)


# --- data ----------------------------------------------------------------------------------
data_app = typer.Typer(no_args_is_help=True, help="Datasets: prepare and verify shards.")
app.add_typer(data_app, name="data")


@data_app.command("prepare")
def data_prepare(
    src: Annotated[Path, typer.Argument(help="An imagefolder: SRC/train/CLASS/*, SRC/val/...")],
    out: Annotated[Path, typer.Argument(help="An empty folder for the shards")],
    resolution: Annotated[int, typer.Option(help="Square side in pixels (shorter side, "
                                                 "center crop)")] = 256,
    shard_size: Annotated[int, typer.Option(help="Images per shard")] = 1024,
    workers: Annotated[int | None, typer.Option(
        help="Decoding processes (default: the CPUs this process may use)")] = None,
) -> None:
    """Decode an imagefolder once into fixed-size uint8 shards with a manifest (classes,
    counts, resolution, checksums); train on them with data: {name: prepared, path: OUT}."""
    from harness.data.prepared import prepare

    manifest = prepare(src, out, resolution, shard_size=shard_size, workers=workers)
    splits = manifest["splits"]
    print(f"{out}: {splits['train']['count']} train, {splits['test']['count']} test images, "
          f"{len(manifest['classes'])} classes, {resolution} px; checksum "
          f"{manifest['checksum'][:16]}")


@data_app.command("verify")
def data_verify(
    path: Annotated[Path, typer.Argument(help="A folder written by data prepare")],
) -> None:
    """Recompute every shard's checksum against the manifest."""
    from harness.data.prepared import verify

    manifest = verify(path)
    print(f"{path}: ok ({sum(len(s['shards']) for s in manifest['splits'].values())} shards, "
          f"checksum {manifest['checksum'][:16]})")


# --- studies -------------------------------------------------------------------------------
StudyArg = Annotated[Path, typer.Argument(help="Study file (YAML), e.g. studies/quickstart.yaml")]
SetOpt = Annotated[list[str] | None, typer.Option(
    "--set", help="Override a field: key.path=value (repeatable), e.g. train.steps=50")]
ProfileOpt = Annotated[str | None, typer.Option(help="Profile of the study file (laptop, cluster)")]
ResultsOpt = Annotated[Path | None, typer.Option(
    help="Results root (default: $MOE_HARNESS_RESULTS or ./results)")]


def _load(study: Path, set_: list[str] | None, profile: str | None):
    """The study, validated whole: its ``tune`` section too, whatever the command."""
    from harness.spec.study import load

    spec = load(study, set_ or [], profile)
    if spec.tune is not None:
        from runners.tune import parse

        parse(spec)
    return spec


def keep_study(spec, store) -> None:
    """A copy of the study file in the store, for the report (which reads no study file)."""
    if spec.source:
        store.keep_study(Path(spec.source).read_text())


def save_json(path: Path | None, payload) -> None:
    """Write ``payload`` as JSON to ``path`` (checked earlier with ``output_file``), if given."""
    if path is not None:
        path.write_text(json.dumps(payload, indent=1) + "\n")


def output_file(path: Path | None, option: str) -> Path | None:
    """``path`` if a file can be written there: its folder exists and it is not a folder."""
    if path is None:
        return None
    if path.is_dir():
        raise HarnessError(f"{option} {path}: is a folder; give a file name")
    if not path.parent.is_dir():
        raise HarnessError(f"{option} {path}: no such folder {path.parent}; create it first")
    return path


def writable_store(results: Path | None, study_name: str):
    """The study's store, its folder created and writable, or one line saying why not."""
    from harness.results.store import Store, results_root

    store = Store(results_root(results), study_name)
    try:
        store.dir.mkdir(parents=True, exist_ok=True)
        probe = store.dir / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise HarnessError(f"--results {store.root}: cannot write results there "
                           f"({err.strerror or err})") from None
    return store


@app.command()
def run(
    study: StudyArg,
    set_: SetOpt = None,
    profile: ProfileOpt = None,
    results: ResultsOpt = None,
    executor: Annotated[str | None, typer.Option(help="local (default), debug, slurm")] = None,
    max_parallel: Annotated[int | None, typer.Option(
        help="Local runs at the same time", min=1)] = None,
    dry_run: Annotated[bool, typer.Option(help="Print the expanded runs and exit")] = False,
    rerun: Annotated[bool, typer.Option(help="Redo every run, done or not")] = False,
    retry_failed: Annotated[bool, typer.Option(help="Redo only the failed runs")] = False,
    wait: Annotated[bool, typer.Option(help="SLURM: follow the jobs until they end")] = False,
    quiet: Annotated[bool, typer.Option(help="No live progress display")] = False,
    force: Annotated[bool, typer.Option(
        help="Submit runs whose memory estimate exceeds the GPU's memory")] = False,
) -> None:
    """Run a study's pending runs (skips finished ones); --dry-run shows the plan.

    GPU runs whose estimated peak memory per GPU exceeds estimate.gpu_memory_gb are
    refused before anything is submitted, one line each with what would fit (exit 2);
    --force submits them anyway. train.layout auto takes the cheapest layout that fits.

    --executor slurm: one job array; returns at once, printing the job ids and
    the log folder (--wait follows the jobs). The study's executor.slurm section
    sets partition, account, qos, time_min, gpus_per_run, cpus_per_run, mem_gb,
    constraint, array_parallelism, extra_sbatch and setup; override any of them
    with --set executor.slurm.KEY=VALUE, e.g. --set executor.slurm.partition=gpu.
    """
    from harness.results.store import Store, results_root
    from runners import check_executor, dispatch, plan

    console = wide_console()
    spec = _load(study, set_, profile)
    check_executor(executor or spec.executor.name, "--executor")
    store = (Store(results_root(results), spec.name) if dry_run
             else writable_store(results, spec.name))
    the_plan = plan(spec, store, rerun=rerun, retry_failed=retry_failed)
    from harness.cost.memory import study_plans

    memory = study_plans(spec, the_plan.specs)
    if dry_run:
        from harness.cost.estimate import data_path_notes, data_supply_notes
        from harness.views.memory import memory_table
        from harness.views.runs import plan_table

        console.print(plan_table(spec, the_plan))
        console.print(memory_table(spec, the_plan.specs, memory))
        for line in data_supply_notes(spec, the_plan.specs) + data_path_notes(spec):
            console.print(line, style="bold red" if line.startswith("DATA-BOUND") else
                          "yellow" if line.startswith("WARNING") else None)
        return
    if not the_plan.todo:
        what = "failed runs to retry" if retry_failed else "pending runs"
        console.print(f"Nothing to do: no {what}; {the_plan.done} of {len(the_plan.specs)} "
                      f"runs of {spec.name} are done ({store.runs_dir}).")
        if the_plan.failed and not retry_failed:
            console.print(f"{the_plan.failed} failed: --retry-failed runs them again.")
        return
    todo = fitting(spec, the_plan.todo, memory, force, console)
    keep_study(spec, store)
    console.print(f"{spec.name}: {len(the_plan.todo)} to run, {the_plan.done} done of "
                  f"{len(the_plan.specs)}")
    summary = dispatch(spec, todo, results_root=store.root, executor=executor,
                       max_parallel=max_parallel, show_progress=not quiet, wait=wait)
    if summary.waited:
        console.print(f"{summary.submitted} runs: {summary.ok} ok, {summary.failed} failed, "
                      f"{summary.diverged} diverged -> {store.runs_dir}")
    if summary.failed:
        raise typer.Exit(1)


def fitting(study, specs, memory, force: bool, console) -> list:
    """``specs`` with ``train.layout: auto`` resolved (the choice printed), after refusing,
    unless ``force``, every GPU run whose memory estimate exceeds the GPU's: one line per
    run on stderr, then one error (exit 2) before anything is submitted."""
    from collections import Counter

    from harness.cost.memory import unfit, with_layout

    lines = unfit(study, specs, memory)
    if lines and not force:
        for line in lines:
            print(line, file=sys.stderr)
        raise HarnessError(
            f"{study.source or study.name}: {len(lines)} of {len(specs)} runs need more than "
            f"estimate.gpu_memory_gb = {study.estimate.gpu_memory_gb:g} GB per GPU (above, "
            "with what would fit); nothing was submitted; --force submits them anyway")
    if lines:
        console.print(f"[yellow]--force: {len(lines)} runs may run out of GPU memory")
    chosen = Counter(memory[s.run_id].layout for s in specs
                     if s.train.layout == "auto" and memory[s.run_id].ranks > 1)
    if chosen:
        console.print("train.layout auto (the cheapest layout that fits): " + ", ".join(
            f"{layout} for {n} runs" for layout, n in chosen.most_common()))
    return [with_layout(s, memory[s.run_id]) for s in specs]


@app.command()
def status(study: StudyArg, set_: SetOpt = None, profile: ProfileOpt = None,
           results: ResultsOpt = None) -> None:
    """Every run's state (done / failed / diverged / pending / scheduler states) and metrics."""

    from harness.results.store import Store, results_root
    from harness.views.runs import status_table
    from runners.slurm import live_view

    spec = _load(study, set_, profile)
    store = Store(results_root(results), spec.name)
    live = live_view(store) if store.slurm_jobs_file.exists() else {}
    wide_console().print(status_table(spec, store, live))


@app.command()
def cancel(study: StudyArg, set_: SetOpt = None, profile: ProfileOpt = None,
           results: ResultsOpt = None) -> None:
    """Cancel the study's live SLURM jobs."""
    from harness.results.store import Store, results_root
    from runners.slurm import cancel as cancel_jobs

    spec = _load(study, set_, profile)
    ids = cancel_jobs(Store(results_root(results), spec.name))
    print(f"cancelled {len(ids)} jobs: {' '.join(ids)}" if ids else "no live jobs")


@app.command()
def report(study: StudyArg, set_: SetOpt = None, profile: ProfileOpt = None,
           results: ResultsOpt = None,
           out: Annotated[Path | None, typer.Option(help="HTML file to write")] = None,
           json_out: Annotated[Path | None, typer.Option(
               "--json", help="Also write the fitted curves, compute multipliers, measured "
                              "matches and claims as JSON to this file")] = None) -> None:
    """Write the study's HTML report (default: RESULTS/STUDY/report.html)."""
    from harness.results.store import Store, results_root
    from reports.build import build_report

    spec = _load(study, set_, profile)
    output_file(json_out, "--json")
    store = (Store(results_root(results), spec.name) if output_file(out, "--out")
             else writable_store(results, spec.name))
    if spec.tune is not None:  # the report reads the tuning's summary from the store
        from runners.tune import refresh_summary

        refresh_summary(spec, store.root)
    path = build_report(spec, store, out)
    print(f"report: {path}")
    if json_out is not None:

        from reports.build import report_json

        save_json(json_out, report_json(store))
        print(f"json: {json_out}")


@app.command("plan")
def plan_command(
    study: StudyArg,
    target_quality: Annotated[float, typer.Option(
        "--target-quality", help="Quality to reach, in the metric's units (accuracy 0..1)")],
    quality: Annotated[str | None, typer.Option(
        help="Quality metric (default: the report's primary one, e.g. test_accuracy)")] = None,
    json_out: Annotated[Path | None, typer.Option(
        "--json", help="Also write the plan as JSON to this file")] = None,
    set_: SetOpt = None,
    profile: ProfileOpt = None,
    results: ResultsOpt = None,
) -> None:
    """Predict each router's cheapest configuration that reaches --target-quality.

    Curves of quality against training compute are fitted to the finished runs; the
    candidates are the study's grid (--set train.steps=... to widen it), costed like
    run --dry-run (GFLOP/img, training exaFLOPs, GPU-hours). A prediction, with its
    95% interval; memory is not estimated.
    """

    from harness.results.store import Store, results_root
    from reports.aggregate import load_records
    from reports.plan import plan_json, plan_rows, print_plan

    spec = _load(study, set_, profile)
    output_file(json_out, "--json")
    store = Store(results_root(results), spec.name)
    rows = plan_rows(spec, load_records(store.runs_dir), target_quality, quality,
                     source=str(store.runs_dir))
    print_plan(rows, spec, wide_console())
    save_json(json_out, plan_json(rows))


@app.command()
def export(
    study: StudyArg,
    to: Annotated[str, typer.Option(
        "--to", help="parquet | csv (the per-run and aggregated tables) | mlflow")] = "parquet",
    out: Annotated[Path | None, typer.Option(
        help="parquet/csv: the per-run table's file; the aggregated one is written beside it "
             "as STEM-aggregated.EXT (default: RESULTS/STUDY/export/runs.EXT)")] = None,
    tracking_uri: Annotated[str | None, typer.Option(
        help="mlflow: a tracking server (http://HOST:PORT) or store URI (default: the "
             "study's tracking.mlflow_uri, else sqlite:///RESULTS/mlflow.db)")] = None,
    set_: SetOpt = None,
    profile: ProfileOpt = None,
    results: ResultsOpt = None,
) -> None:
    """Export a study's records: Parquet/CSV tables for polars, pandas and duckdb, or one
    MLflow run per record (idempotent: matched by run_id)."""
    from harness.results.store import Store, results_root
    from reports.export import FORMATS, export_mlflow, export_tables

    if to not in FORMATS:
        raise HarnessError(f"--to {to!r}: allowed: {', '.join(FORMATS)}")
    spec = _load(study, set_, profile)
    store = Store(results_root(results), spec.name)
    if to == "mlflow":
        counts = export_mlflow(store, spec.name, tracking_uri or spec.tracking.mlflow_uri)
        print(f"mlflow: experiment {spec.name}: " + ", ".join(
            f"{n} {what}" for what, n in counts.items()))
        return
    runs, aggregated = export_tables(store, to, out)
    print(f"runs: {runs}\naggregated: {aggregated}")


@app.command()
def tune(
    study: StudyArg,
    trials: Annotated[int | None, typer.Option(
        help="Finish this many trials in all (default: tune.trials)", min=1)] = None,
    workers: Annotated[int | None, typer.Option(
        help="Workers pulling trials from the shared storage (default: tune.workers)",
        min=1)] = None,
    executor: Annotated[str | None, typer.Option(
        help="Where workers run: local (default), debug (in this process), slurm")] = None,
    storage: Annotated[str | None, typer.Option(
        help="Optuna storage: sqlite:///PATH, journal:PATH, postgresql+psycopg2://USER@HOST/DB "
             "(default: RESULTS/STUDY/tune/optuna.db; a journal file for SLURM)")] = None,
    show: Annotated[bool, typer.Option(
        "--show", help="Print the best trial (or Pareto set) and parameter importances")] = False,
    wait: Annotated[bool, typer.Option(help="SLURM: follow the workers until they end")] = False,
    quiet: Annotated[bool, typer.Option(help="No live progress display")] = False,
    set_: SetOpt = None,
    profile: ProfileOpt = None,
    results: ResultsOpt = None,
) -> None:
    """Tune a study's `tune:` space with Optuna; running it again continues the same study."""
    from harness.results.store import results_root
    from runners import check_executor
    from runners.tune import show as show_tuning
    from runners.tune import tune as run_tuning

    spec = _load(study, set_, profile)
    if executor is not None:
        check_executor(executor, "--executor")
    for prefix in ("sqlite:///", "journal:"):  # a file storage goes into an existing folder
        if storage and storage.startswith(prefix):
            output_file(Path(storage.removeprefix(prefix)), "--storage")
    if show:
        show_tuning(spec, results_root(results), storage, wide_console())
        return
    store = writable_store(results, spec.name)
    keep_study(spec, store)
    root = store.root
    summary = run_tuning(spec, results_root=root, trials=trials, workers=workers,
                         executor=executor, storage=storage, wait=wait, show_progress=not quiet)
    if summary["worker_errors"] or summary["after"]["finished"] < summary["trials"] and (
            summary["executor"] != "slurm" or wait):
        raise typer.Exit(1)


@app.command()
def schema(out: Annotated[Path | None, typer.Option(help="File to write")] = None) -> None:
    """Print (or write) the JSON schema of study files, for editors."""
    from harness.spec.study import json_schema

    text = json.dumps(json_schema(), indent=2) + "\n"
    if output_file(out, "--out"):
        out.write_text(text)
    else:
        print(text, end="")


def _click_class(name: str) -> type[Exception]:
    """click's exception class ``name``, wherever typer takes click from (typer >= 0.29 bundles
    its own copy, older versions use the click package)."""
    return next(c for c in typer.BadParameter.__mro__ if c.__name__ == name)


def _say(text: str) -> None:
    """One line on stderr, however long or multi-line the message (e.g. an echoed value)."""
    line = " ".join(str(text).split())
    print(line if len(line) <= 500 else line[:499] + "…", file=sys.stderr)


def run_cli(argv: list[str] | None = None) -> int:
    """The command's exit status; every failure a user can cause is one line on stderr:
    usage errors exit 2 with the usage line, HarnessError exits 2 (or its own code), file
    system errors exit 2, an interrupt exits 130, an internal error exits 1 (its traceback
    with MOE_HARNESS_DEBUG=1)."""
    usage_error, click_error = _click_class("UsageError"), _click_class("ClickException")
    try:
        code = app(args=argv, prog_name="moe-harness", standalone_mode=False)
    except HarnessError as err:
        _say(f"error: {err}")
        return err.exit_code
    except typer.Exit as exit_:
        return exit_.exit_code
    except usage_error as err:
        ctx = err.ctx
        if type(err).__name__ == "NoArgsIsHelpError" and ctx is not None:
            text = ctx.get_help()  # typer's rich help prints itself and returns ""
            if text.strip():
                print(text)
            return 2
        command = ctx.command_path if ctx is not None else "moe-harness"
        if ctx is not None:
            print(ctx.get_usage(), file=sys.stderr)
        _say(f"error: {err.format_message()} (see '{command} --help')")
        return 2
    except click_error as err:
        _say(f"error: {err.format_message()}")
        return err.exit_code
    except (KeyboardInterrupt, typer.Abort):
        _say("interrupted")
        return 130
    except OSError as err:
        where = f"{err.filename}: " if err.filename else ""
        _say(f"error: {where}{err.strerror or err}")
        return 2
    except Exception as err:  # noqa: BLE001 - a bug of ours: one line, traceback on request
        if os.environ.get("MOE_HARNESS_DEBUG"):
            raise
        _say(f"internal error: {type(err).__name__}: {err} (set MOE_HARNESS_DEBUG=1 for the "
             f"traceback)")
        return 1
    return code if isinstance(code, int) else 0


def main() -> None:
    sys.exit(run_cli())


if __name__ == "__main__":
    main()
