"""Typed sections of a study: data, training, measurement, executor.

They live apart from ``harness.spec.study`` (grids, expansion) so that the training loop, the data
loaders and the runners depend on these small models only. Every model forbids unknown keys,
so a typo in a study file is an error that lists the allowed keys.
"""

from __future__ import annotations

import typing
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveFloat,
    PositiveInt,
    SerializerFunctionWrapHandler,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

from harness.errors import HarnessError


class Section(BaseModel):
    # No infinities or NaNs anywhere (``lr: inf`` is a mistake, not a setting).
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        """YAML's ``true`` is not the number 1: a boolean only where the field takes one."""
        field = cls.model_fields.get(info.field_name or "")
        if isinstance(value, bool) and field is not None and not accepts_bool(field.annotation):
            raise ValueError(f"expected a value of type {_type_name(field.annotation)}, "
                             f"got a boolean ({str(value).lower()})")
        return value


def accepts_bool(annotation: Any) -> bool:
    if annotation is bool or annotation is Any:
        return True
    return any(accepts_bool(arg) for arg in typing.get_args(annotation))


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


class LoaderConfig(Section):
    """How batches are loaded (``harness.data.pipeline``), not what they hold: outside the run
    id."""

    workers: int = Field(0, ge=0)  # DataLoader worker processes; 0: in the training process
    prefetch: PositiveInt = 2  # batches each worker prepares ahead
    pin_memory: bool = True  # page-locked host batches (CUDA only)


class DataConfig(Section):
    name: Literal["synthetic", "digits", "imagefolder", "cifar10", "mnist", "prepared"] = \
        "synthetic"
    path: str | None = None  # every dataset but synthetic/digits: a local folder; no downloads
    image_size: PositiveInt = 16  # images are resized (digits, folders) or generated at this size
    num_classes: PositiveInt | None = None  # synthetic: classes to generate
    train_size: PositiveInt | None = None  # synthetic: images to generate; others: a cap
    test_size: PositiveInt | None = None
    seed: int = 0  # the data's own seed: the same data for every model seed
    synthetic: dict[str, float | int] = Field(default_factory=dict)  # generator knobs
    # crop_flip (imagefolder, prepared): random resized crop + flip, eval center crop 87.5%
    augment: Literal["none", "crop_flip"] = "none"
    loader: LoaderConfig = Field(default_factory=LoaderConfig, exclude=True)

    @model_serializer(mode="wrap")
    def _without_defaults_of_later_fields(self, handler: SerializerFunctionWrapHandler):
        """``augment: none`` is left out, so that run ids from before the field stay valid."""
        out = handler(self)
        if isinstance(out, dict) and out.get("augment") == "none":
            del out["augment"]
        return out


class TrainConfig(Section):
    steps: PositiveInt = 300
    batch_size: PositiveInt = 128
    lr: PositiveFloat = 1e-3
    weight_decay: float = Field(1e-4, ge=0)
    warmup_steps: int = Field(30, ge=0)
    schedule: Literal["cosine", "rsqrt", "constant"] = "cosine"
    grad_clip: float | None = Field(1.0, gt=0)
    aux_loss_weight: float = Field(0.01, ge=0)
    eval_every: int = Field(100, ge=0)  # 0: evaluate only at the end
    checkpoint_every: int = Field(100, ge=0)  # 0: no checkpoints
    eval_batch_size: PositiveInt = 256
    fewshot_shots: int = Field(10, ge=0)  # 0: no few-shot probe
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on GPU
    threads: PositiveInt | None = None  # torch CPU threads for this run
    gpus: PositiveInt = 1  # > 1: one run across this many GPUs (processes, ranks)
    # How the run is spread over its ranks; none of these change what is computed, so they
    # stay out of the run id (``RunSpec.canonical_json``). ddp: everything replicated;
    # fsdp: parameters, gradients and optimizer states sharded (FSDP2); experts: each MoE
    # layer's experts sharded over the ranks (all-to-all), the rest data-parallel;
    # experts+fsdp: both; auto: the cheapest layout whose memory estimate fits.
    layout: Literal["auto", "ddp", "fsdp", "experts", "experts+fsdp"] = "auto"
    micro_batch_size: PositiveInt | None = None  # per rank; unset: batch_size / gpus
    activation_checkpointing: bool = False  # recompute each block's activations in backward


# TrainConfig fields that say how a run is laid out, not what it computes.
LAYOUT_FIELDS = frozenset({"layout", "micro_batch_size", "activation_checkpointing"})


class MeasureConfig(Section):
    enabled: bool = True
    flops: bool = True
    time: bool = True
    memory: bool = True
    batch_size: PositiveInt = 32  # throughput (images/s) batch
    latency_batch_size: PositiveInt = 1
    warmup: int = Field(2, ge=0)
    repeats: PositiveInt = 5


class SlurmConfig(Section):
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time_min: PositiveInt = 60  # per job; a longer run goes on after a requeue (checkpoints)
    gpus_per_run: int = Field(0, ge=0)  # N > 0: N tasks (one per GPU), one run across them
    nodes: PositiveInt = 1  # a run's GPUs spread evenly over this many nodes
    cpus_per_run: PositiveInt = 1  # per run: split over its tasks when gpus_per_run > 1
    mem_gb: PositiveFloat | None = None  # per node of a run (sbatch --mem)
    constraint: str | None = None
    array_parallelism: PositiveInt = 64
    # passed to submitit as slurm_additional_parameters
    extra_sbatch: dict[str, Any] = Field(default_factory=dict)
    setup: list[str] = Field(default_factory=list)  # shell lines run before each job
    signal_delay_s: PositiveInt = 120  # USR2 this long before the time limit: checkpoint, requeue

    @model_validator(mode="after")
    def _even_nodes(self) -> SlurmConfig:
        if self.nodes > 1 and (self.gpus_per_run == 0 or self.gpus_per_run % self.nodes):
            raise ValueError(f"nodes: {self.nodes} nodes need gpus_per_run divisible by them "
                             f"(one task per GPU, as many on each node); got gpus_per_run "
                             f"{self.gpus_per_run}")
        return self


def check_slurm_ranks(slurm: SlurmConfig, gpus: int, where: str) -> None:
    """``train.gpus`` states a run's ranks; a SLURM job's tasks (``gpus_per_run``, one per GPU;
    0: a CPU job of one task) must be as many, or the memory plan and the job disagree."""
    tasks = slurm.gpus_per_run or 1
    if gpus != tasks:
        raise HarnessError(
            f"{where}: train.gpus: {gpus} but executor.slurm.gpus_per_run: "
            f"{slurm.gpus_per_run} ({tasks} SLURM task{'s' if tasks > 1 else ''} per run); "
            f"train.gpus is the run's ranks: set executor.slurm.gpus_per_run: {gpus}")


class ExecutorConfig(Section):
    name: Literal["local", "debug", "slurm"] = "local"
    max_parallel: PositiveInt = 1  # local: runs at the same time
    max_retries: int = Field(0, ge=0)
    slurm: SlurmConfig = Field(default_factory=SlurmConfig)


class TrackingConfig(Section):
    """Where a run also reports while it trains. Not part of the run's identity (``run_id``):
    switching a tracker on or off never makes a finished run pending again."""

    # event files in the run's work folder (rank 0), where the `tensorboard` extra is installed
    tensorboard: bool = True
    # log live to MLflow too (the `mlflow` extra); `moe-harness export --to mlflow` does the
    # same after the fact for any record
    mlflow: bool = False
    mlflow_uri: str | None = None  # default: sqlite:///RESULTS/mlflow.db
