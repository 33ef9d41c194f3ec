"""All experts of one MoE layer as one module, run as batched matmuls.

On the CPU the forward and backward are one custom autograd function with a hand-written
backward, so that every large buffer is allocated once, by us, and reused in place where
the math allows (GELU in place when no gradient is needed; GELU's backward written into the
buffer of its incoming gradient). Large fresh CPU buffers are advised as transparent huge
pages (:func:`new_buffer`): the weight gradients are fresh memory at every step, and 4 KiB
page faults on hundreds of MB would cost more than the matmuls that fill them.

Without gradients (evaluation, inference) on a float32 CPU, each expert runs as two calls
of oneDNN's matmul with the bias and GELU fused into it (:func:`_experts_onednn`): one pass
over the hidden activations instead of three. The weights go in as oneDNN prepacks them
(its blocked layout): the packed copy is made at the first such call and kept
(:func:`_packed_weights`) until the weights change (their version counters, which every
in-place update bumps, e.g. an optimizer step or ``load_state_dict``) or a forward with
gradients runs. While kept it doubles the expert weights' memory; training never holds it.
(Writes through ``.data`` bypass version counters, as they bypass autograd: after such a
write, call ``drop_packed(module)``.) What each of these choices measured: docs/moe-layers.md.
"""

from __future__ import annotations

import ctypes
import functools
import math
import os
import sys
import weakref

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from harness.spec.rules import GELUS, check_gelu

_HUGE_PAGE = 2 << 20
_HUGE_PAGE_MIN_BYTES = 4 << 20
_MADV_HUGEPAGE = 14


@functools.cache
def _madvise():
    """libc's ``madvise`` where transparent huge pages can be had on request, else None.

    Set ``MOE_HARNESS_THP=0`` to switch the advice off (e.g. to measure without it).
    """
    if sys.platform != "linux" or os.environ.get("MOE_HARNESS_THP", "1") == "0":
        return None
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            if "[never]" in f.read():
                return None
        madvise = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    madvise.restype = ctypes.c_int
    return madvise


