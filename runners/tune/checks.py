"""What the ``tune`` command checks when a call ends: whether it reached the trials it was
asked for (its storage is checked before it starts: ``harness.results.storage``)."""

from __future__ import annotations

from typing import Any


def fell_short(summary: dict[str, Any], *, wait: bool) -> bool:
    """Whether a ``tune`` call failed (``summary``: what ``tune()`` returned): a worker ended
    early, or fewer trials than asked are finished although the call followed its workers to
    the end (local ones always, SLURM ones with ``wait``)."""
    followed = summary["executor"] != "slurm" or wait
    return bool(summary["worker_errors"]) or (
        summary["after"]["finished"] < summary["trials"] and followed)
