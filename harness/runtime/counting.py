"""FLOPs of a built model, counted by fvcore and by torch; both must agree with the closed form
(``harness.cost.flops``).

**Convention (everywhere in moe-harness): 1 multiply-add = 2 FLOPs.** Counted are the
multiply-adds of matrix products: linear layers, the patch-embedding convolution,
``mm``/``matmul``/``bmm``/``baddbmm``, ``einsum`` contractions and attention (q·kᵀ and
p·v). Not counted, by convention (as in the paper, fvcore's matmul handles and torch's
``FlopCounterMode``): elementwise work (biases, GELU, softmax, layer norm, the Soft MoE
L2 normalisation, residual adds), reductions (means, sums; e.g. Tokens Choice's
gate-weighted sum over its k choices, S·k·D multiply-adds, under 0.1% of a layer) and data
movement or routing decisions (gather/scatter/index ops, top-k, sort, cumsum, one-hot).
At the paper's shapes these are well under 1% of the total.

The three counters:

- :func:`fvcore_flops` (primary): ``fvcore.nn.FlopCountAnalysis`` on the real model with
  real images. fvcore counts 1 per multiply-add; we double it. We register handles for the
  ops it does not count in our models (``baddbmm``, ``scaled_dot_product_attention``,
  xformers' attention ops, broadcasting ``matmul``, the autograd functions of our Soft MoE
  and experts, which TorchScript records as opaque ``prim::PythonOp`` nodes) and
  declare the zero-cost ops above explicitly. **Any other op is an error**
  (:class:`UncountedOpError`), never a silent zero.
- :func:`torch_flops`: ``torch.utils.flop_counter.FlopCounterMode`` (2 FLOPs per
  multiply-add already), with a ``custom_mapping`` for the CPU flash-attention kernel it
  would count as 0. It also runs on the ``meta`` device, so it counts models too large to
  build (Soft MoE H/14 256E).
- :func:`analytic_flops`: a closed form per layer kind written from the shapes.

fvcore traces with TorchScript, which torch has deprecated; the cross-checks (tests) tell
when a torch upgrade breaks it.

Per-image numbers are counted at the smallest batch that holds one routing group (one
image unless ``group_size`` spans several), divided by that batch. The MAP head computes its
query projection once per batch; at batch 1 it is counted once per image.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable
from typing import Any

from harness.cost.flops import (
    KINDS,
    FlopCount,
    analytic_flops,
    attention_macs,
    matmul_macs,
)
from harness.errors import HarnessError


class UncountedOpError(HarnessError):
    """The model ran an op that no FLOP handle covers and that is not declared zero-cost."""


# --- ops that do no multiply-adds by our convention (each must be listed) -----------------
ZERO_COST_OPS: dict[str, tuple[str, ...]] = {
    "elementwise": (
        "aten::add", "aten::add_", "aten::sub", "aten::sub_", "aten::rsub", "aten::mul",
        "aten::mul_", "aten::div", "aten::div_", "aten::pow", "aten::sqrt", "aten::rsqrt",
        "aten::reciprocal", "aten::neg", "aten::exp", "aten::log", "aten::erf", "aten::gelu",
        "aten::gelu_", "aten::relu", "aten::softmax", "aten::_softmax", "aten::log_softmax",
        "aten::layer_norm", "aten::group_norm", "aten::batch_norm", "aten::clamp_min",
        "aten::clamp_max", "aten::where", "aten::lt", "aten::le", "aten::gt", "aten::ge",
        "aten::eq", "aten::ne", "aten::abs", "aten::sigmoid", "aten::tanh", "aten::addcmul",
    ),
    "reduction": (
        "aten::mean", "aten::sum", "aten::amax", "aten::linalg_vector_norm", "aten::norm",
        "aten::frobenius_norm", "aten::std", "aten::var", "aten::bincount",
    ),
    "routing bookkeeping and data movement": (
        "aten::topk", "aten::sort", "aten::argsort", "aten::cumsum", "aten::one_hot",
        "aten::scatter", "aten::scatter_", "aten::index_copy", "aten::index_copy_",
        "aten::index_add", "aten::index_add_", "aten::index_select", "aten::empty_like",
        "aten::empty_strided", "aten::masked_select", "aten::repeat", "aten::fill_",
        "aten::zero_", "aten::clone", "aten::randn_like", "aten::normal", "aten::lift_fresh",
        "aten::alias", "aten::as_strided", "aten::expand_as", "aten::view_as",
        "aten::resolve_conj", "aten::resolve_neg", "aten::_unsafe_view", "aten::argmax",
    ),
}


# --- shape-level MAC formulas (shared by the fvcore handles and the analytic count) -----------


# --- fvcore --------------------------------------------------------------------------------
def _shapes(values: Iterable[Any]) -> list[list[int] | None]:
    from fvcore.nn.jit_handles import get_shape

    return [get_shape(v) for v in values]


def _matmul_handle(inputs, outputs) -> int:
    a, b = _shapes(inputs[:2])
    return matmul_macs(a, b)


def _baddbmm_handle(inputs, outputs) -> int:  # (self, batch1, batch2, beta, alpha)
    a, b = _shapes(inputs[1:3])
    return matmul_macs(a, b)


def _sdpa_handle(inputs, outputs) -> int:  # (query, key, value, ...)
    q, k, v = _shapes(inputs[:3])
    return attention_macs(q, k, v, "bhmd")


def _bmhk_attention_handle(inputs, outputs) -> int:
    """xformers' kernels take (batch, tokens, heads, head_dim): the first three 4-D tensors."""
    shapes = [s for s in _shapes(inputs) if s is not None and len(s) == 4][:3]
    if len(shapes) < 3:
        raise UncountedOpError("xformers attention op without (q, k, v) 4-D tensor inputs")
    return attention_macs(*shapes, layout="bmhd")


