"""The commands around the studies: ``inspect`` (a model's parameters and FLOPs), ``doctor``
(is this environment ready?) and ``schema`` (the study format, for editors)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from harness.cli.common import output_file, save_json

app = typer.Typer()


@app.command()
def inspect(
    specs: Annotated[list[str] | None, typer.Argument(
        help="Model specs, e.g. vit-s/16 vit-s/16:soft:e128:s1")] = None,
    router: Annotated[str | None, typer.Option(help="Router for every spec")] = None,
    experts: Annotated[int | None, typer.Option(help="Experts per MoE layer", min=1)] = None,
    slots: Annotated[int | None, typer.Option(help="Slots per expert (Soft MoE)", min=1)] = None,
    k: Annotated[int | None, typer.Option(help="Experts per token (Tokens Choice)", min=1)] = None,
    num_classes: Annotated[int, typer.Option(help="Classes of the head", min=1)] = 1000,
    counter: Annotated[str, typer.Option(
        help="FLOP counter: auto (= analytic: closed forms, nothing built, instant), fvcore "
             "(a traced forward), torch, meta")] = "auto",
    time_: Annotated[bool, typer.Option(
        "--time", help="Also measure inference/training throughput and peak memory")] = False,
    batch_size: Annotated[int, typer.Option(help="Batch size for --time", min=1)] = 32,
    repeats: Annotated[int, typer.Option(help="Timed repeats for --time (median)", min=1)] = 5,
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
    from harness.views.cost import print_inspect, print_paper_table

    output_file(json_out, "--json")
    if paper:
        from harness.runtime.counting import paper_table

        rows = paper_table("meta" if counter == "auto" else counter)
        print_paper_table(rows)
    else:
        from harness.runtime.measure import inspect_model
        from harness.spec.model import parse_model_spec

        if not specs:
            raise typer.BadParameter("give at least one model spec, or --paper")
        overrides = {key: value for key, value in dict(
            router=router, num_experts=experts, slots_per_expert=slots, k=k).items()
            if value is not None}
        rows = [inspect_model(parse_model_spec(spec, num_classes=num_classes).replace(
            **overrides), counter=counter, timing=time_, batch_size=batch_size,
            repeats=repeats, threads=threads) for spec in specs]
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


@app.command()
def schema(out: Annotated[Path | None, typer.Option(help="File to write")] = None) -> None:
    """Print (or write) the JSON schema of study files, for editors."""
    from harness.spec.study import json_schema

    text = json.dumps(json_schema(), indent=2) + "\n"
    if output_file(out, "--out"):
        out.write_text(text)
    else:
        print(text, end="")
