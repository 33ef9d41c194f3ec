"""The routers: one entry per router holds everything the harness knows about it, torch-free.

An entry (:class:`Router`) names the spec fields the router reads (``axes``; the others are
normalised to None), the layer class that implements it (``"module:Class"``, imported only when
a model is built, so that ``inspect``, the dry run and the reports never load torch), and the
closed forms that the parameter and FLOP counts, the estimates, the benchmarks and the reports
use, per MoE layer and per image of ``tokens`` tokens:

- ``expert_rows``: buffer rows each expert processes (Soft MoE: its slots; the sparse routers:
  their capacity per routing group, times the groups in an image);
- ``experts_per_token``: how many experts' parameters one token uses on average (the active
  parameter count);
- ``slots_per_token``: the expert work per input token the reports compare across routers;
- ``router_params`` and ``routing_macs`` (router logits, dispatch, combine);
- ``capacity``: buffer rows per expert and routing group (sparse routers).

A router choice is resolved once, into a :class:`Settings` (the entry and its fields, unused
ones None, the others defaulted and checked): ``harness.spec.model.ModelConfig`` holds it as
``routing`` and everything downstream reads it (the model, counts, estimates, the memory plan,
the derived record columns). The entry builds its layer (:meth:`Router.build`: the class named
by ``layer``, imported then), so that ``harness.nn`` never dispatches on router names.

Adding a router is one :func:`register` call with a :class:`Router` (a subclass where a closed
form differs from the defaults) plus its layer class: a ``harness.nn.moe.base.MoELayer`` that
calls ``self.experts`` once on its (E, rows, dim) buffer (docs/moe-layers.md). Models,
counts, estimates, study validation, tuning and reports look routers up here and nowhere else.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from harness.errors import ConfigError
from harness.spec.rules import check_capacity_rule, compute_capacity

#: The spec fields a router may read, with the value a router that reads one gets by default.
FIELDS: dict[str, Any] = {
    "num_experts": 8,
    "slots_per_expert": 1,
    "k": 1,
    "capacity_factor": 1.0,
    "capacity_rounding": "ceil",
    "router_noise": 1.0,  # training noise std of the sparse routers, in units of 1/E
}
ROUTING_PARTS = ("router_logits", "dispatch", "combine")


@dataclass(frozen=True, repr=False)
class Settings:
    """One router choice, resolved (made by :meth:`Router.settings` only): the registry entry
    and its fields, the unused ones None, the used ones defaulted and checked. ``group_size``
    (tokens per routing group; None: one image) applies to every router. The closed forms of
    the entry are its methods here, e.g. ``s.expert_rows(tokens)``."""

    entry: Router
    num_experts: int | None = None
    slots_per_expert: int | None = None
    k: int | None = None
    capacity_factor: float | None = None
    capacity_rounding: str | None = None
    router_noise: float | None = None
    group_size: int | None = None

    @property
    def router(self) -> str:
        """The router's name."""
        return self.entry.name

    def columns(self) -> dict[str, Any]:
        """The choice as the flat spec columns: ``router``, the :data:`FIELDS`, ``group_size``
        (what a RunSpec and a record hold; :func:`resolve` of them gives this choice back)."""
        return {"router": self.router, **{f: getattr(self, f) for f in FIELDS},
                "group_size": self.group_size}

    def __repr__(self) -> str:
        used = ", ".join(f"{k}={v!r}" for k, v in self.columns().items()
                         if v is not None and k != "router")
        return f"Settings({self.router!r}{', ' if used else ''}{used})"

    # --- the entry's layer and closed forms, for this choice ------------------------------
    def build(self, dim: int, hidden_dim: int, *, gelu: str = "erf") -> Any:
        return self.entry.build(self, dim, hidden_dim, gelu=gelu)

    def capacity(self, tokens: int) -> int | None:
        return self.entry.capacity(self, tokens)

    def expert_rows(self, tokens: int) -> float:
        return self.entry.expert_rows(self, tokens)

    def experts_per_token(self, tokens: int) -> float:
        return self.entry.experts_per_token(self, tokens)

    def slots_per_token(self, tokens: int | None) -> float | None:
        return self.entry.slots_per_token(self, tokens)

    def router_params(self, dim: int) -> int:
        return self.entry.router_params(self, dim)

    def routing_macs(self, dim: int, tokens: int) -> dict[str, float]:
        return self.entry.routing_macs(self, dim, tokens)