def _experts_handle(inputs, outputs) -> int:  # _ExpertsFunction(x, w1, b1, w2, b2)
    x, w1, _, w2, _ = _shapes(inputs[:5])
    return matmul_macs(x, w1) + matmul_macs([*x[:-1], w1[-1]], w2)


def _soft_dispatch_handle(inputs, outputs) -> int:  # _SoftDispatch(x, phi_t): logits, slots
    x, phi_t = _shapes(inputs[:2])
    return 2 * matmul_macs(x, phi_t[::-1])


def _soft_combine_handle(inputs, outputs) -> int:  # _SoftCombine(combine, expert outputs)
    combine, slot_out = _shapes(inputs[:2])
    return matmul_macs(combine, [combine[-1], slot_out[-1]])


def _zero(inputs, outputs) -> int:
    return 0


FVCORE_HANDLES = {
    "aten::matmul": _matmul_handle,
    "aten::mm": _matmul_handle,
    "aten::baddbmm": _baddbmm_handle,
    "aten::scaled_dot_product_attention": _sdpa_handle,
    # xformers (CUDA only; these are the ops memory_efficient_attention dispatches to)
    "xformers::efficient_attention_forward_cutlass": _bmhk_attention_handle,
    "xformers_flash::flash_fwd": _bmhk_attention_handle,
    "xformers_flash3::flash_fwd": _bmhk_attention_handle,
    "aten::_efficient_attention_forward": _bmhk_attention_handle,
    "aten::_flash_attention_forward": _bmhk_attention_handle,
    "prim::PythonOp._fMHA": _bmhk_attention_handle,
    # our autograd functions (harness.nn.moe.experts, harness.nn.moe.soft)
    "prim::PythonOp._ExpertsFunction": _experts_handle,
    "prim::PythonOp._SoftDispatch": _soft_dispatch_handle,
    "prim::PythonOp._SoftCombine": _soft_combine_handle,
}
"""fvcore handles we add or replace (multiply-adds, fvcore's unit). fvcore's own handles
for ``linear``, ``addmm``, ``bmm``, ``einsum`` and ``_convolution`` are kept."""


