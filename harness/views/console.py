"""The terminal every view prints to."""

from __future__ import annotations

import sys

#: Columns of a console whose output is piped (a log file, CI): wide enough that tables keep
#: whole values.
PIPED_WIDTH = 250


def wide_console(*, stderr: bool = False, record: bool = False):
    """A rich console: the terminal's width on a terminal, else ``PIPED_WIDTH`` columns."""
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    return Console(width=None if stream.isatty() else PIPED_WIDTH, stderr=stderr, record=record)
