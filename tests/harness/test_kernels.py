"""The fast Soft MoE / experts kernels: the hand-written backwards equal autograd on the plain
formulation (float64)."""

import pytest
import torch
import torch.nn.functional as F

from harness.nn.moe import BatchedExperts, SoftMoE
from harness.nn.moe.experts import (
    _PACKED,
    _ExpertsFunction,
    drop_packed,
    mm_nt,
    new_buffer,
    onednn_ok,
)
from harness.nn.moe.soft import _SoftCombine, _SoftDispatch


# --- the fast kernels equal the plain formulation ----------------------------------------------
def plain_soft_moe(layer: SoftMoE, x):
    """The layer written with plain torch ops (autograd does the backward)."""
    d, n = x.shape[2], layer.num_slots
    phi = layer.phi.reshape(d, n)
    if layer.normalize:
        xn = x * (x.pow(2).sum(-1, keepdim=True) + 1e-6).rsqrt()  # the paper's code's form
        phin = phi * (phi.pow(2).sum(0, keepdim=True) + 1e-6).rsqrt() * layer.scale
        logits = xn @ phin
    else:
        logits = x @ phi
    slots = torch.softmax(logits, dim=1).transpose(1, 2) @ x  # (B, n, D)
    ex = layer.experts
    b, e, p = x.shape[0], layer.num_experts, layer.slots_per_expert
    xe = slots.reshape(b, e, p, d).transpose(0, 1).reshape(e, b * p, d)
    out = F.gelu(xe @ ex.w1 + ex.b1[:, None]) @ ex.w2 + ex.b2[:, None]
    out = out.reshape(e, b, p, d).transpose(0, 1).reshape(b, n, d)
    return torch.softmax(logits, dim=2) @ out


@pytest.mark.parametrize("experts,slots,normalize", [(1, 1, True), (4, 1, True), (4, 2, True),
                                                     (3, 3, False), (8, 1, False)])
def test_fast_soft_moe_equals_plain_formulation_with_gradients(experts, slots, normalize):
    torch.manual_seed(experts * 10 + slots)
    dtype = torch.float64
    layer = SoftMoE(12, experts, slots, 20, normalize=normalize).to(dtype)
    with torch.no_grad():
        layer.scale.fill_(1.3)
        layer.experts.b1.normal_()
        layer.experts.b2.normal_()
    x = torch.randn(3, 7, 12, dtype=dtype, requires_grad=True)
    g = torch.randn(3, 7, 12, dtype=dtype)
    grads = []
    for fn in (layer, lambda v: plain_soft_moe(layer, v)):
        layer.zero_grad(set_to_none=True)
        x.grad = None
        y = fn(x)
        (y * g).sum().backward()
        grads.append((y.detach(), x.grad.clone(),
                      {k: p.grad.clone() for k, p in layer.named_parameters()
                       if p.grad is not None}))
    (y1, gx1, gp1), (y2, gx2, gp2) = grads
    assert torch.allclose(y1, y2, rtol=1e-10, atol=1e-12)
    assert torch.allclose(gx1, gx2, rtol=1e-10, atol=1e-12)
    assert gp1.keys() == gp2.keys()
    for name in gp1:
        assert torch.allclose(gp1[name], gp2[name], rtol=1e-10, atol=1e-12), name
    with torch.no_grad():  # the inference path (in-place GELU, nothing saved) agrees too
        assert torch.allclose(layer(x), y1, rtol=1e-12, atol=1e-12)


def test_zero_token_has_a_finite_gradient():
    layer = SoftMoE(6, 2, 1, 8).double()
    x = torch.randn(1, 4, 6, dtype=torch.float64)
    x[0, 0] = 0.0
    x.requires_grad_(True)
    layer(x).sum().backward()
    assert torch.isfinite(x.grad).all()


def test_autograd_functions_pass_gradcheck():
    torch.manual_seed(0)
    kw = dict(dtype=torch.float64, requires_grad=True)
    x, phi_t = torch.randn(2, 5, 6, **kw), torch.randn(4, 6, **kw)
    for experts, normalize in ((2, True), (4, False), (1, True)):
        assert torch.autograd.gradcheck(
            lambda a, b, e=experts, nz=normalize: _SoftDispatch.apply(a, b, e, nz, True),
            (x, phi_t))
    combine = torch.randn(2, 5, 4, dtype=torch.float64).softmax(-1).requires_grad_(True)
    slot_out = torch.randn(2, 4, 6, **kw)  # 2 experts x (2 slots x 2 images)
    assert torch.autograd.gradcheck(lambda c, s: _SoftCombine.apply(c, s, True),
                                    (combine, slot_out))
    args = (torch.randn(3, 4, 5, **kw), torch.randn(3, 5, 7, **kw), torch.randn(3, 7, **kw),
            torch.randn(3, 7, 5, **kw), torch.randn(3, 5, **kw))
    assert torch.autograd.gradcheck(lambda *a: _ExpertsFunction.apply(*a, True), args)