def fvcore_flops(model, images) -> FlopCount:
    """FLOPs per image of ``model(images)`` by fvcore, 2 per multiply-add, per layer kind.

    Raises :class:`UncountedOpError` if the trace holds an op that has no handle and is not
    declared zero-cost in :data:`ZERO_COST_OPS`.
    """
    import torch
    from fvcore.nn import FlopCountAnalysis

    with _counting_mode(model), torch.no_grad():
        analysis = FlopCountAnalysis(model, images)
        analysis.set_op_handle(**FVCORE_HANDLES)
        analysis.set_op_handle(**{op: _zero for ops in ZERO_COST_OPS.values() for op in ops})
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        analysis.tracer_warnings("none")
        total = analysis.total()
        unsupported = dict(analysis.unsupported_ops())
    if unsupported:
        raise UncountedOpError(
            f"fvcore met ops that no FLOP handle counts: {unsupported}; add a handle in "
            f"harness.runtime.counting.FVCORE_HANDLES or, if they do no multiply-adds, declare "
            f"them in "
            f"ZERO_COST_OPS"
        )
    per_image = 2.0 / images.shape[0]
    by_module = {name: 2.0 * v for name, v in analysis.by_module().items()}
    by_kind = _split_by_kind(model, by_module, 2.0 * total)
    return FlopCount(
        total=total * per_image,
        by_kind={k: v / images.shape[0] for k, v in by_kind.items()},
        counter="fvcore",
        by_op={op: v * per_image for op, v in analysis.by_operator().items()},
    )


# --- torch FlopCounterMode -------------------------------------------------------------------
def _sdpa_cpu_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs):
    return 2 * attention_macs(list(query_shape), list(key_shape), list(value_shape), "bhmd")


def _onednn_linear_flop(x_shape, w_shape, *args, out_shape=None, **kwargs):
    """oneDNN's fused linear (our experts and Soft MoE logits on float32 CPUs): x @ wᵀ."""
    return 2 * matmul_macs(list(x_shape), list(w_shape)[::-1])


