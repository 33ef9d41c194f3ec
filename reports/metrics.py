"""What each record column is, and which way is better: the one table the reports read.

Record columns fall into roles:

* identity: who the run is (``run_id``, ``status``, ``error``, ...); never grouped on;
* spec: what was run; the aggregation groups on every spec key except ``seed``;
* derived: what the harness computed from the spec (tokens, MoE blocks, ...); one per group;
* metrics: what was measured (cost, quality, router diagnostics); averaged over seeds;
* environment: where it ran; shown in the page footer, carried as sets of values.

Every metric names its direction in :data:`METRICS`. Pareto fronts, the summary table and
the figures read the direction from there, never from a second list.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from harness.spec.model import DERIVED_FIELDS

IDENTITY_KEYS: tuple[str, ...] = ("study", "run_id", "status", "error", "diverged_step")
SEED_KEY = "seed"
#: The spec columns of a record (``harness.spec.study.RunSpec.flat()``: the model axes
#: ``AXES``, the training knobs ``TRAIN_AXES``, and what the data and model spec add).
#: Kept literal here so that a report never imports torch; a test checks it against
#: ``harness.spec.study`` so that a new axis cannot be averaged over silently.
SPEC_KEYS: tuple[str, ...] = (
    "study",
    "model",
    "router",
    "num_experts",
    "slots_per_expert",
    "k",
    "capacity_factor",
    "moe_layers",
    "pool",
    "attention",
    "group_size",
    "gelu",
    "capacity_rounding",
    "router_noise",
    "lr",
    "steps",
    "batch_size",
    "weight_decay",
    "aux_loss_weight",
    "warmup_steps",
    "data",
    "image_size",
    "spec",
)
#: Columns the harness derives from the spec (tokens, MoE blocks, slots per token, ...):
#: constant per configuration, so the aggregate keeps one value of each.
DERIVED_KEYS: tuple[str, ...] = DERIVED_FIELDS
ENVIRONMENT_KEYS: tuple[str, ...] = (
    "device",
    "torch_version",
    "attention_backend",
    "git_sha",
    "started_at",
    "finished_at",
    "hostname",
    "device_type",
    "python_version",
    "slurm_job_id",
)
#: Per-run columns that are neither grouped on, averaged nor carried into the aggregate
#: (``spec_json`` differs between seeds, ``traceback`` belongs to the problems table).
PER_RUN_KEYS: tuple[str, ...] = ("history", "spec_json", "traceback", "label")

Kind = Literal["cost", "quality", "router"]


@dataclass(frozen=True)
class Metric:
    """A measured column: how to label it and which way is better."""

    name: str
    label: str
    kind: Kind
    lower_is_better: bool
    log_axis: bool = False

    @property
    def higher_is_better(self) -> bool:
        return not self.lower_is_better


_METRIC_LIST: tuple[Metric, ...] = (
    # cost: what a configuration spends (or, for images/s, delivers per unit of time)
    Metric("gflops_per_image", "GFLOPs per image (forward, 2 FLOPs/MAC)", "cost", True, True),
    Metric("train_exaflops", "training exaFLOPs (3 x forward FLOPs x images)", "cost", True, True),
    Metric(
        "train_exaflops_paper", "training exaFLOPs (paper: 3 x forward MACs x images)", "cost",
        True, True,
    ),
    Metric("train_step_ms", "train step time (ms)", "cost", True, True),
    Metric("train_images_per_s", "train images/s", "cost", False, True),
    Metric("infer_images_per_s", "inference images/s", "cost", False, True),
    Metric("infer_latency_ms", "inference latency (ms)", "cost", True, True),
    Metric("params_total", "total parameters", "cost", True, True),
    Metric("params_active", "active parameters per token", "cost", True, True),
    Metric("peak_memory_mb", "peak memory (MB)", "cost", True, True),
    # quality
    Metric("test_accuracy", "test accuracy", "quality", False),
    Metric("test_loss", "test loss", "quality", True),
    Metric("fewshot_accuracy", "few-shot accuracy", "quality", False),
    # router diagnostics (direction is informative only: no front is drawn on them)
    Metric("router_dropped_fraction", "dropped-token fraction", "router", True),
    Metric("router_token_coverage", "token coverage", "router", False),
    Metric("router_slot_entropy", "slot entropy (normalised)", "router", False),
    Metric("router_expert_load_cv", "expert load CV", "router", True),
)

#: name -> Metric, for every metric the reports know by name.
METRICS: dict[str, Metric] = {m.name: m for m in _METRIC_LIST}

#: Cost axes drawn against quality, in page order.
COST_AXES: tuple[str, ...] = (
    "gflops_per_image",
    "train_exaflops",
    "train_step_ms",
    "infer_images_per_s",
    "infer_latency_ms",
    "params_total",
    "params_active",
)
#: Quality axes, the first present one is the "primary" quality of the summary table.
QUALITY_AXES: tuple[str, ...] = ("test_accuracy", "fewshot_accuracy", "test_loss")
#: Router diagnostics: metric -> the routers it describes.
ROUTER_DIAGNOSTICS: dict[str, tuple[str, ...]] = {
    "router_dropped_fraction": ("tokens_choice",),
    "router_token_coverage": ("experts_choice",),
    "router_slot_entropy": ("soft", "soft_uniform", "uniform_soft"),
    "router_expert_load_cv": (),  # every router that reports it
}

# Unknown columns whose name looks like a measurement are treated as metrics.
_METRIC_NAME = re.compile(
    r"^(router_|params_)|(_ms|_mb|_s|_per_s|_fraction|_accuracy|_loss|_flops|_gflops"
    r"|_exaflops|_mean|_std)$"
)


def looks_like_metric(name: str) -> bool:
    """Whether an unknown column name reads like a measurement (``*_ms``, ``router_*``, ...)."""
    return bool(_METRIC_NAME.search(name))


def label(name: str) -> str:
    """Human label of a column (its name when unknown)."""
    metric = METRICS.get(name)
    return metric.label if metric else name


def lower_is_better(name: str) -> bool:
    """Direction of a metric. Unknown metrics raise, so a typo never flips a front silently."""
    try:
        return METRICS[name].lower_is_better
    except KeyError:
        raise KeyError(f"unknown metric {name!r}; known: {', '.join(METRICS)}") from None
