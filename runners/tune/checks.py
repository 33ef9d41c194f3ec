"""What the ``tune`` command checks around a call: the file a storage writes (before it
starts), and whether the call reached the trials it was asked for (when it ends)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

FILE_STORAGES = ("sqlite:///", "journal:")


def storage_file(url: str | None) -> Path | None:
    """The file a file storage (``sqlite:///PATH``, ``journal:PATH``) writes, whose folder
    must exist; ``None`` for a server's storage (or none given)."""
    for prefix in FILE_STORAGES:
        if url and url.startswith(prefix):
            return Path(url.removeprefix(prefix))
    return None


def fell_short(summary: dict[str, Any], *, wait: bool) -> bool:
    """Whether a ``tune`` call failed (``summary``: what ``tune()`` returned): a worker ended
    early, or fewer trials than asked are finished although the call followed its workers to
    the end (local ones always, SLURM ones with ``wait``)."""
    followed = summary["executor"] != "slurm" or wait
    return bool(summary["worker_errors"]) or (
        summary["after"]["finished"] < summary["trials"] and followed)