def new_buffer(shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """An uninitialised tensor of ``like``'s dtype and device; on Linux CPUs, the 2 MiB
    pages lying wholly inside a large buffer are advised as transparent huge pages (a hint
    only: contents and semantics are those of ``torch.empty``)."""
    out = torch.empty(shape, dtype=like.dtype, device=like.device)
    if out.device.type == "cpu" and out.nbytes >= _HUGE_PAGE_MIN_BYTES:
        madvise = _madvise()
        if madvise is not None:
            start = -(-out.data_ptr() // _HUGE_PAGE) * _HUGE_PAGE
            end = (out.data_ptr() + out.nbytes) // _HUGE_PAGE * _HUGE_PAGE
            if end > start:
                madvise(start, end - start, _MADV_HUGEPAGE)
    return out


def fast_path_ok(*tensors: torch.Tensor) -> bool:
    """Whether the hand-written kernels apply: one dtype, no autocast (which would change
    dtypes inside), no tensor subclass that needs its own dispatch."""
    t0 = tensors[0]
    try:
        if torch.is_autocast_enabled(t0.device.type):
            return False
    except RuntimeError:  # a device type without autocast (e.g. meta)
        pass
    return all(type(t) is torch.Tensor or type(t) is nn.Parameter for t in tensors) and all(
        t.dtype == t0.dtype and t.device == t0.device for t in tensors
    )


@functools.cache
def onednn_linear():
    """oneDNN's matmul + bias + activation in one op (the op torch.compile's CPU backend
    fuses linear layers into), or None where this torch build has no oneDNN."""
    if not torch.backends.mkldnn.is_available():
        return None
    try:
        return torch.ops.mkldnn._linear_pointwise
    except (AttributeError, RuntimeError):
        return None


def onednn_ok(t: torch.Tensor) -> bool:
    """Whether oneDNN's fused matmuls serve ``t``'s device and dtype (float32 CPU). Not
    while TorchScript traces (fvcore's FLOP count), which cannot record the op's arguments:
    the trace then holds the MKL path, the same multiply-adds."""
    return (t.device.type == "cpu" and t.dtype == torch.float32
            and onednn_linear() is not None and not torch.jit.is_tracing())


def mm_nt(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b.t()`` for 2-D ``a`` (rows, k) and ``b`` (cols, k): oneDNN where it serves,
    else MKL's "NT" kernel."""
    if onednn_ok(a) and not needs_grad(a, b):
        return onednn_linear()(a, b, None, "none", [], "")
    return torch.mm(a, b.t())


_PACKED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
"""BatchedExperts -> (weights' identity and versions, packed w1 list, packed w2 list)."""


def _packed_weights(experts: BatchedExperts) -> tuple[list, list]:
    """The experts' weights, one oneDNN-packed (out, in) matrix per expert and layer, from
    the cache while the weights are unchanged (same storage, same version counter)."""
    w1, w2 = experts.w1, experts.w2
    key = (w1.data_ptr(), w1._version, w2.data_ptr(), w2._version)
    cached = _PACKED.get(experts)
    if cached is None or cached[0] != key:
        _PACKED.pop(experts, None)  # free the stale copy before making the new one
        pack = torch.ops.mkldnn._reorder_linear_weight
        with torch.no_grad():
            cached = (key, [pack(w.t()) for w in w1], [pack(w.t()) for w in w2])
        _PACKED[experts] = cached
    return cached[1], cached[2]


def drop_packed(module: nn.Module) -> None:
    """Forget the packed expert weights of every BatchedExperts inside ``module``."""
    for m in module.modules():
        _PACKED.pop(m, None)


def _experts_onednn(experts: BatchedExperts, x: torch.Tensor) -> torch.Tensor:
    """The forward of :class:`_ExpertsFunction` without autograd, expert by expert through
    oneDNN with prepacked weights (the input made contiguous once, not copied expert by
    expert inside oneDNN's op)."""
    linear = onednn_linear()
    w1, w2 = _packed_weights(experts)
    b1, b2 = experts.b1, experts.b2
    approximate = GELUS[experts.gelu]
    x = x.contiguous()
    return torch.stack([
        linear(linear(x[e], w1[e], b1[e], "gelu", [], approximate), w2[e], b2[e], "none", [], "")
        for e in range(x.shape[0])
    ])


def needs_grad(*tensors: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


class _ExpertsFunction(torch.autograd.Function):
    """out[e] = gelu(x[e] @ w1[e] + b1[e]) @ w2[e] + b2[e] for every expert e; ``approximate``
    is torch's name of the GELU form ("none" or "tanh")."""

    @staticmethod
    def forward(ctx, x, w1, b1, w2, b2, keep: bool, approximate: str = "none"):
        e, n, dim = x.shape
        hidden = w1.shape[2]
        pre = torch.baddbmm(b1.unsqueeze(1), x, w1, out=new_buffer((e, n, hidden), x))
        if keep:
            h = torch.ops.aten.gelu.out(pre, approximate=approximate,
                                        out=new_buffer(pre.shape, pre))
            ctx.save_for_backward(x, w1, w2, pre, h)
            ctx.approximate = approximate
        else:
            h = torch.ops.aten.gelu_(pre, approximate=approximate)
        return torch.baddbmm(b2.unsqueeze(1), h, w2, out=new_buffer((e, n, dim), x))

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, w1, w2, pre, h = ctx.saved_tensors
        need_x, need_w1, need_b1, need_w2, need_b2 = ctx.needs_input_grad[:5]
        bmm = lambda a, b: torch.bmm(a, b, out=new_buffer((*a.shape[:2], b.shape[2]), a))  # noqa: E731
        d_w2 = bmm(h.transpose(1, 2), grad) if need_w2 else None
        d_b2 = grad.sum(1) if need_b2 else None
        d_h = bmm(grad, w2.transpose(1, 2))
        del h
        gelu_backward = torch.ops.aten.gelu_backward.grad_input
        d_pre = gelu_backward(d_h, pre, approximate=ctx.approximate, grad_input=d_h)  # in place
        d_w1 = bmm(x.transpose(1, 2), d_pre) if need_w1 else None
        d_b1 = d_pre.sum(1) if need_b1 else None
        d_x = bmm(d_pre, w1.transpose(1, 2)) if need_x else None
        return d_x, d_w1, d_b1, d_w2, d_b2, None, None


class BatchedExperts(nn.Module):
    """``num_experts`` two-layer MLPs (dim -> hidden -> dim, GELU ``gelu``: "erf" exact or
    "tanh" approximation) with stacked weights.

    ``forward`` takes (E, n, dim), row block e going to expert e, and runs two ``baddbmm``
    calls: no Python loop over experts.
    """

    def __init__(self, num_experts: int, dim: int, hidden_dim: int, gelu: str = "erf"):
        super().__init__()
        self.num_experts, self.dim, self.hidden_dim = num_experts, dim, hidden_dim
        self.gelu = check_gelu(gelu)
        self.w1 = nn.Parameter(torch.empty(num_experts, dim, hidden_dim))
        self.b1 = nn.Parameter(torch.zeros(num_experts, hidden_dim))
        self.w2 = nn.Parameter(torch.empty(num_experts, hidden_dim, dim))
        self.b2 = nn.Parameter(torch.zeros(num_experts, dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Xavier-uniform per expert, the same init as the dense MLP's nn.Linear layers get.
        bound = math.sqrt(6.0 / (self.dim + self.hidden_dim))
        nn.init.uniform_(self.w1, -bound, bound)
        nn.init.uniform_(self.w2, -bound, bound)
        nn.init.zeros_(self.b1)
        nn.init.zeros_(self.b2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3 or x.shape[0] != self.num_experts or x.shape[2] != self.dim:
            raise ValueError(
                f"BatchedExperts expects (num_experts={self.num_experts}, n, dim={self.dim}), "
                f"got {tuple(x.shape)}"
            )
        params = (self.w1, self.b1, self.w2, self.b2)
        if fast_path_ok(x, *params):
            keep = needs_grad(x, *params)
            if keep:
                _PACKED.pop(self, None)  # training: the weights are about to change
            elif onednn_ok(x):
                return _experts_onednn(self, x)
            return _ExpertsFunction.apply(x, *params, keep, GELUS[self.gelu])
        h = F.gelu(torch.baddbmm(self.b1.unsqueeze(1), x, self.w1), approximate=GELUS[self.gelu])
        return torch.baddbmm(self.b2.unsqueeze(1), h, self.w2)

    def extra_repr(self) -> str:
        return (f"num_experts={self.num_experts}, dim={self.dim}, hidden_dim={self.hidden_dim}, "
                f"gelu={self.gelu!r}")
