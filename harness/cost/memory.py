"""Memory per GPU before you submit: a closed form from the shapes, for the run's layout.

Like the FLOP estimate (``harness.cost.estimate``), nothing is built and torch is not loaded: the
paper's 54B-parameter H/14 plans in microseconds. The model and its constants are written up,
with the measurements that check them, in ``docs/memory.md``. In short, per rank:

- **states**: 4 bytes of fp32 weights, 4 of gradients and 8 of AdamW moments per parameter
  the rank holds: every parameter under ``ddp``; 1/R of them under ``fsdp``; the dense ones
  and E/R experts of each MoE layer under ``experts``; 1/R of the dense ones and E/R experts
  under ``experts+fsdp``. Under bf16 autocast a bf16 copy (2 bytes) of the held weights
  lives from the forward to the backward.
- **activations** of one micro-batch: the tensors each block saves for its backward, counted
  from the shapes (below), or only each block's input with activation checkpointing (plus
  one block recomputed at a time).
- **communication buffers**: DDP's gradient buckets (4 bytes per replicated parameter;
  under ``experts`` one 25 MiB bucket at a time, averaged by the training loop),
  FSDP's gathered (and prefetched) block and its gradient reduce-scatter, and the
  all-to-all send and receive buffers of the sharded experts.

The peak is the larger of two phases: the backward (weights, moments, activations still
saved, gradients written so far, and the backward's working tensors; with gradient
accumulation the earlier micro-batches' gradients are all there) and the optimizer step
(weights, moments, gradients and, on a GPU, the foreach update's temporaries).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

from harness.errors import HarnessError

GB = 1e9  # memory is stated in GB (10^9 bytes), as GPU datasheets state it
LAYOUTS = ("ddp", "experts", "experts+fsdp", "fsdp")  # cheapest communication first
FP32 = 4
SHARDS_EXPERTS = ("experts", "experts+fsdp")
SHARDS_DENSE = ("fsdp", "experts+fsdp")
# ``experts``: the training loop averages the replicated gradients itself, this many bytes
# of them flattened into one all-reduce at a time (DDP's default bucket size)
GRAD_BUCKET_BYTES = 25 * 2**20
GPUS_PER_NODE = 8  # more GPUs are suggested on one node up to this many, then more nodes


class LayoutError(HarnessError):
    """A layout that cannot hold this run (experts sharded without experts, uneven shards)."""


@dataclass(frozen=True)
class Shapes:
    """What the closed form reads from a model config."""

    depth: int
    width: int  # D
    mlp: int  # H
    heads: int
    tokens: int  # m per image
    image_bytes: int  # one input image as loaded (fp32)
    moe_blocks: tuple[int, ...]
    family: str  # the router's (harness.spec.routers): soft | sparse | dense
    experts: int  # E per MoE layer (0 for dense)
    rows: float  # expert buffer rows per image, all experts: Soft MoE's slots, E x capacity
    dense_params: int  # everything but the experts
    expert_params: int  # one expert of one layer
    attention_scores: bool  # the math backend saves (heads, m, m) twice per block
    largest_expert_param: int  # elements of an MoE layer's largest expert tensor (E, D, H)
    largest_dense_param: int  # elements of the largest other parameter tensor

    @classmethod
    def of(cls, cfg) -> Shapes:
        from harness.cost.params import closed_form_params

        s = cfg.shape
        d, h, m = s.width, s.mlp_dim, cfg.num_tokens
        expert = 2 * d * h + h + d  # fc1 and fc2 with biases
        moe = len(cfg.moe_blocks)
        experts = cfg.num_experts if moe else 0
        rows = experts * cfg.routing.expert_rows(m) if moe else 0.0
        total = closed_form_params(cfg)["params_total"]
        return cls(depth=s.depth, width=d, mlp=h, heads=s.heads, tokens=m,
                   image_bytes=FP32 * cfg.in_chans * cfg.image_size**2,
                   moe_blocks=tuple(cfg.moe_blocks), family=cfg.routing.entry.family,
                   experts=experts, rows=rows,
                   dense_params=total - moe * experts * expert, expert_params=expert,
                   attention_scores=cfg.attention == "math",
                   largest_expert_param=experts * d * h,
                   largest_dense_param=max(3 * d * d, d * h, cfg.num_classes * d, m * d))

    @property
    def all_expert_params(self) -> int:
        return len(self.moe_blocks) * self.experts * self.expert_params

    @property
    def params(self) -> int:
        return self.dense_params + self.all_expert_params


def block_activations(sh: Shapes, moe: bool, act: int) -> tuple[float, float]:
    """Bytes one block saves for its backward per image, and its largest saved tensor.

    ``act`` is the compute dtype's size (2 under bf16 autocast, 4 in fp32). The residual
    stream and layer norms stay fp32: the block input and the attention output sum (each
    saved by a layer norm). In the compute dtype: the first norm's output (qkv's input), q,
    k, v, the attention output (the projection's input), the second norm's output; a dense
    MLP adds its hidden activation before and after the GELU. Fused attention saves its
    log-sum-exp per head and token (fp32); the math backend the scores and their softmax.
    An MoE layer adds its router's (token, slot) or (token, expert) tensors (fp32: softmax
    runs in fp32 under autocast) and its experts' rows: input, hidden before and after the
    GELU, output; the sparse routers also gather one output row per (token, choice).
    """
    d, h, m, heads = sh.width, sh.mlp, sh.tokens, sh.heads
    out = FP32 * 2 * m * d + act * 6 * m * d + FP32 * heads * m
    largest = act * 3 * m * d  # qkv
    if sh.attention_scores:
        out += act * 2 * heads * m * m
        largest = max(largest, act * heads * m * m)
    if not moe:
        return out + act * 2 * m * h, max(largest, act * m * h)
    rows = sh.rows
    if sh.family == "sparse":
        routing = FP32 * 3 * m * sh.experts + act * rows * d  # logits, noisy, gates; gather
    else:
        routing = FP32 * 3 * m * rows  # logits, dispatch, combine
    experts = act * (2 * rows * d + 2 * rows * h)
    return out + routing + experts, max(largest, act * rows * h, FP32 * m * max(rows, 1))


@dataclass(frozen=True)
class MemoryPlan:
    """Estimated peak memory per GPU (rank) of one run, in GB, by part."""

    spec: str
    layout: str
    ranks: int
    nodes: int
    micro_batch: int
    accumulation: int  # micro-batches per optimizer step on each rank
    checkpointing: bool
    precision: str  # fp32 | bf16 (the activations' compute dtype)
    params_gb: float  # fp32 weights held (+ their bf16 copy under autocast)
    grads_gb: float
    optimizer_gb: float  # AdamW's two moments
    activations_gb: float  # one micro-batch's saved tensors
    comm_gb: float  # DDP buckets, FSDP gathers, all-to-all buffers
    peak_gb: float
    limit_gb: float | None  # the GPU's memory; None for a CPU run (no limit checked)

    @property
    def fits(self) -> bool | None:
        return None if self.limit_gb is None else self.peak_gb <= self.limit_gb


def check_layout(layout: str, sh: Shapes, ranks: int) -> None:
    if layout in SHARDS_EXPERTS:
        if not sh.experts:
            raise LayoutError(f"train.layout {layout!r} shards the experts of MoE layers, and "
                              "this model has none; use ddp or fsdp")
        if sh.experts % ranks:
            raise LayoutError(f"train.layout {layout!r}: {sh.experts} experts per MoE layer do "
                              f"not split evenly over {ranks} ranks (train.gpus); give a GPU "
                              "count that divides them, or shard with fsdp")


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def check_split(batch_size: int, ranks: int, micro_batch: int | None) -> None:
    """Every rank takes an equal slice of the batch and every micro-batch an equal slice of
    the rank's: a split that would fail at run time is refused here, before anything runs,
    with the values that would be allowed."""
    if batch_size % ranks:
        low = batch_size - batch_size % ranks
        nearest = ", ".join(str(b) for b in (low, low + ranks) if b > 0)
        raise LayoutError(f"train.batch_size: {batch_size} does not split evenly over the "
                          f"run's {ranks} ranks (one per GPU); allowed: a multiple of {ranks}, "
                          f"e.g. {nearest}")
    per_rank = batch_size // ranks
    if micro_batch is not None and per_rank % micro_batch:
        allowed = ", ".join(str(d) for d in divisors(per_rank))
        raise LayoutError(f"train.micro_batch_size: {micro_batch} does not divide the "
                          f"{per_rank} images per rank (batch_size {batch_size} over {ranks} "
                          f"ranks); allowed: {allowed}")


def estimate(cfg, layout: str, *, ranks: int = 1, nodes: int = 1, batch_size: int,
             micro_batch: int | None = None, checkpointing: bool = False,
             precision: str = "bf16", gpu: bool = True,
             limit_gb: float | None = None) -> MemoryPlan:
    """The memory plan of model ``cfg`` (a ModelConfig) trained with global ``batch_size``
    over ``ranks`` processes in ``layout`` (one of :data:`LAYOUTS`).

    ``precision`` is the compute dtype of the activations (``bf16``: autocast, with the fp32
    master weights), ``gpu`` whether the optimizer runs the foreach (GPU) update, and
    ``limit_gb`` the GPU's memory (None for a CPU run).
    """
    if layout not in LAYOUTS:
        raise LayoutError(f"train.layout {layout!r}: allowed: auto, {', '.join(LAYOUTS)}")
    check_split(batch_size, ranks, micro_batch)
    sh = Shapes.of(cfg)
    check_layout(layout, sh, ranks)
    per_rank = batch_size // ranks
    micro = micro_batch or per_rank
    act = 2 if precision == "bf16" else FP32
    moe = len(sh.moe_blocks)

    experts_held = sh.all_expert_params / (ranks if layout in SHARDS_EXPERTS else 1)
    dense_held = sh.dense_params
    if layout == "fsdp":
        experts_held /= ranks
    if layout in SHARDS_DENSE:
        dense_held /= ranks
    held = dense_held + experts_held
    largest_held = max(sh.largest_dense_param * dense_held / max(sh.dense_params, 1),
                       sh.largest_expert_param * experts_held / max(sh.all_expert_params, 1))
    weights, grads, moments = FP32 * held, FP32 * held, 2 * FP32 * held
    copies = 2 * held if act == 2 else 0  # autocast's bf16 weights, saved for the backward

    blocks = [block_activations(sh, i in sh.moe_blocks, act) for i in range(sh.depth)]
    block_bytes = [micro * a for a, _ in blocks]
    working = 2 * micro * max(big for _, big in blocks)  # the backward's gradients
    head = micro * (sh.image_bytes + FP32 * sh.tokens * sh.width)  # the batch, final norm
    if checkpointing:  # each block's input kept; one block recomputed at a time
        saved = head + sh.depth * micro * FP32 * sh.tokens * sh.width + max(block_bytes)
    else:
        saved = head + sum(block_bytes)

    comm = 0.0
    if ranks > 1:
        replicated = (0 if layout in SHARDS_DENSE else sh.dense_params) + (
            sh.all_expert_params if layout == "ddp" else 0)
        if layout == "experts":  # one flat bucket of the replicated gradients at a time
            comm += min(FP32 * replicated, GRAD_BUCKET_BYTES)
        else:
            comm += FP32 * replicated  # DDP's gradient buckets
        if layout in SHARDS_DENSE:  # one block gathered, the next prefetched, its grads
            unit = sh.dense_params / sh.depth + (
                sh.experts * sh.expert_params if layout == "fsdp" and moe else 0)
            comm += (2 * act + FP32) * unit
        if layout in SHARDS_EXPERTS and moe:  # tokens out and back, both directions
            comm += 2 * act * micro * sh.rows * sh.width

    # backward: gradients of the blocks already done (all of them when accumulating, with
    # each parameter's incoming gradient before it is added) while the earlier blocks'
    # activations are still saved
    accumulating = math.ceil(per_rank / micro) > 1
    grads_done = grads + FP32 * largest_held if accumulating else grads / sh.depth
    backward = weights + copies + moments + saved + grads_done + working + comm
    # the update's temporaries: foreach (GPU) one per held parameter; the per-tensor loop
    # (CPU) two of the largest held tensor (AdamW's denominator: a square root, a division)
    temporaries = FP32 * held if gpu else 2 * FP32 * largest_held
    step = weights + moments + grads + temporaries
    peak = max(backward, step)
    return MemoryPlan(
        spec=cfg.spec, layout=layout, ranks=ranks, nodes=nodes, micro_batch=micro,
        accumulation=math.ceil(per_rank / micro), checkpointing=checkpointing,
        precision=precision, params_gb=(weights + copies) / GB, grads_gb=grads / GB,
        optimizer_gb=moments / GB, activations_gb=saved / GB, comm_gb=comm / GB,
        peak_gb=peak / GB, limit_gb=limit_gb,
    )


# --- a study's runs ----------------------------------------------------------------------------
def on_gpu(study, spec) -> bool:
    """Whether ``spec`` trains on GPUs: ``train.device: cuda``, or ``auto`` on SLURM with
    ``gpus_per_run`` (a local ``auto`` run is taken for a CPU run: the laptop profiles)."""
    if spec.train.device != "auto":
        return spec.train.device == "cuda"
    slurm = study.executor
    return slurm.name == "slurm" and slurm.slurm.gpus_per_run > 0


def nodes_of(study) -> int:
    return study.executor.slurm.nodes if study.executor.name == "slurm" else 1


def run_plan(study, spec, layout: str | None = None, **changes) -> MemoryPlan:
    """The memory plan of one run of ``study`` (its GPUs, nodes and ``estimate.gpu_memory_gb``)
    in ``layout`` (default: the run's own, ``auto`` resolved); ``changes`` override
    ``ranks``, ``nodes``, ``micro_batch`` or ``checkpointing``."""
    gpu = on_gpu(study, spec)
    options = dict(ranks=spec.train.gpus, nodes=nodes_of(study),
                   limit_gb=study.estimate.gpu_memory_gb if gpu else None)
    return plan_for(spec, gpu=gpu, layout=layout, **{**options, **changes})


def plan_for(spec, *, gpu: bool, ranks: int, nodes: int = 1, limit_gb: float | None,
             layout: str | None = None, **changes) -> MemoryPlan:
    """The memory plan of ``spec`` on ``ranks`` GPUs (or CPU processes: ``gpu`` False) of
    ``limit_gb`` each; ``layout`` default: the run's own, ``auto`` resolved."""
    t = spec.train
    bf16 = t.precision == "bf16" or (t.precision == "auto" and gpu)
    options = dict(ranks=ranks, nodes=nodes, batch_size=t.batch_size,
                   micro_batch=t.micro_batch_size, checkpointing=t.activation_checkpointing,
                   precision="bf16" if bf16 else "fp32", gpu=gpu, limit_gb=limit_gb)
    options.update(changes)
    cfg = spec.model_config_(_classes(spec))
    layout = layout or t.layout
    if layout != "auto":
        return estimate(cfg, layout, **options)
    return cheapest(cfg, options)


def study_plans(study, specs) -> dict[str, MemoryPlan]:
    """run_id -> memory plan of every run in ``specs``; a layout that cannot hold a run is
    one error naming the study file and the run."""
    plans = {}
    for spec in specs:
        try:
            plans[spec.run_id] = run_plan(study, spec)
        except LayoutError as err:
            raise LayoutError(f"{study.source or study.name}: {spec.label}: {err}") from None
    return plans


def unfit(study, specs, plans: dict[str, MemoryPlan]) -> list[str]:
    """The refusal line of every run of ``specs`` whose plan exceeds the GPU's memory."""
    return [refusal(study, spec, plans[spec.run_id]) for spec in specs
            if plans[spec.run_id].fits is False]


def _classes(spec) -> int:
    from harness.cost.estimate import head_classes

    return head_classes(spec)[0]


def cheapest(cfg, options: dict) -> MemoryPlan:
    """``auto``: the first layout of :data:`LAYOUTS` (cheapest communication first) whose
    plan fits; with none fitting, the one of the lowest peak. One process: ``ddp`` (nothing
    to shard); a CPU run (no limit): ``ddp``."""
    check_split(options["batch_size"], options["ranks"], options["micro_batch"])
    if options["ranks"] == 1 or options["limit_gb"] is None:
        return estimate(cfg, "ddp", **options)
    plans = []
    for layout in LAYOUTS:
        try:
            plan = estimate(cfg, layout, **options)
        except LayoutError:
            continue
        if plan.fits:
            return plan
        plans.append(plan)
    return min(plans, key=lambda p: p.peak_gb)


def what_would_fit(study, spec, plan: MemoryPlan) -> list[str]:
    """Changes that make a run fit, one of each kind: another layout, a smaller micro-batch,
    activation checkpointing, more GPUs (and nodes), each with its estimate."""
    options: list[str] = []
    for layout in LAYOUTS:
        if layout == plan.layout:
            continue
        try:
            other = run_plan(study, spec, layout)
        except LayoutError:
            continue
        if other.fits:
            options.append(f"train.layout {layout} ({other.peak_gb:.0f} GB)")
            break
    layout = "auto" if spec.train.layout == "auto" else plan.layout
    per_rank = plan.micro_batch * plan.accumulation
    for micro in reversed([d for d in divisors(per_rank) if d < plan.micro_batch]):
        smaller = run_plan(study, spec, layout, micro_batch=micro)
        if smaller.fits:
            options.append(f"train.micro_batch_size {micro} ({smaller.peak_gb:.0f} GB)")
            break
    if not plan.checkpointing:
        recomputed = run_plan(study, spec, layout, checkpointing=True)
        if recomputed.fits:
            options.append(f"train.activation_checkpointing ({recomputed.peak_gb:.0f} GB)")
    if more := more_gpus(study, spec, plan):
        options.append(more)
    return options


def more_gpus(study, spec, plan: MemoryPlan) -> str | None:
    """The fewest GPUs (doubling) on which the run fits with its own batch split, as many
    per node as the run has (at least :data:`GPUS_PER_NODE`, a node's usual count); more
    nodes only on SLURM, each with the same number of GPUs."""
    per_node = max(plan.ranks // plan.nodes, GPUS_PER_NODE)
    slurm = study.executor.name == "slurm"
    ranks = plan.ranks * 2
    while ranks <= 4096 and ranks <= spec.train.batch_size:
        nodes = -(-ranks // per_node)
        while ranks % nodes:
            nodes += 1
        if nodes > 1 and not slurm:
            return None
        try:
            more = run_plan(study, spec, "auto", ranks=ranks, nodes=nodes)
        except LayoutError:  # the batch or the micro-batch does not split over them
            more = None
        if more is not None and more.fits:
            where = f" on {nodes} nodes" if nodes > 1 else ""
            return f"{ranks} GPUs{where} ({more.layout}, {more.peak_gb:.0f} GB)"
        ranks *= 2
    return None


def refusal(study, spec, plan: MemoryPlan) -> str:
    """One line: the run, its estimate against the limit, and what would fit."""
    fixes = what_would_fit(study, spec, plan)
    hint = "; would fit: " + ", or ".join(fixes) if fixes else "; nothing tried fits"
    return (f"{spec.run_id} {plan.spec}: ~{plan.peak_gb:.0f} GB per GPU ({plan.layout}, "
            f"{plan.ranks} GPUs, micro-batch {plan.micro_batch}) > {plan.limit_gb:g} GB"
            f"{hint}")


def with_layout(spec, plan: MemoryPlan):
    """``spec`` with its ``auto`` layout replaced by the plan's (the run id is unchanged:
    the layout is outside it)."""
    if spec.train.layout != "auto":
        return spec
    return spec.model_copy(update={"train": spec.train.model_copy(
        update={"layout": plan.layout})})


def record_fields(plan: MemoryPlan) -> dict:
    """The estimate's columns of a run's record."""
    return {"layout": plan.layout, "ranks": plan.ranks, "nodes": plan.nodes,
            "micro_batch_size": plan.micro_batch, "accumulation_steps": plan.accumulation,
            "activation_checkpointing": plan.checkpointing,
            "estimated_peak_memory_gb": round(plan.peak_gb, 3),
            "estimated_memory_limit_gb": plan.limit_gb}


class MemoryRefusal(HarnessError):
    """GPU runs of a sweep that need more memory per GPU than ``estimate.gpu_memory_gb``;
    ``lines`` holds one line per run with its estimate and what would fit."""

    def __init__(self, message: str, lines: list[str]):
        super().__init__(message)
        self.lines = lines


@dataclass
class Sweep:
    """The runs to submit, after the memory check (:func:`plan_sweep`)."""

    specs: list  # each ``train.layout: auto`` replaced by the layout chosen
    forced: int  # runs submitted although their estimate exceeds the GPU's memory
    auto_layouts: dict[str, int]  # layout -> runs of more than one GPU that ``auto`` gave it


def plan_sweep(study, specs, plans: dict[str, MemoryPlan], *, force: bool = False) -> Sweep:
    """``specs`` ready to submit: every GPU run whose estimate exceeds the GPU's memory is
    refused (:class:`MemoryRefusal`, before anything is submitted) unless ``force``, and every
    ``auto`` layout is resolved to the cheapest layout that fits (``plans``: from
    :func:`study_plans`)."""
    lines = unfit(study, specs, plans)
    if lines and not force:
        raise MemoryRefusal(
            f"{study.source or study.name}: {len(lines)} of {len(specs)} runs need more than "
            f"estimate.gpu_memory_gb = {study.estimate.gpu_memory_gb:g} GB per GPU (above, "
            "with what would fit); nothing was submitted; --force submits them anyway", lines)
    chosen = Counter(plans[s.run_id].layout for s in specs
                     if s.train.layout == "auto" and plans[s.run_id].ranks > 1)
    return Sweep([with_layout(s, plans[s.run_id]) for s in specs], len(lines),
                 dict(chosen.most_common()))