@dataclass(frozen=True)
class Router:
    """One router. The defaults fit a router whose experts see ``expert_rows`` rows each and
    that has no parameters or multiply-adds of its own; subclasses override what differs."""

    name: str
    label: str  # the name a report prints
    layer: str  # "module:Class" of the layer; built as Class(dim=, hidden_dim=, **layer_kwargs)
    axes: tuple[str, ...] = ()  # the keys of FIELDS it reads
    family: str = "moe"  # dense | soft | sparse | ...: the routers a figure puts side by side

    # --- fields ----------------------------------------------------------------------------
    @property
    def is_moe(self) -> bool:
        return "num_experts" in self.axes

    def uses(self, field: str) -> bool:
        """Whether the router reads ``field`` (``moe_layers``: whether it has experts)."""
        return self.is_moe if field == "moe_layers" else field in self.axes

    def settings(self, group_size: int | None = None, **fields: Any) -> Settings:
        """``fields`` resolved for this router (see :class:`Settings`); bad values raise
        :class:`ConfigError` naming the field and what is allowed."""
        unknown = set(fields) - set(FIELDS)
        if unknown:
            raise ConfigError(f"router {self.name!r}: unknown field {sorted(unknown)[0]!r}; "
                              f"allowed: {', '.join(FIELDS)}")
        values = {f: (FIELDS[f] if fields.get(f) is None else fields[f]) if f in self.axes
                  else None for f in FIELDS}
        for f in ("capacity_factor", "router_noise"):
            if values[f] is not None:
                values[f] = float(values[f])
        s = Settings(self, group_size=group_size, **values)
        _check(s)
        return s

    # --- the layer -------------------------------------------------------------------------
    def layer_kwargs(self, s: Settings) -> dict[str, Any]:
        """Keyword arguments of the layer class besides ``dim``, ``hidden_dim`` and ``gelu``."""
        return {"num_experts": s.num_experts} if self.is_moe else {}

    def build(self, s: Settings, dim: int, hidden_dim: int, *, gelu: str = "erf") -> Any:
        """The layer of choice ``s`` (an ``nn.Module``): the class named by ``layer``, imported
        here (torch loads when a layer is built, not with the registry), called as
        ``Class(dim=, hidden_dim=, gelu=, **layer_kwargs(s))``."""
        module, _, name = self.layer.partition(":")
        layer_class = getattr(importlib.import_module(module), name)
        return layer_class(dim=dim, hidden_dim=hidden_dim, gelu=gelu, **self.layer_kwargs(s))

    # --- closed forms (per MoE layer, per image of ``tokens`` tokens) ------------------------
    def capacity(self, s: Settings, tokens: int) -> int | None:
        return None

    def expert_rows(self, s: Settings, tokens: int) -> float:
        """Rows each expert processes per image (fractional when a group spans images)."""
        raise NotImplementedError(f"router {self.name!r} defines no expert_rows")

    def experts_per_token(self, s: Settings, tokens: int) -> float:
        """Experts' parameters one token uses on average: all expert rows over the tokens."""
        return s.num_experts * self.expert_rows(s, tokens) / tokens

    def slots_per_token(self, s: Settings, tokens: int | None) -> float | None:
        """Expert work per input token, as the reports compare routers (None when it needs
        the token count and ``tokens`` is None: a record that does not say)."""
        return None if tokens is None else self.experts_per_token(s, tokens)

    def router_params(self, s: Settings, dim: int) -> int:
        return 0

    def routing_macs(self, s: Settings, dim: int, tokens: int) -> dict[str, float]:
        """Multiply-adds of routing per image, by part of :data:`ROUTING_PARTS`."""
        return dict.fromkeys(ROUTING_PARTS, 0.0)


@dataclass(frozen=True)
class Dense(Router):
    """No experts: the block keeps its MLP."""

    family: str = "dense"

    def expert_rows(self, s: Settings, tokens: int) -> float:
        return 0.0

    def experts_per_token(self, s: Settings, tokens: int) -> float:
        return 0.0


@dataclass(frozen=True)
class Soft(Router):
    """Soft MoE: every slot a softmax-weighted mix of all tokens of the image; ``dispatch`` /
    ``combine`` 'uniform' or 'identity' give the paper's fixed-routing ablations."""

    axes: tuple[str, ...] = ("num_experts", "slots_per_expert")
    family: str = "soft"
    dispatch: str = "soft"
    combine: str = "soft"

    @property
    def learned(self) -> bool:  # fixed routing on both sides has no slot parameters
        return "soft" in (self.dispatch, self.combine)

    def layer_kwargs(self, s: Settings) -> dict[str, Any]:
        return {"num_experts": s.num_experts, "slots_per_expert": s.slots_per_expert,
                "dispatch": self.dispatch, "combine": self.combine}

    def expert_rows(self, s: Settings, tokens: int) -> float:
        return float(s.slots_per_expert)

    def router_params(self, s: Settings, dim: int) -> int:
        return dim * s.num_experts * s.slots_per_expert + 1 if self.learned else 0  # phi, scale

    def routing_macs(self, s: Settings, dim: int, tokens: int) -> dict[str, float]:
        n = s.num_experts * s.slots_per_expert
        return {"router_logits": float(tokens * dim * n) if self.learned else 0.0,
                "dispatch": float(n * tokens * dim) if self.dispatch == "soft" else 0.0,
                "combine": float(tokens * n * dim) if self.combine == "soft" else 0.0}


