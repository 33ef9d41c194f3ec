"""`doctor --slurm` against the real one-node cluster of conftest.py."""

import pytest
from helpers import cli

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def test_doctor_lists_the_clusters_partition(slurm_cluster, tmp_path):
    proc = cli("doctor", "--slurm", "--results", tmp_path, check=False)
    line = next(line for line in proc.stdout.splitlines() if line.split()[1:2] == ["slurm"])
    assert line.startswith("ok"), proc.stdout
    # the test cluster's only partition: default, up, one node, no GPUs (no gres configured)
    assert f"{slurm_cluster.partition} (default) up, 1 nodes, no GPUs" in line
