"""The ``moe-harness`` command. Heavy modules (torch, plotly, optuna) load lazily inside the
commands, so ``moe-harness --help`` stays instant."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from harness.errors import HarnessError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Benchmark Soft MoE against sparse MoEs and dense ViTs: studies, costs, reports.",
)


@app.callback()
def _root() -> None:
    """Benchmark Soft MoE against sparse MoEs and dense ViTs: studies, costs, reports."""


@app.command()
def inspect(
    specs: Annotated[list[str], typer.Argument(help="Model specs, e.g. vit-s/16:soft:e128:s1")],
    router: Annotated[str | None, typer.Option(help="Router for every spec")] = None,
    experts: Annotated[int | None, typer.Option(help="Experts per MoE layer")] = None,
    slots: Annotated[int | None, typer.Option(help="Slots per expert (Soft MoE)")] = None,
    k: Annotated[int | None, typer.Option(help="Experts per token (Tokens Choice)")] = None,
    num_classes: Annotated[int, typer.Option(help="Classes of the head")] = 1000,
) -> None:
    """Print parameters (total and active per token) of one or more models."""
    from rich.console import Console
    from rich.table import Table

    from harness.cost import parameter_counts
    from harness.models import build, parse_model_spec

    overrides = {key: value for key, value in dict(
        router=router, num_experts=experts, slots_per_expert=slots, k=k).items()
        if value is not None}
    table = Table("model", "params total", "params active / token")
    for spec in specs:
        cfg = parse_model_spec(spec, num_classes=num_classes).replace(**overrides)
        counts = parameter_counts(build(cfg), cfg.num_tokens)
        table.add_row(cfg.spec, f"{counts['params_total']:,}", f"{counts['params_active']:,}")
    Console().print(table)


def main() -> None:
    try:
        app(standalone_mode=False)
    except HarnessError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except typer.Exit as exit_:
        sys.exit(exit_.exit_code)
    except typer.Abort:
        sys.exit(1)
    except Exception as err:  # click usage errors
        import click

        if isinstance(err, click.ClickException):
            err.show()
            sys.exit(err.exit_code)
        raise


if __name__ == "__main__":
    main()
