"""The ViT family: named sizes, compact spec strings, MoE placement, and the
fields derived from them (torch-free; ``harness.nn.vit.build`` makes the model).

Spec strings (used by the CLI and the study files)::

    vit-SIZE/PATCH[@RES][:ROUTER][:eN][:sN][:kN][:cF][:PLACEMENT]

SIZE is a registered name (ti, s, b, l, h) or a custom shape ``wWIDTHdDEPTHhHEADSmMLP``
(e.g. ``w64d4h4m256``). ROUTER is a name of ``harness.spec.routers`` (dense if omitted); ``eN``
experts, ``sN`` slots per expert (Soft MoE), ``kN`` experts per token (Tokens Choice), ``cF``
capacity factor (sparse routers), PLACEMENT one of ``half`` (the paper's last half, default),
``lastN``, ``everyN`` or ``b8.9.10.11`` (explicit block indices). Examples::

    vit-s/16   vit-s/16:soft:e128:s1   vit-b/16:tokens_choice:e32:k1   vit-w64d4h4m256/4@16:soft:e16
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from harness.errors import ConfigError
from harness.spec import routers
from harness.spec.rules import GELUS


@dataclass(frozen=True)
class ViTSize:
    width: int
    depth: int
    heads: int
    mlp_dim: int


SIZES: dict[str, ViTSize] = {}


def register_size(name: str, size: ViTSize) -> None:
    if name in SIZES:
        raise ConfigError(f"model size {name!r} is already registered")
    SIZES[name] = size


# The paper's backbones (its Table "Backbones").
register_size("ti", ViTSize(192, 12, 3, 768))
register_size("s", ViTSize(384, 12, 6, 1536))
register_size("b", ViTSize(768, 12, 12, 3072))
register_size("l", ViTSize(1024, 24, 16, 4096))
register_size("h", ViTSize(1280, 32, 16, 5120))

CUSTOM_SIZE = re.compile(r"w(\d+)d(\d+)h(\d+)m(\d+)")
MODEL_NAME = re.compile(r"vit-([a-z0-9]+)/(\d+)(?:@(\d+))?")
POOLS = ("gap", "map")


def lookup_size(name: str) -> ViTSize:
    if name in SIZES:
        return SIZES[name]
    custom = CUSTOM_SIZE.fullmatch(name)
    if custom:
        size = ViTSize(*map(int, custom.groups()))
        zero = [f for f in ("width", "depth", "heads", "mlp_dim") if getattr(size, f) <= 0]
        if zero:
            raise ConfigError(f"model size {name!r}: {zero[0]} must be > 0")
        return size
    raise ConfigError(
        f"unknown model size {name!r}; allowed: {', '.join(SIZES)} or a custom "
        f"'wWIDTHdDEPTHhHEADSmMLP' such as 'w64d4h4m256'"
    )


# --- MoE placement -------------------------------------------------------------------------
PLACEMENT_HELP = "'last_half', 'last:N', 'every:K', or a list of block indices"


def resolve_placement(placement: str | list[int] | tuple[int, ...], depth: int) -> tuple[int, ...]:
    """Block indices that get the MoE MLP, validated against ``depth``."""
    if isinstance(placement, (list, tuple)):
        blocks = tuple(sorted(set(int(i) for i in placement)))
    elif placement == "last_half":
        blocks = tuple(range(depth - depth // 2, depth))
    elif m := re.fullmatch(r"last:(\d+)", str(placement)):
        n = int(m.group(1))
        if not 1 <= n <= depth:
            raise ConfigError(f"moe_layers 'last:{n}' needs 1 <= N <= depth {depth}")
        blocks = tuple(range(depth - n, depth))
    elif m := re.fullmatch(r"every:(\d+)", str(placement)):
        step = int(m.group(1))
        if not 1 <= step <= depth:
            raise ConfigError(f"moe_layers 'every:{step}' needs 1 <= K <= depth {depth}")
        blocks = tuple(range(step - 1, depth, step))  # ends at the last block when K | depth
    elif re.fullmatch(r"\d+(,\d+)*", str(placement)):
        blocks = tuple(sorted(set(int(i) for i in str(placement).split(","))))
    else:
        raise ConfigError(f"moe_layers {placement!r} is not one of {PLACEMENT_HELP}")
    bad = [i for i in blocks if not 0 <= i < depth]
    if bad or not blocks:
        raise ConfigError(
            f"moe_layers {placement!r}: block indices must lie in 0..{depth - 1} "
            f"(depth {depth}), got {list(blocks)}"
        )
    return blocks


def canonical_placement(placement: str | list[int] | tuple[int, ...]) -> str:
    if isinstance(placement, (list, tuple)):
        return ",".join(str(i) for i in sorted(set(int(i) for i in placement)))
    return str(placement)


# --- configuration -------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class _Stored:
    """What a :class:`ModelConfig` holds (checked by its constructor, never changed after):
    the backbone's fields, the canonical placement and the one resolved router choice."""

    size: str
    patch_size: int
    image_size: int
    in_chans: int
    num_classes: int
    pool: str
    attention: str
    routing: routers.Settings
    moe_layers: str
    gelu: str


