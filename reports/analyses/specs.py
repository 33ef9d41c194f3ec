"""A record's run, rebuilt from what it stores: its :class:`RunSpec`, its model's config, and
the parameters of the dense backbone of the same size (torch-free, nothing is built).

A record written by ``harness.runtime.run`` keeps its spec as ``spec_json`` (the spec's
canonical JSON: everything but the study name, the trackers and the layout); the spec is
rebuilt from it. An older or hand-made record without it is read from its flat columns
(``model``, ``image_size``, ``pool``, the router's fields, ``data``), the head's class count
then taken from the dataset's known size (as the dry run does).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import Any

from harness.cost.estimate import ASSUMED_FOLDER_CLASSES, KNOWN_CLASSES, head_classes
from harness.cost.params import closed_form_params
from harness.errors import HarnessError
from harness.spec.model import ModelConfig
from harness.spec.study import RunSpec

#: The router fields a dense config leaves out.
ROUTER_FIELDS = ("num_experts", "slots_per_expert", "k", "capacity_factor", "group_size",
                 "capacity_rounding", "router_noise")


@lru_cache(maxsize=4096)
def _spec_from_json(spec_json: str, study: str) -> RunSpec:
    return RunSpec.model_validate({**json.loads(spec_json), "study": study})


def run_spec(record: Mapping[str, Any]) -> RunSpec | None:
    """The record's run spec from its ``spec_json`` (None without one, or when it no longer
    validates: a record of an older version)."""
    text = record.get("spec_json")
    if not text:
        return None
    try:
        return _spec_from_json(str(text), str(record.get("study") or "study"))
    except (ValueError, TypeError, HarnessError):
        return None


def _flat_classes(record: Mapping[str, Any]) -> int:
    return KNOWN_CLASSES.get(str(record.get("data") or ""), ASSUMED_FOLDER_CLASSES)


def model_config(record: Mapping[str, Any]) -> ModelConfig | None:
    """The model config the record's run built (None when its columns do not tell it)."""
    spec = run_spec(record)
    try:
        if spec is not None:
            return spec.model_config_(head_classes(spec)[0])
        return _flat_config(record)
    except (ValueError, TypeError, HarnessError):
        return None


def _flat_config(record: Mapping[str, Any]) -> ModelConfig | None:
    from harness.spec.model import MODEL_NAME

    name = MODEL_NAME.fullmatch(str(record.get("model") or ""))
    if name is None:
        return None
    image = record.get("image_size") or (int(name.group(3)) if name.group(3) else 224)
    fields = {f: record.get(f) for f in ROUTER_FIELDS if record.get(f) is not None}
    for key in ("pool", "gelu", "attention", "moe_layers"):
        if record.get(key):
            fields[key] = record[key]
    return ModelConfig(size=name.group(1), patch_size=int(name.group(2)), image_size=int(image),
                       num_classes=_flat_classes(record), router=record.get("router") or "dense",
                       **fields)


def dense_config(cfg: ModelConfig) -> ModelConfig:
    """``cfg``'s backbone as a dense model: the same size, patches, resolution, head."""
    return ModelConfig(size=cfg.size, patch_size=cfg.patch_size, image_size=cfg.image_size,
                       in_chans=cfg.in_chans, num_classes=cfg.num_classes, pool=cfg.pool,
                       attention=cfg.attention, gelu=cfg.gelu)


def backbone_params(record: Mapping[str, Any]) -> int | None:
    """Parameters of the dense model of the record's size (``params_total`` of its backbone
    with every MoE layer a plain MLP), in closed form: the ``N`` of a joint scaling law. Not
    the MoE's own count, which grows with the experts."""
    cfg = model_config(record)
    if cfg is None:
        return None
    return closed_form_params(dense_config(cfg))["params_total"]


#: Every column :func:`model_config` reads: records equal on these have one model config.
CONFIG_COLUMNS = ("spec_json", "study", "model", "image_size", "router", "pool", "gelu",
                  "attention", "moe_layers", "data", *ROUTER_FIELDS)


def backbone_params_each(records: Iterable[Mapping[str, Any]]) -> list[int | None]:
    """:func:`backbone_params` of every record, computed once per model config (the seeds
    and learning rates of one configuration share it)."""
    seen: dict[tuple, int | None] = {}
    out = []
    for record in records:
        key = tuple(str(record.get(c)) for c in CONFIG_COLUMNS)
        if key not in seen:
            seen[key] = backbone_params(record)
        out.append(seen[key])
    return out


__all__ = ["CONFIG_COLUMNS", "backbone_params", "backbone_params_each", "dense_config",
           "model_config", "run_spec"]
