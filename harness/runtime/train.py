"""Training loop, evaluation, few-shot linear probe, checkpoints.

``fit(model, spec, data, workdir=..., device=...) -> dict`` trains ``model`` with AdamW under
``spec.train`` (warm-up then cosine, rsqrt or constant learning rate; gradient clipping; the MoE
auxiliary losses weighted by ``aux_loss_weight``; bf16 autocast on GPU), evaluates it and
returns one flat dict (see ``fit``). It is resumable: every ``checkpoint_every`` steps it
writes ``workdir/checkpoint.pt`` atomically (model, optimizer, scheduler, every RNG state,
step, history), and a later call with the same workdir continues from there; a run killed at
any point and restarted ends with the same numbers as an unbroken one (same seed, same
machine, same thread count).

Batches are drawn with replacement by a ``torch.Generator`` seeded with the run's seed, so
the batch sequence is part of the checkpointed state. ``harness.data.pipeline.Loader`` loads them,
in this process or in ``data.loader.workers`` worker processes that prefetch the same draws
from a copy of the generator (so a resume is exact either way). A non-finite loss ends the run with
``status="diverged"`` and the 1-based step that produced it; nothing is raised.

Distributed training (``harness.runtime.distributed``): when a process group is up with several
ranks, ``fit`` wraps the model in DistributedDataParallel. Every rank draws the same global
batch of ``batch_size`` indices from the same seeded generator and trains on its own
contiguous slice (so the generator state, which rank 0 checkpoints, is the same everywhere and
a resume is exact); DDP averages the gradients, so a step equals a single-process step on the
global batch up to float rounding. The logged loss is averaged over the ranks (one all-reduce
per step, which also makes a non-finite loss on any rank end every rank at the same step).
Checkpoints, progress, history evaluations and the results are rank 0's only; aux losses and
metrics are read from ``model.module``.
"""

from __future__ import annotations