@dataclass(frozen=True)
class Sparse(Router):
    """A router with a linear gate (dim x E) that fills buffers of ``capacity`` rows per expert
    and routing group: Tokens Choice (each token its top-k experts) and Experts Choice (each
    expert its top-C tokens)."""

    axes: tuple[str, ...] = ("num_experts", "capacity_factor", "capacity_rounding",
                             "router_noise")
    family: str = "sparse"

    def layer_kwargs(self, s: Settings) -> dict[str, Any]:
        kw = {"num_experts": s.num_experts, "capacity_factor": s.capacity_factor,
              "group_size": s.group_size, "capacity_rounding": s.capacity_rounding,
              "noise_std": s.router_noise / s.num_experts}
        if "k" in self.axes:
            kw["k"] = s.k
        return kw

    def capacity(self, s: Settings, tokens: int) -> int:
        return compute_capacity(s.group_size or tokens, s.num_experts, s.capacity_factor,
                                s.capacity_rounding, s.k or 1)

    def expert_rows(self, s: Settings, tokens: int) -> float:
        return self.capacity(s, tokens) * tokens / (s.group_size or tokens)

    def experts_per_token(self, s: Settings, tokens: int) -> float:
        if "k" in self.axes:  # the most a token passes through (dropped tokens use fewer)
            return float(s.k)
        return super().experts_per_token(s, tokens)

    def slots_per_token(self, s: Settings, tokens: int | None) -> float:
        """The nominal figure: K x c (Tokens Choice), c (Experts Choice)."""
        return float((s.k or 1) * s.capacity_factor)

    def router_params(self, s: Settings, dim: int) -> int:
        return dim * s.num_experts

    def routing_macs(self, s: Settings, dim: int, tokens: int) -> dict[str, float]:
        return {**super().routing_macs(s, dim, tokens),
                "router_logits": float(tokens * dim * s.num_experts)}


def _check(s: Settings) -> None:
    for f in ("num_experts", "slots_per_expert"):
        value = getattr(s, f)
        if value is not None and value <= 0:
            raise ConfigError(f"{f} must be > 0, got {value}")
    if s.k is not None and not 1 <= s.k <= s.num_experts:
        raise ConfigError(f"k must lie in 1..num_experts ({s.num_experts}), got {s.k}")
    if s.capacity_factor is not None and s.capacity_factor <= 0:
        raise ConfigError(f"capacity_factor must be > 0, got {s.capacity_factor}")
    if s.capacity_rounding is not None:
        check_capacity_rule(s.capacity_rounding)
    if s.group_size is not None and s.group_size <= 0:
        raise ConfigError(f"group_size must be > 0 (images per routing group), got "
                          f"{s.group_size}")
    if s.router_noise is not None and s.router_noise < 0:
        raise ConfigError(f"router_noise must be >= 0, got {s.router_noise}")


# --- the registry ------------------------------------------------------------------------------
ROUTERS: dict[str, Router] = {}
"""Every router by name, in registration order (the order errors list them and reports draw
them in)."""


def register(router: Router) -> Router:
    if router.name in ROUTERS:
        raise ConfigError(f"router {router.name!r} is already registered")
    if not set(router.axes) <= set(FIELDS):
        raise ConfigError(f"router {router.name!r}: axes must be among {', '.join(FIELDS)}")
    ROUTERS[router.name] = router
    return router


def get(name: str) -> Router:
    if name not in ROUTERS:
        raise ConfigError(f"unknown router {name!r}; allowed: {', '.join(ROUTERS)}")
    return ROUTERS[name]


def names(family: str | None = None) -> tuple[str, ...]:
    """Registered routers, of one ``family`` if given."""
    return tuple(n for n, r in ROUTERS.items() if family is None or r.family == family)


def resolve(router: str, group_size: int | None = None, **fields: Any) -> Settings:
    """The choice of router ``router`` with ``fields`` (the :data:`FIELDS`; unset ones
    defaulted, the ones it does not read ignored), checked: what ``ModelConfig`` holds."""
    return get(router).settings(group_size=group_size, **fields)


SOFT_LAYER = "harness.nn.moe.soft:SoftMoE"
register(Dense("dense", "Dense", "harness.nn.moe.dense:Mlp"))
register(Soft("soft", "Soft MoE", SOFT_LAYER))
register(Sparse("tokens_choice", "Tokens Choice", "harness.nn.moe.tokens_choice:TokensChoice",
                axes=("num_experts", "k", "capacity_factor", "capacity_rounding",
                      "router_noise")))
register(Sparse("experts_choice", "Experts Choice", "harness.nn.moe.experts_choice:ExpertsChoice"))
# The paper's fixed-routing ablations of Soft MoE (its Table 2): (dispatch, combine).
register(Soft("soft_uniform", "Soft / Uniform", SOFT_LAYER, dispatch="soft", combine="uniform"))
register(Soft("uniform_soft", "Uniform / Soft", SOFT_LAYER, dispatch="uniform", combine="soft"))
register(Soft("uniform", "Uniform", SOFT_LAYER, dispatch="uniform", combine="uniform"))
register(Soft("identity", "Identity", SOFT_LAYER, dispatch="identity", combine="identity"))