def _check_backbone(size: str, patch_size: int, image_size: int, pool: str, gelu: str) -> None:
    shape = lookup_size(size)
    if pool not in POOLS:
        raise ConfigError(f"pool must be one of {POOLS}, got {pool!r}")
    if gelu not in GELUS:
        raise ConfigError(f"gelu must be one of {', '.join(GELUS)}, got {gelu!r}")
    if shape.width % shape.heads:
        raise ConfigError(f"width {shape.width} must be divisible by heads {shape.heads}")
    if patch_size <= 0 or image_size <= 0 or image_size % patch_size:
        raise ConfigError(
            f"image_size {image_size} must be a positive multiple of patch_size {patch_size}"
        )


def _routing_field(name: str, doc: str) -> property:
    return property(lambda cfg: getattr(cfg.routing, name), doc=doc)


@dataclass(frozen=True, init=False)
class ModelConfig(_Stored):
    """Everything ``build`` needs, made from the flat spec fields (those of a RunSpec or a
    spec string) or from a resolved router choice (``routing=``, a
    :class:`harness.spec.routers.Settings`).

    The router and its fields (num_experts, slots_per_expert, k, capacity_factor,
    capacity_rounding, router_noise, group_size) are resolved once, here, into ``routing``:
    fields the router does not use become None, unset ones take the router's defaults
    (``capacity_rounding`` "ceil" and ``router_noise`` 1.0, the sparse routers' training
    noise std in units of 1/E). ``cfg.router``, ``cfg.num_experts``, ... read them back.
    ``gelu`` is the GELU of every MLP ("erf" exact, "tanh" approximation: the paper's).
    """

    def __init__(
        self,
        *,
        size: str = "s",
        patch_size: int = 16,
        image_size: int = 224,
        in_chans: int = 3,
        num_classes: int = 1000,
        pool: str = "gap",
        attention: str = "auto",
        router: str = "dense",
        num_experts: int | None = None,
        slots_per_expert: int | None = None,
        k: int | None = None,
        capacity_factor: float | None = None,
        moe_layers: str | list[int] | tuple[int, ...] = "last_half",
        group_size: int | None = None,
        gelu: str = "erf",
        capacity_rounding: str | None = None,
        router_noise: float | None = None,
        routing: routers.Settings | None = None,
    ):
        _check_backbone(size, patch_size, image_size, pool, gelu)
        fields = dict(num_experts=num_experts, slots_per_expert=slots_per_expert, k=k,
                      capacity_factor=capacity_factor, capacity_rounding=capacity_rounding,
                      router_noise=router_noise)
        if routing is None:
            routing = routers.resolve(router, group_size, **fields)
        elif router != "dense" or group_size is not None or any(
                v is not None for v in fields.values()):
            raise ConfigError("give the router either as routing= (a resolved choice) or as "
                              "router= and its fields, not both")
        if routing.entry.is_moe:  # resolving the placement validates it against the depth
            resolve_placement(moe_layers, lookup_size(size).depth)
        super().__init__(size=size, patch_size=patch_size, image_size=image_size,
                         in_chans=in_chans, num_classes=num_classes, pool=pool,
                         attention=attention, routing=routing,
                         moe_layers=canonical_placement(moe_layers), gelu=gelu)

    router = _routing_field("router", "The router's name.")
    num_experts = _routing_field("num_experts", "Experts per MoE layer (None: dense).")
    slots_per_expert = _routing_field("slots_per_expert", "Soft MoE's slots per expert.")
    k = _routing_field("k", "Tokens Choice's experts per token.")
    capacity_factor = _routing_field("capacity_factor", "The sparse routers' capacity factor.")
    capacity_rounding = _routing_field("capacity_rounding", "The sparse routers' rule.")
    router_noise = _routing_field("router_noise", "The sparse routers' noise, in 1/E.")
    group_size = _routing_field("group_size", "Tokens per routing group (None: an image).")

    @property
    def shape(self) -> ViTSize:
        return lookup_size(self.size)

    @property
    def num_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def expert_capacity(self) -> int | None:
        """Buffer rows per expert and routing group (routers with a capacity)."""
        return self.routing.capacity(self.num_tokens)

    @property
    def moe_blocks(self) -> tuple[int, ...]:
        if not self.routing.entry.is_moe:
            return ()
        return resolve_placement(self.moe_layers, self.shape.depth)

    @property
    def name(self) -> str:
        """The backbone part of the spec, e.g. ``vit-s/16``."""
        res = "" if self.image_size == 224 else f"@{self.image_size}"
        return f"vit-{self.size}/{self.patch_size}{res}"

    @property
    def spec(self) -> str:
        """The compact spec string that parses back to this config (sizes and data aside)."""
        parts = [self.name]
        if self.routing.entry.is_moe:
            parts += [self.router, f"e{self.num_experts}"]
            if self.slots_per_expert is not None:
                parts.append(f"s{self.slots_per_expert}")
            if self.k is not None:
                parts.append(f"k{self.k}")
            if self.capacity_factor is not None:
                parts.append(f"c{self.capacity_factor:g}")
            if self.moe_layers != "last_half":
                parts.append(_placement_token(self.moe_layers))
        return ":".join(parts)

    def replace(self, **changes) -> ModelConfig:
        """A copy with ``changes``: to any field, to the router or one of its fields (the
        choice is resolved again from its current fields and these), or ``routing=``."""
        kept = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        if set(changes) & set(self.routing.columns()):
            del kept["routing"]
            kept.update(self.routing.columns())
        return ModelConfig(**{**kept, **changes})

    def derived_fields(self) -> dict[str, Any]:
        """The :data:`DERIVED_FIELDS` of this config (what :func:`derived_fields` gives for
        the record of a run of it)."""
        return _derive(self.num_tokens, self.shape.depth, self.routing.entry, self.routing,
                       self.moe_blocks)


