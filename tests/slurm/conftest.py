"""A real one-node SLURM cluster for the tests in this folder.

The session-scoped fixture ``slurm_cluster`` runs ``start-cluster.sh`` (as root: it installs
Debian's slurm and munge packages if missing, and starts munged, slurmctld, slurmd and, where
possible, MariaDB + slurmdbd for ``sacct``), exports ``SLURM_CONF`` for the session so that
sbatch/squeue/sacct (and so submitit) talk to it, and runs ``stop-cluster.sh`` at the end of
the session if it was this session that started the cluster.

Where it cannot run (not root and no cluster already up; no slurm and no apt-get) the tests
are skipped with the reason, except under ``CI``, where they fail instead: CI runs as root and
must exercise the real cluster.

Environment: ``MOE_SLURM_DIR`` (cluster folder, default /tmp/moe-harness-slurm),
``MOE_SLURM_ACCOUNTING`` (0 / 1 / auto, see start-cluster.sh), ``MOE_SLURM_KEEP=1`` (leave
the cluster running after the session).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
START = HERE / "start-cluster.sh"
STOP = HERE / "stop-cluster.sh"
# first start may include apt-get install of slurm, munge, mariadb-server, slurmdbd
START_TIMEOUT_S = 900


@dataclass(frozen=True)
class SlurmCluster:
    folder: Path  # everything of the cluster: conf, state, logs, pids, database
    conf: Path  # slurm.conf; SLURM_CONF points here for the whole session
    partition: str  # the only partition, the default one
    accounting: bool  # slurmdbd is up: sacct works (and so submitit's job states)

    @property
    def logs(self) -> Path:
        return self.folder / "log"


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"SLURM test cluster unavailable in CI: {reason}", pytrace=False)
    pytest.skip(f"SLURM test cluster unavailable: {reason}")


def _sinfo_ok(env: dict[str, str]) -> bool:
    if not shutil.which("sinfo"):
        return False
    try:
        out = subprocess.run(
            ["sinfo", "-h", "-o", "%T"], env=env, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and any(
        s.startswith(("idle", "mix", "alloc")) for s in out.stdout.split()
    )


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    folder = Path(os.environ.get("MOE_SLURM_DIR", "/tmp/moe-harness-slurm"))
    conf = folder / "etc" / "slurm.conf"
    partition = os.environ.get("MOE_SLURM_PARTITION", "debug")
    env = {**os.environ, "SLURM_CONF": str(conf), "MOE_SLURM_DIR": str(folder)}

    started_here = False
    if os.geteuid() != 0:
        # a non-root user may still use a cluster that root started
        if not (conf.exists() and _sinfo_ok(env)):
            _unavailable("start-cluster.sh needs root, and no cluster is running")
    else:
        if not shutil.which("sinfo") and not shutil.which("apt-get"):
            _unavailable("slurm is not installed and there is no apt-get to install it")
        proc = subprocess.run(
            ["bash", str(START)],
            env=env,
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT_S,
            stdin=subprocess.DEVNULL,
        )
        if proc.returncode != 0:
            # a broken start is a failure, not a skip: root with apt-get should always work
            pytest.fail(
                f"{START} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}", pytrace=False
            )
        started_here = "already running" not in proc.stderr

    acct_file = folder / "run" / "accounting"
    accounting = acct_file.exists() and acct_file.read_text().strip() == "1"
    cluster = SlurmCluster(folder=folder, conf=conf, partition=partition, accounting=accounting)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SLURM_CONF", str(conf))
        try:
            yield cluster
        finally:
            if started_here and os.environ.get("MOE_SLURM_KEEP") != "1":
                subprocess.run(["bash", str(STOP)], env=env, capture_output=True, timeout=120)