def test_batched_experts_fast_path_equals_fallback():
    torch.manual_seed(1)
    experts = BatchedExperts(3, 8, 16).double()
    x = torch.randn(3, 5, 8, dtype=torch.float64)
    fast = experts(x)
    plain = F.gelu(torch.baddbmm(experts.b1.unsqueeze(1), x, experts.w1))
    plain = torch.baddbmm(experts.b2.unsqueeze(1), plain, experts.w2)
    assert torch.allclose(fast, plain, rtol=1e-12, atol=1e-12)


needs_onednn = pytest.mark.skipif(not onednn_ok(torch.zeros(1)),
                                  reason="this torch build has no oneDNN")


@needs_onednn
def test_onednn_inference_path_equals_the_training_path():
    """Without gradients float32 CPU experts and Soft MoE logits go through oneDNN's fused
    matmul + bias + GELU; with gradients through the MKL path. Same numbers (float32), and
    the float64 plain formulation agrees with both."""
    torch.manual_seed(2)
    layer = SoftMoE(24, 6, 2, 48)
    for p in layer.experts.parameters():  # non-zero biases, so that their fusion is tested
        torch.nn.init.normal_(p)
    x = torch.randn(3, 10, 24)
    with torch.no_grad():
        inference = layer(x)
    training = layer(x.clone().requires_grad_(True)).detach()
    assert torch.allclose(inference, training, rtol=1e-4, atol=1e-4)
    plain = SoftMoE(24, 6, 2, 48).double()
    plain.load_state_dict(layer.state_dict())
    with torch.no_grad():
        reference = plain(x.double())  # float64: the MKL path
    assert torch.allclose(inference.double(), reference, rtol=1e-4, atol=1e-4)
    experts_in = torch.randn(5, 6, 24).transpose(0, 1)  # strided, as Soft MoE passes it
    with torch.no_grad():
        fast = layer.experts(experts_in)
    plain_out = torch.baddbmm(layer.experts.b2.unsqueeze(1), F.gelu(torch.baddbmm(
        layer.experts.b1.unsqueeze(1), experts_in, layer.experts.w1)), layer.experts.w2)
    assert torch.allclose(fast, plain_out.detach(), rtol=1e-4, atol=1e-4)
    a, b = torch.randn(7, 24), torch.randn(5, 24)
    assert torch.allclose(mm_nt(a, b), a @ b.t(), rtol=1e-5, atol=1e-5)


@needs_onednn
def test_packed_weights_follow_every_weight_change():
    torch.manual_seed(3)
    experts = BatchedExperts(4, 8, 16)
    x = torch.randn(4, 5, 8)

    def plain():
        h = F.gelu(torch.baddbmm(experts.b1.unsqueeze(1), x, experts.w1))
        return torch.baddbmm(experts.b2.unsqueeze(1), h, experts.w2).detach()

    with torch.no_grad():
        assert torch.allclose(experts(x), plain(), atol=1e-5) and experts in _PACKED
    optimizer = torch.optim.SGD(experts.parameters(), lr=0.5)
    experts(x.requires_grad_(True)).sum().backward()
    assert experts not in _PACKED  # a forward with gradients drops the packed copy
    with torch.no_grad():
        experts(x)  # packs the current weights
        optimizer.step()  # in place: bumps the weights' versions
        assert torch.allclose(experts(x), plain(), atol=1e-5)
        experts.load_state_dict({k: v + 1 for k, v in experts.state_dict().items()})
        assert torch.allclose(experts(x), plain(), atol=1e-5)
        experts.w1.data.mul_(2)  # bypasses version counters: the documented escape
        drop_packed(experts)
        assert torch.allclose(experts(x), plain(), atol=1e-5)


def test_new_buffer_is_an_ordinary_tensor():
    like = torch.zeros(1, dtype=torch.float64)
    big = new_buffer((3, 1024, 1024), like)  # 24 MiB: advised as huge pages on Linux
    assert big.shape == (3, 1024, 1024) and big.dtype == torch.float64
    big.fill_(2.0)
    assert big.sum().item() == 2.0 * 3 * 1024 * 1024
