"""What the command groups share: the study's arguments, and the checks of the paths a command
writes, made before anything runs."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Annotated

import typer

from harness.errors import HarnessError

StudyArg = Annotated[Path, typer.Argument(help="Study file (YAML), e.g. studies/quickstart.yaml")]
SetOpt = Annotated[list[str] | None, typer.Option(
    "--set", help="Override a field: key.path=value (repeatable), e.g. train.steps=50")]
ProfileOpt = Annotated[str | None, typer.Option(help="Profile of the study file (laptop, cluster)")]
ResultsOpt = Annotated[Path | None, typer.Option(
    help="Results root (default: $MOE_HARNESS_RESULTS or ./results)")]


def finite(value: float | None) -> float | None:
    """A float option's callback: NaN and infinities are refused (typer's ``min`` lets them
    through)."""
    if value is not None and not math.isfinite(value):
        raise typer.BadParameter(f"{value}; allowed: a finite number")
    return value


def positive(value: float | None) -> float | None:
    """A float option's callback: a finite number above 0."""
    if finite(value) is not None and value <= 0:
        raise typer.BadParameter(f"{value}; allowed: a number above 0")
    return value


def load_study(study: Path, set_: list[str] | None, profile: str | None):
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


def output_file(path: Path | None, option: str) -> Path | None:
    """``path`` if a file can be written there: its folder exists and it is not a folder."""
    if path is None:
        return None
    if path.is_dir():
        raise HarnessError(f"{option} {path}: is a folder; give a file name")
    if not path.parent.is_dir():
        raise HarnessError(f"{option} {path}: no such folder {path.parent}; create it first")
    return path


def save_json(path: Path | None, payload) -> None:
    """Write ``payload`` as JSON to ``path`` (checked earlier with ``output_file``), if given."""
    if path is not None:
        path.write_text(json.dumps(payload, indent=1) + "\n")


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
