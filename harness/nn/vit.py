"""Vision Transformer (pre-norm) with a pluggable MLP per block.

Staged forward as in timm: ``forward_features`` (tokens after the final norm),
``pool`` (pre-logits), ``forward_head`` (logits).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from harness.nn.attention import attend, check_backend, resolve_backend
from harness.nn.moe import Mlp
from harness.nn.moe.base import MetricMeans, MoELayer
from harness.spec.model import ModelConfig, parse_model_spec


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, backend: str = "auto"):
        super().__init__()
        check_backend(backend)
        self.heads, self.backend = heads, backend
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.backend_used: str | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).unbind(2)
        self.backend_used = resolve_backend(self.backend, x.device)
        out = attend(q, k, v, self.backend_used)
        return self.proj(out.reshape(b, n, d))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp: nn.Module, attention: str = "auto"):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads, attention)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = mlp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class MAPHead(nn.Module):
    """Multihead attention pooling (big_vision): a learned probe attends over the tokens."""

    def __init__(self, dim: int, heads: int, mlp_dim: int, backend: str = "auto",
                 gelu: str = "erf"):
        super().__init__()
        self.heads, self.backend = heads, backend
        self.probe = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.trunc_normal_(self.probe, std=0.02)
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, mlp_dim, gelu=gelu)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        h = self.heads
        q = self.q(self.probe).expand(b, -1, -1).reshape(b, 1, h, d // h)
        k, v = self.kv(x).view(b, n, 2, h, d // h).unbind(2)
        out = self.proj(attend(q, k, v, resolve_backend(self.backend, x.device)).reshape(b, 1, d))
        out = out + self.mlp(self.norm(out))
        return out[:, 0]


class VisionTransformer(nn.Module):
    def __init__(
        self,
        *,
        image_size: int,
        patch_size: int,
        width: int,
        depth: int,
        heads: int,
        mlp_dim: int,
        num_classes: int,
        in_chans: int = 3,
        pool: str = "gap",
        attention: str = "auto",
        moe_blocks: Sequence[int] = (),
        mlp_factory: Callable[[int, int], nn.Module] = Mlp,
        gelu: str = "erf",  # the dense MLPs' GELU ("erf" | "tanh"); the factory sets the MoE's
    ):
        super().__init__()
        self.patch_embed = nn.Conv2d(in_chans, width, kernel_size=patch_size, stride=patch_size)
        num_tokens = (image_size // patch_size) ** 2
        self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens, width))
        nn.init.normal_(self.pos_embed, std=0.02)
        self.moe_blocks = tuple(moe_blocks)
        self.blocks = nn.ModuleList(
            Block(width, heads, mlp_factory(width, mlp_dim) if i in self.moe_blocks
                  else Mlp(width, mlp_dim, gelu=gelu), attention)
            for i in range(depth)
        )
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.map_head = (MAPHead(width, heads, mlp_dim, attention, gelu=gelu) if pool == "map"
                         else None)
        self.head = nn.Linear(width, num_classes)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(images).flatten(2).transpose(1, 2) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.map_head is not None:
            return self.map_head(tokens)
        return tokens.mean(dim=1)

    def forward_head(self, pre_logits: torch.Tensor) -> torch.Tensor:
        return self.head(pre_logits)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.pool(self.forward_features(images)))

    def pre_logits(self, images: torch.Tensor) -> torch.Tensor:
        return self.pool(self.forward_features(images))

    # MoE bookkeeping -------------------------------------------------------------------
    def moe_layers(self) -> list[MoELayer]:
        return [self.blocks[i].mlp for i in self.moe_blocks]

    def aux_loss(self) -> torch.Tensor:
        """The MoE layers' auxiliary losses of the last forward, summed."""
        losses = [layer.aux_loss for layer in self.moe_layers()]
        return torch.stack(losses).sum() if losses else self.head.weight.new_zeros(())

    def moe_metrics(self) -> dict[str, float]:
        """Each metric averaged over the MoE layers of the last forward (one transfer)."""
        return MetricMeans(self).add().result()

    @property
    def attention_backend(self) -> str | None:
        """The backend the last forward ran (None before any forward)."""
        return self.blocks[0].attn.backend_used


def build(cfg: ModelConfig | str, *, on_moe_layer=None, **overrides):
    """Build the VisionTransformer for a config (or a spec string).

    ``on_moe_layer(layer)``, if given, is called on each MoE layer right after it is built,
    before the next block draws its weights (e.g. ``harness.runtime.parallel.shard_layer``: a rank
    then never holds the whole model's experts); the weights a seed gives are unchanged as
    long as it draws no random numbers.
    """
    if isinstance(cfg, str):
        cfg = parse_model_spec(cfg, **overrides)
    elif overrides:
        cfg = cfg.replace(**overrides)
    shape = cfg.shape

    def mlp_factory(dim: int, hidden: int):
        layer = cfg.routing.build(dim, hidden, gelu=cfg.gelu)  # the registry's layer
        if on_moe_layer is not None:
            on_moe_layer(layer)
        return layer

    return VisionTransformer(
        image_size=cfg.image_size, patch_size=cfg.patch_size, width=shape.width,
        depth=shape.depth, heads=shape.heads, mlp_dim=shape.mlp_dim,
        num_classes=cfg.num_classes, in_chans=cfg.in_chans, pool=cfg.pool,
        attention=cfg.attention, moe_blocks=cfg.moe_blocks, mlp_factory=mlp_factory,
        gelu=cfg.gelu,
    )
