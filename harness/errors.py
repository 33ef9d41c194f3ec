"""Errors a user can cause. The CLI prints them on one line and exits 2."""


class HarnessError(Exception):
    """A mistake in user input (study file, CLI flag, spec string, data path).

    The message names the file (when there is one), the field and what is allowed.
    """


class ConfigError(HarnessError, ValueError):
    """An invalid model or layer configuration (bad shape, unknown name, impossible value)."""
