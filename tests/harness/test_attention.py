import pytest
import torch

from harness.errors import ConfigError
from harness.nn.attention import attend, resolve_backend, xformers_available
from harness.nn.vit import build


def qkv(device="cpu"):
    torch.manual_seed(0)
    return [torch.randn(2, 17, 4, 8, device=device) for _ in range(3)]


def test_sdpa_and_math_agree():
    q, k, v = qkv()
    assert (attend(q, k, v, "sdpa") - attend(q, k, v, "math")).abs().max() < 1e-5


def test_math_matches_definition():
    q, k, v = (t.double() for t in qkv())
    scores = torch.softmax(q[0, :, 1] @ k[0, :, 1].T / 8**0.5, dim=-1)
    assert torch.allclose(attend(q, k, v, "math")[0, :, 1], scores @ v[0, :, 1])


def test_auto_is_sdpa_on_cpu():
    assert resolve_backend("auto", "cpu") == "sdpa"


def test_xformers_on_cpu_is_one_clear_error():
    with pytest.raises(ConfigError, match="'xformers' needs a CUDA device"):
        resolve_backend("xformers", "cpu")
    model = build("vit-w32d2h4m64/4@16", num_classes=3, attention="xformers")
    with pytest.raises(ConfigError, match="needs a CUDA device"):
        model(torch.randn(1, 3, 16, 16))


def test_unknown_backend():
    with pytest.raises(ConfigError, match="allowed: auto, sdpa, xformers, math"):
        resolve_backend("flash", "cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="xformers kernels need CUDA; no GPU here")
def test_xformers_agrees_on_cuda():
    if not xformers_available():
        pytest.skip("xformers is not installed")
    q, k, v = qkv("cuda")
    ref = attend(q, k, v, "math")
    assert (attend(q, k, v, "xformers") - ref).abs().max() < 1e-5
    assert (attend(q, k, v, "sdpa") - ref).abs().max() < 1e-5
    assert resolve_backend("auto", "cuda") == "xformers"


def test_whole_model_agrees_across_backends():
    torch.manual_seed(0)
    model = build("vit-w32d2h4m64/4@16:soft:e4", num_classes=3)
    torch.nn.init.normal_(model.head.weight)
    images = torch.randn(2, 3, 16, 16)
    outs = {}
    for backend in ("sdpa", "math"):
        for block in model.blocks:
            block.attn.backend = backend
        outs[backend] = model(images)
        assert model.attention_backend == backend
    assert (outs["sdpa"] - outs["math"]).abs().max() < 1e-5