def _placement_token(placement: str) -> str:
    if m := re.fullmatch(r"(last|every):(\d+)", placement):
        return f"{m.group(1)}{m.group(2)}"
    return "b" + placement.replace(",", ".")


def parse_model_spec(spec: str, **overrides) -> ModelConfig:
    """Parse ``vit-s/16:soft:e128:s1`` (see module doc) into a ModelConfig.

    ``overrides`` (e.g. num_classes, image_size) are applied on top; the spec wins for the
    fields it names explicitly, except image_size which the override sets when the spec has
    no ``@RES``.
    """
    head, *tokens = spec.strip().lower().split(":")
    m = MODEL_NAME.fullmatch(head)
    if not m:
        raise ConfigError(
            f"model spec {spec!r}: expected 'vit-SIZE/PATCH[@RES]' such as 'vit-s/16' or "
            f"'vit-w64d4h4m256/4@16'"
        )
    fields: dict = dict(overrides)
    fields["size"], fields["patch_size"] = m.group(1), int(m.group(2))
    if m.group(3):
        fields["image_size"] = int(m.group(3))
    named: set[str] = set()
    for tok in tokens:
        part = _parse_token(spec, tok)
        twice = named & set(part)
        if twice:
            raise ConfigError(f"model spec {spec!r}: {tok!r} sets {twice.pop()} a second time")
        named.update(part)
        fields.update(part)
    return ModelConfig(**fields)


