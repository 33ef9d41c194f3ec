"""The ``moe-harness`` command: its groups of commands under one root, help texts that wrap
to the terminal, and one line on stderr for every failure a user can cause."""

from __future__ import annotations

import inspect
import os
import sys
from typing import Annotated

import typer

from harness.cli.bench import app as bench_app
from harness.cli.data import app as data_app
from harness.cli.study import app as study_app
from harness.cli.tools import app as tools_app
from harness.cli.tune import app as tune_app
from harness.errors import HarnessError

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


def _unwrapped(text: str) -> str:
    """``text`` with each paragraph on one line, for the help to wrap at the terminal's width
    (a docstring's own line breaks would stay in it)."""
    return "\n\n".join(" ".join(p.split()) for p in inspect.cleandoc(text).split("\n\n"))


def _tidy_help(group: typer.Typer) -> None:
    for info in group.registered_commands:
        info.help = _unwrapped(info.help or inspect.getdoc(info.callback) or "")
    for sub in group.registered_groups:
        _tidy_help(sub.typer_instance)


for _group in (tools_app, study_app, tune_app):  # their commands at the top, in this order
    app.registered_commands += _group.registered_commands
app.add_typer(bench_app, name="bench")
app.add_typer(data_app, name="data")
_tidy_help(app)


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