def torch_flops(model, images) -> FlopCount:
    """FLOPs per image by ``torch.utils.flop_counter.FlopCounterMode`` (works on ``meta``)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from harness.nn.moe.experts import onednn_linear

    aten = torch.ops.aten
    mapping = {aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu_flop}
    if onednn_linear() is not None:  # the op our experts and logits use on float32 CPUs
        mapping[onednn_linear()] = _onednn_linear_flop
    with _counting_mode(model), torch.no_grad():
        with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
            model(images)
    counts = counter.get_flop_counts()
    root = type(model).__name__
    by_module = {"": float(sum(counts.get(root, {}).values()))}
    for name, ops in counts.items():
        if name.startswith(root + "."):
            by_module[name[len(root) + 1:]] = float(sum(ops.values()))
    total = float(counter.get_total_flops())
    batch = images.shape[0]
    by_kind = _split_by_kind(model, by_module, total)
    return FlopCount(
        total=total / batch,
        by_kind={k: v / batch for k, v in by_kind.items()},
        counter="FlopCounterMode",
        by_op={str(op): v / batch for op, v in counts.get("Global", {}).items()},
    )


# --- attribution to layer kinds ---------------------------------------------------------------
def _split_by_kind(model, by_module: dict[str, float], total: float) -> dict[str, float]:
    """Per-kind FLOPs from per-module (inclusive) counts of a VisionTransformer."""
    get = lambda name: by_module.get(name, 0.0)  # noqa: E731
    if not hasattr(model, "blocks"):  # not a VisionTransformer: no kinds to tell apart
        return {"other": total}
    kinds = dict.fromkeys(KINDS, 0.0)
    kinds["patch_embed"] = get("patch_embed")
    moe_blocks = set(getattr(model, "moe_blocks", ()))
    for i in range(len(model.blocks)):
        kinds["attention"] += get(f"blocks.{i}.attn")
        if i in moe_blocks:
            experts = get(f"blocks.{i}.mlp.experts")
            kinds["experts"] += experts
            kinds["routing"] += get(f"blocks.{i}.mlp") - experts
        else:
            kinds["mlp"] += get(f"blocks.{i}.mlp")
    kinds["head"] = get("head") + get("map_head")
    other = total - sum(kinds.values())
    if abs(other) > 1e-9 * max(total, 1.0):
        kinds["other"] = other  # outside every known part: a bug to look at, never dropped
    return kinds


@contextlib.contextmanager
def _counting_mode(model):
    """Eval mode and no MoE metric tracking while counting; restores both."""
    from harness.nn.moe.base import tracking_metrics

    training = model.training
    model.eval()
    try:
        with tracking_metrics(model, False):
            yield
    finally:
        model.train(training)


# --- closed form ---------------------------------------------------------------------------------


# --- entry points --------------------------------------------------------------------------------
def build_for_counting(cfg, device="cpu"):
    """The model of ``cfg`` with uninitialised weights (``meta`` then ``to_empty``): FLOP
    counts depend on shapes only, and this skips initialising (and touching) the weights of
    models with hundreds of millions of parameters. Never train or time such a model."""
    import torch

    from harness.nn.vit import build

    with torch.device("meta"):
        model = build(cfg)
    return model.to_empty(device=device)


def counting_batch(cfg) -> int:
    """Images per counted forward: 1, or enough for one routing group when it spans images."""
    group = getattr(cfg, "group_size", None)
    if group is None or group <= cfg.num_tokens:
        return 1
    return math.ceil(group / cfg.num_tokens)


COUNTERS = {"fvcore": fvcore_flops, "torch": torch_flops}


def count_flops(model, cfg, counter: str = "fvcore", device=None) -> FlopCount:
    """FLOPs per image of ``model`` (built from ``cfg``) by ``counter`` ('fvcore', 'torch'
    or 'analytic'), on images of the config's size on the model's device."""
    import torch

    if counter == "analytic":
        return analytic_flops(cfg)
    if counter not in COUNTERS:
        raise ValueError(f"unknown FLOP counter {counter!r}; allowed: analytic, fvcore, torch")
    if device is None:
        device = next(model.parameters()).device
    images = torch.randn(counting_batch(cfg), cfg.in_chans, cfg.image_size, cfg.image_size,
                         device=device)
    return COUNTERS[counter](model, images)


def paper_table(counter: str = "meta", max_build_params: float = 1e9) -> list[dict]:
    """Our parameters, eval GFLOP/img and training exaFLOP for each model of the paper's
    table, beside the paper's figures and the ratios (ours / paper).

    ``counter``: ``"meta"`` (default) builds every model on the ``meta`` device (no memory)
    and counts its parameters and FLOPs there (``FlopCounterMode``); ``"fvcore"`` builds the
    models with at most ``max_build_params`` parameters on the CPU and counts them with
    fvcore, the others on ``meta``; ``"analytic"`` uses the closed forms only. Every row
    also carries the closed-form figures and says how it was counted.
    """
    from harness.cost.flops import train_exaflops
    from harness.cost.paper import PAPER_BATCH, PAPER_MODELS, parse_paper_spec
    from harness.cost.params import closed_form_params

    rows = []
    for paper in PAPER_MODELS:
        cfg = parse_paper_spec(paper.spec)
        analytic = closed_form_params(cfg)["params_total"], analytic_flops(cfg).gflops
        params, gflops, counted_by = _count_paper_model(cfg, counter, max_build_params,
                                                        analytic)
        images = paper.steps * PAPER_BATCH
        ours = train_exaflops(gflops, images)
        if paper.train_exaflops_printed is not None:
            paper_ef, source = paper.train_exaflops_printed, "printed"
        else:
            paper_ef = train_exaflops(paper.eval_gflops, images)["train_exaflops_paper"]
            source = "from its GFLOP column"
        rows.append({
            "model": paper.label,
            "spec": cfg.spec,
            "counted_by": counted_by,
            "params": params,
            "params_analytic": analytic[0],
            "params_paper": paper.params,
            "params_ratio": params / paper.params,
            "gflops_per_image": gflops,
            "gflops_analytic": analytic[1],
            "gflops_paper": paper.eval_gflops,
            "gflops_ratio": gflops / paper.eval_gflops,
            "images_seen": images,
            "train_exaflops": ours["train_exaflops"],
            "train_exaflops_paper_convention": ours["train_exaflops_paper"],
            "train_exaflops_paper": paper_ef,
            "train_exaflops_paper_source": source,
            "train_exaflops_ratio": ours["train_exaflops_paper"] / paper_ef,
        })
    return rows


def _count_paper_model(cfg, counter: str, max_build_params: float, analytic):
    import torch

    from harness.nn.vit import build

    if counter == "analytic":
        return *analytic, "analytic"
    if counter not in ("meta", "fvcore"):
        raise ValueError(f"unknown counter {counter!r}; allowed: meta, fvcore, analytic")
    device = "cpu" if counter == "fvcore" and analytic[0] <= max_build_params else "meta"
    with torch.device(device):
        model = build(cfg)
    images = torch.randn(1, cfg.in_chans, cfg.image_size, cfg.image_size, device=device)
    params = sum(p.numel() for p in model.parameters())
    if device == "cpu":
        return params, fvcore_flops(model, images).gflops, "fvcore (built on CPU)"
    return params, torch_flops(model, images).gflops, "FlopCounterMode on meta"
