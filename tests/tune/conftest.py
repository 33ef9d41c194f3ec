"""A real PostgreSQL server for the tuning tests that share an Optuna storage between workers.

The session fixture ``postgres`` starts a private server: Debian's ``postgresql`` package
(installed by ``tests/provision.sh`` when missing and running as root), ``initdb`` into a
temporary folder, ``pg_ctl start`` listening on 127.0.0.1 only, on a free port, with its unix
socket in that folder too (nothing touches the system's own cluster or /etc). As root the
server runs as the ``postgres`` user (PostgreSQL refuses to run as root); otherwise as the
current user. Trust authentication on 127.0.0.1 (the server is private and short-lived). It is
stopped (``pg_ctl stop -m fast``) and its folder removed at the end of the session.

``pg_url`` gives each test its own fresh database: a SQLAlchemy URL for ``--storage``.

Where it cannot run (not root and no PostgreSQL installed) the tests are skipped with the
reason, except under ``CI``, which runs as root: there they fail instead.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import provision

START_TIMEOUT_S = 120


@dataclass(frozen=True)
class Postgres:
    host: str
    port: int
    user: str
    folder: Path

    def url(self, database: str) -> str:
        return f"postgresql+psycopg2://{self.user}@{self.host}:{self.port}/{database}"


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"PostgreSQL for the tuning tests unavailable in CI: {reason}", pytrace=False)
    pytest.skip(f"PostgreSQL unavailable: {reason}")


def _bindir() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                   key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit()
                   else 0)
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as(user: str | None, cmd: list[str]) -> list[str]:
    return ["runuser", "-u", user, "--", *cmd] if user else cmd


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    root = os.geteuid() == 0
    bindir = _bindir()
    if bindir is None:
        reason = provision("postgresql")
        if reason:
            _unavailable(f"no PostgreSQL server binaries (initdb) found: {reason}")
        bindir = _bindir()
        if bindir is None:
            pytest.fail("postgresql installed but no initdb found under /usr/lib/postgresql",
                        pytrace=False)
    run_as = "postgres" if root else None
    folder = Path(tempfile.mkdtemp(prefix="moe-harness-pg-"))
    data = folder / "data"
    if root:
        shutil.chown(folder, "postgres", "postgres")
    db_user = "postgres" if root else (os.environ.get("USER") or "postgres")
    proc = subprocess.run(_as(run_as, [str(bindir / "initdb"), "-D", str(data), "-A", "trust",
                                       "-U", db_user, "-E", "UTF8", "--no-sync"]),
                          capture_output=True, text=True, timeout=START_TIMEOUT_S)
    if proc.returncode != 0:
        shutil.rmtree(folder, ignore_errors=True)
        pytest.fail(f"initdb failed:\n{proc.stderr[-3000:]}", pytrace=False)
    port = _free_port()
    options = (f"-c listen_addresses=127.0.0.1 -p {port} -k {folder} -c fsync=off "
               f"-c synchronous_commit=off -c full_page_writes=off -c max_connections=100")
    proc = subprocess.run(_as(run_as, [str(bindir / "pg_ctl"), "-D", str(data), "-l",
                                       str(folder / "server.log"), "-w", "-t",
                                       str(START_TIMEOUT_S), "-o", options, "start"]),
                          capture_output=True, text=True, timeout=START_TIMEOUT_S + 30)
    server = Postgres(host="127.0.0.1", port=port, user=db_user, folder=folder)
    try:
        if proc.returncode != 0:
            log = (folder / "server.log").read_text()[-3000:] if (
                folder / "server.log").exists() else ""
            pytest.fail(f"pg_ctl start failed:\n{proc.stderr[-2000:]}\n{log}", pytrace=False)
        _wait(server)
        yield server
    finally:
        subprocess.run(_as(run_as, [str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast",
                                    "-w", "stop"]), capture_output=True, timeout=120)
        shutil.rmtree(folder, ignore_errors=True)


def _connect(server: Postgres, database: str = "postgres"):
    import psycopg2

    return psycopg2.connect(host=server.host, port=server.port, user=server.user,
                            dbname=database, connect_timeout=5)


def _wait(server: Postgres) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            _connect(server).close()
            return
        except Exception:  # noqa: BLE001 - starting up
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


@pytest.fixture
def pg_url(postgres: Postgres) -> str:
    """A fresh, empty database of the session's server, as a SQLAlchemy URL."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    conn = _connect(postgres)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    conn.close()
    return postgres.url(name)