def _parse_token(spec: str, tok: str) -> dict:
    if tok in routers.ROUTERS:
        return {"router": tok}
    patterns = {
        r"e(\d+)": ("num_experts", int),
        r"s(\d+)": ("slots_per_expert", int),
        r"k(\d+)": ("k", int),
        r"c(\d+(?:\.\d+)?)": ("capacity_factor", float),
    }
    for pattern, (field, cast) in patterns.items():
        if m := re.fullmatch(pattern, tok):
            return {field: cast(m.group(1))}
    if tok == "half":
        return {"moe_layers": "last_half"}
    if m := re.fullmatch(r"(last|every)(\d+)", tok):
        return {"moe_layers": f"{m.group(1)}:{m.group(2)}"}
    if m := re.fullmatch(r"b(\d+(?:\.\d+)*)", tok):
        return {"moe_layers": m.group(1).replace(".", ",")}
    raise ConfigError(
        f"model spec {spec!r}: unknown part {tok!r}; allowed: a router "
        f"({', '.join(routers.ROUTERS)}), eN, sN, kN, cF, half, lastN, everyN, bI.J.K"
    )


# --- what a record carries beside its spec ------------------------------------------------------
DERIVED_FIELDS = ("tokens", "depth", "moe_blocks", "n_moe_blocks", "router_family",
                  "expert_capacity", "expert_rows", "active_experts_per_token",
                  "slots_per_token")
"""Record columns derived from the spec (``derived_fields``), written into every record so
that reports read them instead of re-deriving them: tokens per image, blocks, the MoE block
indices ("8,9,10,11") and their count, the router's family, and per MoE layer and image its
capacity (buffer rows per expert and group), rows per expert, experts per token (the active
parameter count's) and slots per token (the expert work per token reports compare)."""


def derived_fields(row: Mapping[str, Any]) -> dict[str, Any]:
    """The :data:`DERIVED_FIELDS` of a record's spec columns (model, image_size, router and
    its fields, moe_layers, group_size). Each is None where the columns do not tell it (an
    unknown size or router, no image_size: a record written before these fields existed)."""
    name = MODEL_NAME.fullmatch(str(row.get("model") or ""))
    image = row.get("image_size") or (name and name.group(3))
    tokens = (int(image) // int(name.group(2))) ** 2 if name and image else None
    try:
        depth = lookup_size(name.group(1)).depth if name else None
    except ConfigError:
        depth = None
    entry = routers.ROUTERS.get(row.get("router"))
    routing = blocks = None
    if entry is not None and entry.is_moe:
        try:  # the record's choice, as a ModelConfig of it holds it
            routing = routers.resolve(entry.name, row.get("group_size"),
                                      **{f: row.get(f) for f in routers.FIELDS})
        except ConfigError:
            pass
        try:
            blocks = resolve_placement(row.get("moe_layers"), depth) if depth else None
        except ConfigError:
            pass
    return _derive(tokens, depth, entry, routing, blocks)


def _derive(tokens: int | None, depth: int | None, entry: routers.Router | None,
            routing: routers.Settings | None, blocks: tuple[int, ...] | None) -> dict[str, Any]:
    out: dict[str, Any] = dict.fromkeys(DERIVED_FIELDS)
    out.update(tokens=tokens, depth=depth)
    if entry is None:
        return out
    out["router_family"] = entry.family
    if not entry.is_moe:
        out["n_moe_blocks"] = 0
        return out
    if routing is None:
        return out
    out.update(moe_blocks=",".join(map(str, blocks)) if blocks else None,
               n_moe_blocks=len(blocks) if blocks else None,
               slots_per_token=routing.slots_per_token(tokens))
    if tokens:
        out.update(expert_capacity=routing.capacity(tokens),
                   expert_rows=routing.expert_rows(tokens),
                   active_experts_per_token=routing.experts_per_token(tokens))
    return out


__all__ = ["DERIVED_FIELDS", "SIZES", "ModelConfig", "ViTSize", "derived_fields",
           "parse_model_spec", "register_size", "resolve_placement"]
