"""The sbatch of a multi-node run (``executor.slurm.nodes``), checked without a cluster."""

from __future__ import annotations

import re

import pytest
from slurm.test_slurm_runner import write_study

from harness.errors import HarnessError
from harness.spec.study import load
from runners.slurm import executor_parameters


def sbatch_of(study, folder) -> str:
    """The submission file submitit would write for ``study``'s jobs."""
    import submitit
    from submitit.slurm.slurm import SlurmExecutor

    with pytest.MonkeyPatch.context() as patch:  # no srun needed to write the file
        patch.setattr(SlurmExecutor, "affinity", classmethod(lambda cls: 1))
        executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
    executor.update_parameters(**executor_parameters(study))
    return executor._executor._make_submission_file_text("python -m job", "uid")


def test_two_node_run_has_nodes_tasks_and_gpus_per_node(tmp_path):
    path = write_study(tmp_path, "two", grid={"seed": [0]}, slurm={
        "gpus_per_run": 16, "nodes": 2, "cpus_per_run": 112, "mem_gb": 480})
    study = load(path, ["train.gpus=16"])
    text = sbatch_of(study, tmp_path / "sub")
    flags = dict(re.findall(r"#SBATCH --([\w-]+)=(\S+)", text))
    assert flags["nodes"] == "2"
    assert flags["ntasks-per-node"] == "8" and flags["gpus-per-node"] == "8"
    assert flags["cpus-per-task"] == "7"  # 112 CPUs per run over its 16 tasks
    assert flags["mem"] == "480GB"  # per node
    assert "srun" in text  # one task per GPU on each node, started by srun

    one = sbatch_of(load(write_study(tmp_path, "one", grid={"seed": [0]},
                                     slurm={"gpus_per_run": 8})), tmp_path / "sub1")
    flags = dict(re.findall(r"#SBATCH --([\w-]+)=(\S+)", one))
    assert flags.get("nodes", "1") == "1" and flags["ntasks-per-node"] == "8"


@pytest.mark.parametrize("slurm", ({"gpus_per_run": 12, "nodes": 8}, {"nodes": 2}))
def test_nodes_must_split_the_gpus_evenly(tmp_path, slurm):
    path = write_study(tmp_path, "bad", grid={"seed": [0]}, slurm=slurm)
    with pytest.raises(HarnessError, match=r"executor.slurm: nodes: \d nodes need "
                                           r"gpus_per_run divisible by them"):
        load(path)
