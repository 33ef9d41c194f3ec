"""The contract every MoE layer keeps (Soft MoE, Tokens Choice, Experts Choice), and the tools
that read it from a whole model: switching metrics on or off, and gathering them."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import ClassVar

import torch
from torch import nn


class MoELayer(nn.Module):
    """An MoE layer: (batch, tokens, dim) -> (batch, tokens, dim). What every kind provides:

    * ``experts``: the module that runs the experts, (E, N, D) -> (E, N, D), row block e
      going to expert e. Each forward calls it exactly once, on the whole buffer, and reads
      nothing else of it (no weights, no attributes): it is the one seam between routing
      and expert computation, so expert parallelism replaces it with a module that sends
      each row block to the rank holding that expert and the outputs back.
    * ``num_experts``: E.
    * ``aux_loss``: the last forward's auxiliary loss, a scalar tensor in the graph (a zero
      where the router has none), for the training loss to add.
    * ``metric_tensors``: the last forward's diagnostics as scalar tensors, computed without
      gradients and never copied to the host during the forward (see :class:`MetricMeans`);
      the same keys on every forward of a kind. ``metrics`` reads them as floats.
      ``track_metrics`` (default on) says whether a forward computes them: evaluations
      switch it on, training and timing off, always through :func:`tracking_metrics`.
    * ``router_parameter_names``: the layer's parameters outside ``experts`` (its router);
      a name may be None-valued where a variant has no router (Soft MoE's fixed routing).

    How many rows the buffer has, and how many experts a token uses, are the router's closed
    forms in :mod:`harness.spec.routers` (a test checks every layer's buffer against them).
    """

    router_parameter_names: ClassVar[tuple[str, ...]] = ()

    experts: nn.Module  # set by each kind after its router (the order its weights are drawn in)

    def __init__(self, num_experts: int):
        super().__init__()
        self.num_experts = num_experts
        self.aux_loss = torch.zeros(())
        self.metric_tensors: dict[str, torch.Tensor] = {}
        self.track_metrics = True

    @property
    def metrics(self) -> dict[str, float]:
        """``metric_tensors`` as floats (one transfer from the device)."""
        return MetricMeans(self).add().result()

    def router_parameters(self) -> dict[str, nn.Parameter]:
        """The router's parameters by name (those this variant has)."""
        named = dict(self.named_parameters())
        return {name: named[name] for name in self.router_parameter_names if name in named}


def moe_layers(module: nn.Module) -> list[MoELayer]:
    """The MoE layers inside ``module`` (itself included), in module order."""
    return [m for m in module.modules() if isinstance(m, MoELayer)]


@contextlib.contextmanager
def tracking_metrics(module: nn.Module, on: bool) -> Iterator[None]:
    """Metric tracking of every MoE layer in ``module`` set to ``on``; each layer's own
    setting comes back on exit, also after an error."""
    layers = moe_layers(module)
    saved = [layer.track_metrics for layer in layers]
    for layer in layers:
        layer.track_metrics = on
    try:
        yield
    finally:
        for layer, was in zip(layers, saved, strict=True):
            layer.track_metrics = was


class MetricMeans:
    """The MoE layers' metrics over several forwards, kept on the device until ``result``.

    ``add(weight)`` after each forward keeps references to the layers' current tensors (no
    copy, no sync); ``result()`` fetches them all in one transfer and returns each metric
    averaged over the layers, then over the forwards weighted by ``weight`` (e.g. the
    batch size).
    """

    def __init__(self, module: nn.Module):
        self.layers = moe_layers(module)
        self.seen: list[tuple[float, list[dict[str, torch.Tensor]]]] = []

    def add(self, weight: float = 1.0) -> MetricMeans:
        self.seen.append((weight, [dict(layer.metric_tensors) for layer in self.layers]))
        return self

    def result(self) -> dict[str, float]:
        flat = [t.detach().reshape(()) for _, per_layer in self.seen
                for metrics in per_layer for t in metrics.values()]
        if not flat:
            return {}
        values = iter(torch.stack(flat).tolist())  # the one sync
        sums: dict[str, float] = {}
        total = 0.0
        for weight, per_layer in self.seen:
            by_key: dict[str, list[float]] = {}
            for metrics in per_layer:
                for key in metrics:
                    by_key.setdefault(key, []).append(next(values))
            for key, vals in by_key.items():
                sums[key] = sums.get(key, 0.0) + sum(vals) / len(vals) * weight
            total += weight
        return {key: value / total for key, value in sums.items()}
