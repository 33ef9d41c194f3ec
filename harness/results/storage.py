"""Optuna storage URLs, checked one way by ``tune`` (before it starts) and ``doctor``: what
kind a URL is, and, for a file storage, whether its file can be written. Torch-free.

- ``sqlite:///PATH``: an SQLite file;
- ``journal:PATH`` (or a path ending ``.journal``): Optuna's journal file;
- any other SQLAlchemy URL (``postgresql+psycopg2://USER@HOST:PORT/DB``): a server.

A file storage's folder must exist and be writable (nothing is created but the file, as for
every output), and its path must not be a folder.
"""

from __future__ import annotations

import os
from pathlib import Path

from harness.errors import HarnessError


def storage_kind(url: str, where: str = "--storage") -> str:
    """``journal`` or ``rdb``; anything else is a clear error naming ``where``."""
    if url.startswith("journal:") or url.endswith(".journal"):
        return "journal"
    if "://" in url:
        return "rdb"
    raise HarnessError(f"{where}: {url!r}: expected an SQLAlchemy URL (sqlite:///PATH, "
                       f"postgresql+psycopg2://USER@HOST:PORT/DB) or journal:PATH")


def storage_file(url: str) -> Path | None:
    """The file of a SQLite or journal storage; None for a server's."""
    if storage_kind(url) == "journal":
        return Path(url.removeprefix("journal:"))
    return Path(url.removeprefix("sqlite:///")) if url.startswith("sqlite:///") else None


def check_storage(url: str, where: str = "--storage") -> Path | None:
    """The file of a file storage, once it is known it can be written there (else one
    ``HarnessError`` naming ``where``); None for a server's storage (reached when opened)."""
    storage_kind(url, where)
    path = storage_file(url)
    if path is None:
        return None
    if path.is_dir():
        raise HarnessError(f"{where} {url}: {path} is a folder; give a file name")
    folder = path.parent
    if not folder.is_dir():
        raise HarnessError(f"{where} {url}: no such folder {folder}; create it first")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise HarnessError(f"{where} {url}: {folder} is not writable; pick a writable folder")
    if path.exists() and not os.access(path, os.R_OK | os.W_OK):
        raise HarnessError(f"{where} {url}: {path} is not readable and writable")
    return path