import math
import random
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from harness.data.pipeline import Loader, training_plan
from harness.errors import HarnessError
from harness.nn.moe.base import MetricMeans, tracking_metrics
from harness.runtime import distributed, parallel
from harness.runtime.checkpoint import (
    CHECKPOINT,
    SHARDED_DIR,
    load_checkpoint,
    remove_unreferenced_shards,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from harness.runtime.probe import FEWSHOT_DRAWS, FEWSHOT_L2, fewshot_indices, fewshot_probe
from harness.spec.config import TrainConfig

HISTORY_EVAL_IMAGES = 1000  # history evaluations use this fixed, evenly spread test subset
COOLDOWN_FRACTION = 0.1  # rsqrt: linear cooldown to zero over the last 10% of the steps


# --- small helpers -------------------------------------------------------------------------------
def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; return the generator that draws the training batches."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def autocast_for(device: torch.device, precision: str):
    """bf16 autocast on GPU for 'auto'/'bf16', on CPU only for an explicit 'bf16'; else none."""
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Learning-rate multiplier for the update with 0-based index ``step``.

    Linear warm-up over ``warmup_steps`` ((step + 1) / warmup), then
    ``cosine``: 0.5 (1 + cos(pi t)) with t = (step - warmup) / (steps - warmup), from 1 to ~0;
    ``rsqrt``: sqrt(warmup / (step + 1)) (warmup taken as at least 1), times a linear cooldown
    to zero over the last 10% of the steps (the paper's schedule);
    ``constant``: 1.
    """
    warmup, total = cfg.warmup_steps, cfg.steps
    warm = min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
    if cfg.schedule == "constant":
        return warm
    if cfg.schedule == "cosine":
        t = min(1.0, max(0.0, (step - warmup) / max(1, total - warmup)))
        return warm * 0.5 * (1.0 + math.cos(math.pi * t))
    decay = math.sqrt(max(1, warmup) / max(step + 1, warmup, 1))
    cooldown_steps = max(1, round(COOLDOWN_FRACTION * total))
    cooldown = min(1.0, (total - step) / cooldown_steps)
    return warm * decay * cooldown


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices (and expert weight stacks) only, not on biases, norms, scales."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    other = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": other, "weight_decay": 0.0}]


# --- evaluation ----------------------------------------------------------------------------------
@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset: Dataset,
    *,
    device: torch.device | str = "cpu",
    batch_size: int = 256,
    precision: str = "fp32",
    indices: torch.Tensor | None = None,
    router_metrics: bool = True,
) -> dict[str, float]:
    """Accuracy and mean cross-entropy over ``dataset`` (or its ``indices``), in eval mode.

    With ``router_metrics``, each MoE metric (averaged over the model's MoE layers) is
    averaged over the batches (weighted by batch size) and returned as ``router_<key>``.
    Scores and metrics stay on the device until the end: one transfer each per evaluation.
    """
    device = torch.device(device)
    batches = dataset if isinstance(dataset, Loader) else Loader(dataset, device)
    idx_all = torch.arange(len(batches)) if indices is None else indices
    batches.plan(idx_all.split(batch_size))
    was_training = model.training
    model.eval()
    router = MetricMeans(model)
    track = router_metrics and bool(router.layers)
    scores = []  # per batch: (loss sum, correct) on the device, fetched once at the end
    n = 0
    try:
        with tracking_metrics(model, track):
            for start in range(0, len(idx_all), batch_size):
                x, y = batches.get(idx_all[start:start + batch_size])
                with autocast_for(x.device, precision):
                    logits = model(x)
                logits = logits.float()
                scores.append(torch.stack([F.cross_entropy(logits, y, reduction="sum"),
                                           (logits.argmax(dim=-1) == y).sum().to(logits.dtype)]))
                n += len(y)
                if track:
                    router.add(len(y))
    finally:
        model.train(was_training)
        if batches is not dataset:
            batches.close()
    loss_sum, correct = 0.0, 0
    for batch_loss, batch_correct in torch.stack(scores).tolist() if scores else []:
        loss_sum += batch_loss
        correct += round(batch_correct)
    out = {"accuracy": correct / max(n, 1), "loss": loss_sum / max(n, 1)}
    out.update({f"router_{k}": v for k, v in sorted(router.result().items())})
    return out


@torch.no_grad()
def features(model: nn.Module, batches: Loader, indices: torch.Tensor, *, batch_size: int,
             precision: str) -> tuple[np.ndarray, np.ndarray]:
    """Pre-logit features (float64) and labels of ``indices``, model in eval mode."""
    was_training = model.training
    model.eval()
    xs, ys = [], []
    batches.plan(indices.split(batch_size))
    try:
        with tracking_metrics(model, False):
            for start in range(0, len(indices), batch_size):
                x, y = batches.get(indices[start:start + batch_size])
                with autocast_for(x.device, precision):
                    xs.append(model.pre_logits(x).float().cpu())
                ys.append(y.cpu())
    finally:
        model.train(was_training)
    return torch.cat(xs).double().numpy(), torch.cat(ys).numpy()




# --- training ------------------------------------------------------------------------------------
def train_steps(
    model: nn.Module,
    cfg: TrainConfig,
    train: Loader,
    test: Loader,
    *,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    generator: torch.Generator,
    state: dict[str, Any],
    checkpoint: Callable[[], None] | None,
    on_progress: Callable[[dict], None] | None,
    log: Callable[[int, dict], None] | None = None,
    layout: parallel.Layout | None = None,
) -> None:
    """The step loop, from ``state["step"]`` to ``cfg.steps``, on the model's device.

    ``state`` (step, history, loss window, train time, status) is updated in place, so the
    caller can checkpoint and report it. ``checkpoint()`` is called every ``checkpoint_every``
    steps (after that step's history evaluation). ``model`` may be DDP-wrapped: each rank
    then trains on its slice of every global batch, and history evaluations run on rank 0.
    ``log(step, scalars)`` (rank 0's trackers, ``harness.runtime.tracking``) gets the loss, learning
    rate and speed at every progress point, and the history evaluations with router metrics.
    MoE metric tracking is the caller's (``fit`` switches it off around the steps).
    ``layout`` (``harness.runtime.parallel``; default: as ``cfg`` says for the live process group)
    splits each rank's batch into micro-batches; where a forward needs every rank (sharded
    experts, FSDP) the history evaluations run on every rank. The time spent in all-to-all is
    summed in ``state["all_to_all_s"]``.
    """
    layout = layout or parallel.resolve_layout(cfg, distributed.current().world_size)
    device = next(model.parameters()).device
    core = distributed.unwrap(model)  # aux_loss, metrics: a DDP wrapper does not forward them
    main = distributed.is_main()
    model.train()
    aux_fn = getattr(core, "aux_loss", None)
    history_idx = _spread(len(test), HISTORY_EVAL_IMAGES)
    progress_every = max(1, min(10, cfg.steps // 20))
    if log is not None:
        log(state["step"], {"train/lr": optimizer.param_groups[0]["lr"]})
    window = {"loss": 0.0, "steps": 0, "time": 0.0}  # the logged speed excludes evaluations
    state.setdefault("all_to_all_s", 0.0)
    parallel.CommTimer.reset(enabled=layout.experts_sharded)
    tic = time.perf_counter()
    while state["step"] < cfg.steps:
        idx = torch.randint(len(train), (cfg.batch_size,), generator=generator)
        x, y = train.get(distributed.shard(idx))
        optimizer.zero_grad(set_to_none=True)
        losses = []
        for xc, yc, weight in parallel.micro_batches(model, x, y, layout):
            with autocast_for(device, cfg.precision):
                logits = model(xc)
                loss = F.cross_entropy(logits.float(), yc)
                aux = aux_fn().float() if aux_fn is not None else loss.new_zeros(())
            # weighted by the micro-batch's share: the gradients add up to the batch mean's
            total = (loss + cfg.aux_loss_weight * aux) * weight
            total.backward()
            losses.append(torch.stack([loss.detach() * weight, total.detach()]))
        # one sync per step; averaged over the ranks, so any rank's NaN stops them all here
        loss_value, total_value = distributed.mean(sum(losses)).tolist()
        if not math.isfinite(total_value):
            state.update(status="diverged", diverged_step=state["step"] + 1)
            break
        if cfg.grad_clip is not None:
            parallel.clip_grad_norm(model, cfg.grad_clip)
        optimizer.step()
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        state["step"] += 1
        state["loss_sum"] += loss_value
        state["loss_count"] += 1
        step = state["step"]
        window["loss"] += loss_value
        window["steps"] += 1
        if step % progress_every == 0 or step == cfg.steps:
            if on_progress is not None:
                on_progress({"step": step, "steps": cfg.steps, "loss": loss_value})
            if log is not None:
                toc = time.perf_counter()
                step_s = (window["time"] + toc - tic) / window["steps"]
                log(step, {"train/loss": window["loss"] / window["steps"], "train/lr": lr,
                           "train/step_time_ms": 1e3 * step_s,
                           "train/images_per_s": cfg.batch_size / step_s})
                window.update(loss=0.0, steps=0, time=tic - time.perf_counter())
        eval_now = (cfg.eval_every and step % cfg.eval_every == 0) or step == cfg.steps
        ckpt_now = checkpoint is not None and cfg.checkpoint_every and (
            step % cfg.checkpoint_every == 0 or step == cfg.steps)
        if eval_now or ckpt_now:
            state["train_time_s"] += time.perf_counter() - tic
            window["time"] += time.perf_counter() - tic
            if eval_now:
                parallel.CommTimer.enabled = False  # the share is of training steps
                scores = evaluate(core, test, batch_size=cfg.eval_batch_size,
                                  precision=cfg.precision, indices=history_idx,
                                  router_metrics=log is not None
                                  ) if main or layout.collective else {}
                parallel.CommTimer.enabled = layout.experts_sharded
                if not main:
                    scores = {}
                acc = scores.get("accuracy")
                if log is not None and main:
                    log(step, {"eval/test_accuracy": acc, **{
                        f"router/{k.removeprefix('router_')}": v for k, v in scores.items()
                        if k.startswith("router_")}})
                state["history"].append({
                    "step": step, "train_loss": state["loss_sum"] / state["loss_count"],
                    "test_accuracy": acc})
                state["loss_sum"], state["loss_count"] = 0.0, 0
            if ckpt_now:
                state["all_to_all_s"] += parallel.CommTimer.seconds
                parallel.CommTimer.seconds = 0.0
                checkpoint()
            tic = time.perf_counter()
    state["train_time_s"] += time.perf_counter() - tic
    state["all_to_all_s"] += parallel.CommTimer.seconds
    parallel.CommTimer.reset(enabled=False)


def _spread(n: int, k: int) -> torch.Tensor:
    """``min(n, k)`` indices spread evenly over 0..n-1 (a fixed subset across classes)."""
    if n <= k:
        return torch.arange(n)
    return torch.linspace(0, n - 1, k).round().long()


def fit(
    model: nn.Module,
    spec,
    data,
    *,
    workdir: Path,
    device: torch.device | str,
    on_progress: Callable[[dict], None] | None = None,
    log: Callable[[int, dict], None] | None = None,
) -> dict[str, Any] | None:
    """Train ``model`` on ``data`` (a ``harness.data.datasets.Datasets``) as ``spec.train`` says.

    Resumes from ``workdir/checkpoint.pt`` when it exists. Returns a flat dict (on rank 0 or
    without torch.distributed; None on other ranks): ``status`` ("ok" | "diverged"),
    ``diverged_step`` (1-based, None if ok), ``steps_done``, ``resumed_from_step`` (None if
    fresh), ``train_loss`` (mean over the last history window, or over the steps since it),
    ``test_accuracy``, ``test_loss``, ``fewshot_accuracy`` and ``fewshot_l2`` (None if
    ``fewshot_shots`` is 0 or the run diverged), ``router_<metric>`` (each MoE metric
    averaged over the test set),
    ``history`` (list of {"step", "train_loss", "test_accuracy"} on a fixed test subset of
    ``HISTORY_EVAL_IMAGES``), ``train_time_s`` (training steps only, summed over resumes) and
    ``eval_time_s``.

    The model's initial weights are the caller's: seed (``seed_everything(spec.seed)``) before
    building it. ``fit`` reseeds python, numpy and torch with ``spec.seed`` at the start of a
    fresh run, so the gate noise and the batches follow from the seed.

    ``log`` (rank 0's trackers, see ``train_steps``) also gets the final scores at the last
    step, as ``final/<key>``.
    """
    cfg: TrainConfig = spec.train
    device = torch.device(device)
    workdir = Path(workdir)
    ckpt_path = workdir / CHECKPOINT
    main = distributed.is_main()
    distributed.check_batch(cfg.batch_size)
    model.to(device)
    layout = parallel.resolve_layout(cfg, distributed.current().world_size)
    # sharded and wrapped before the optimizer sees the parameters (FSDP replaces them)
    trained = parallel.prepare(model, layout)
    sharded_checkpoint = layout.name != "ddp"

    generator = seed_everything(spec.seed)
    optimizer = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg))
    state: dict[str, Any] = {"step": 0, "history": [], "loss_sum": 0.0, "loss_count": 0,
                             "train_time_s": 0.0, "status": "ok", "diverged_step": None}
    resumed_from = None

    def restore(saved: dict) -> None:  # a candidate checkpoint; sharded: its shards too
        if saved.get("run_id") != _run_id(spec):
            raise HarnessError(f"{ckpt_path}: belongs to run {saved.get('run_id')}, not "
                               f"{_run_id(spec)}; remove it or use another workdir")
        if ("sharded" in saved) != sharded_checkpoint:
            raise HarnessError(
                f"{ckpt_path}: written by a run with layout "
                f"{'ddp' if 'model' in saved else 'fsdp or experts'}, this one uses "
                f"{layout.name}; resume with the same kind of layout or remove the checkpoint")
        if sharded_checkpoint:  # all or nothing: else the previous checkpoint, or afresh
            parallel.checkpoint.load(workdir / saved["sharded"], trained, optimizer)

    saved, checkpoint_note = load_checkpoint(ckpt_path, device, restore)
    if checkpoint_note:
        print(f"checkpoint: {checkpoint_note}", file=sys.stderr, flush=True)
    if saved is not None:
        if not sharded_checkpoint:
            model.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        set_rng_state(saved["rng"], generator)
        state.update(saved["state"])
        resumed_from = state["step"]

    def checkpoint() -> None:
        trainer = {"run_id": _run_id(spec), "scheduler": scheduler.state_dict(),
                   "rng": rng_state(generator), "state": dict(state)}
        if not sharded_checkpoint:
            if main:
                save_checkpoint(ckpt_path, {**trainer, "model": model.state_dict(),
                                            "optimizer": optimizer.state_dict()})
            return
        # every rank writes its shards; the small file that names them is written last
        folder = f"{SHARDED_DIR}/step-{state['step']:09d}"
        parallel.checkpoint.save(workdir / folder, trained, optimizer)
        distributed.barrier()
        if main:
            save_checkpoint(ckpt_path, {**trainer, "sharded": folder})
            remove_unreferenced_shards(ckpt_path)

    train = Loader(data.train, device, spec.data.loader,
                   augment_seed=spec.seed if spec.data.augment != "none" else None)
    test = Loader(data.test, device, spec.data.loader)
    train.plan(training_plan(generator, len(train), cfg.batch_size, cfg.steps - state["step"],
                             distributed.shard), first_step=state["step"])
    try:
        with tracking_metrics(model, False):  # training steps skip the diagnostics
            train_steps(trained, cfg, train, test, optimizer=optimizer, scheduler=scheduler,
                        generator=generator, state=state,
                        checkpoint=checkpoint if cfg.checkpoint_every else None,
                        on_progress=on_progress, log=log if main else None, layout=layout)
        peak_mb, peak_method = parallel.peak_memory_mb(device)
        tic = time.perf_counter()
        # where a forward needs every rank, every rank evaluates (rank 0 keeps the scores)
        scores = _final_scores(model, spec, data, train, test) if state["status"] == "ok" and (
            main or layout.collective) else {}
        if not main:
            return None
        result = {
            "status": state["status"], "diverged_step": state["diverged_step"],
            "steps_done": state["step"], "resumed_from_step": resumed_from,
            "checkpoint_note": checkpoint_note,
            "train_loss": (state["loss_sum"] / state["loss_count"] if state["loss_count"]
                           else state["history"][-1]["train_loss"] if state["history"] else None),
            "test_accuracy": None, "test_loss": None, "fewshot_accuracy": None,
            "fewshot_l2": None, **scores,
        }
        result.update(history=list(state["history"]), train_time_s=state["train_time_s"],
                      eval_time_s=time.perf_counter() - tic, **layout.record(),
                      all_to_all_share=(state["all_to_all_s"] / state["train_time_s"]
                                        if layout.experts_sharded and state["train_time_s"]
                                        else None),
                      peak_memory_rank_mb=peak_mb, peak_memory_rank_method=peak_method)
        if log is not None:
            log(state["step"], {f"final/{key}": value for key, value in result.items()
                                if key.startswith(("test_", "fewshot_accuracy", "router_"))})
        return result
    finally:
        train.close()
        test.close()


def _final_scores(model: nn.Module, spec, data, train: Loader, test: Loader) -> dict[str, Any]:
    """Test accuracy and loss, router metrics and the few-shot probe of the trained model."""
    cfg = spec.train
    scores = evaluate(model, test, batch_size=cfg.eval_batch_size, precision=cfg.precision)
    out = {"test_accuracy": scores.pop("accuracy"), "test_loss": scores.pop("loss"), **scores}
    if cfg.fewshot_shots:
        labels = getattr(data.train, "labels", None)
        if labels is None:
            labels = torch.tensor([data.train[i][1] for i in range(len(data.train))])
        draws = [features(model, train, fewshot_indices(labels, cfg.fewshot_shots,
                                                        data.num_classes, spec.data.seed, d),
                          batch_size=cfg.eval_batch_size, precision=cfg.precision)
                 for d in range(FEWSHOT_DRAWS)]
        tx, ty = features(model, test, torch.arange(len(test)),
                          batch_size=cfg.eval_batch_size, precision=cfg.precision)
        out.update(fewshot_accuracy=fewshot_probe(draws, tx, ty, data.num_classes),
                   fewshot_l2=FEWSHOT_L2)
    return out


def _run_id(spec) -> str:
    return getattr(spec, "run_id", None) or "unknown"


__all__ = ["evaluate", "fit", "lr_factor", "seed_everything", "train_steps"]
