"""Errors a user can cause. The CLI prints them on one line and exits 2."""

from __future__ import annotations


class HarnessError(Exception):
    """A mistake in user input (study file, CLI flag, spec string, data path).

    The message names the file (when there is one), the field and what is allowed.
    """

    exit_code = 2


class ConfigError(HarnessError, ValueError):
    """An invalid model or layer configuration (bad shape, unknown name, impossible value)."""


class Interrupted(HarnessError):
    """The user stopped a command (Ctrl-C, SIGTERM); the message says what stopped and how to
    go on."""

    exit_code = 130


def shorten(value: object, width: int = 80) -> str:
    """``repr(value)`` cut to ``width`` characters, for echoing user input in an error."""
    text = repr(value)
    return text if len(text) <= width else text[: width - 1] + "…"
