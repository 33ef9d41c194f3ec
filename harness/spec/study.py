"""Study files: load and validate YAML, expand the grid into frozen ``RunSpec``s.

A study names a grid over model axes (``AXES``) and training knobs (``TRAIN_AXES``). Axes a
router does not use collapse instead of multiplying (dense ignores experts and slots; only Soft
MoE uses slots; only Tokens Choice uses k), so each distinct run appears once. Each RunSpec has a
canonical JSON form; its ``run_id`` is the first 12 hex digits of that JSON's SHA-256.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    BaseModel,
    Field,
    PositiveFloat,
    ValidationError,
    field_validator,
    model_validator,
)

from harness.errors import ConfigError, HarnessError, shorten
from harness.spec.config import (
    LAYOUT_FIELDS,
    DataConfig,
    ExecutorConfig,
    MeasureConfig,
    Section,
    TrackingConfig,
    TrainConfig,
    check_slurm_ranks,
)
from harness.spec.model import MODEL_NAME, PLACEMENT_HELP, ModelConfig
from harness.spec.rules import check_backend

# Axes of the model; their defaults apply when neither grid nor fixed names them.
AXES: dict[str, Any] = {
    "model": None, "router": "dense", "num_experts": None, "slots_per_expert": None, "k": None,
    "capacity_factor": None, "moe_layers": "last_half", "pool": "gap", "attention": "auto",
    "group_size": None, "gelu": "erf", "capacity_rounding": None, "router_noise": None,
    "seed": 0,
}
# Training knobs that may also be grid axes; they override the study's ``train`` section.
TRAIN_AXES = ("lr", "steps", "batch_size", "weight_decay", "aux_loss_weight", "warmup_steps")
ALL_AXES = (*AXES, *TRAIN_AXES)
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
# The type of each model axis's values (training axes are typed by TrainConfig).
INT_AXES = ("num_experts", "slots_per_expert", "k", "group_size", "seed")
STR_AXES = ("model", "router", "pool", "attention", "gelu", "capacity_rounding")
NUMBER_AXES = ("capacity_factor", "router_noise")

# Bounds on what a study file may ask of the loader (see ``read_yaml``) and of ``expand``.
MAX_STUDY_BYTES = 1 << 20
MAX_YAML_DEPTH = 32
MAX_YAML_NODES = 100_000
MAX_GRID_POINTS = 10_000


class RunSpec(Section):
    """One run: everything that determines its result. Frozen; hashable by ``run_id``."""

    study: str
    model: str
    router: str = "dense"
    num_experts: int | None = None
    slots_per_expert: int | None = None
    k: int | None = None
    capacity_factor: float | None = None
    moe_layers: str = "last_half"
    pool: str = "gap"
    attention: str = "auto"
    group_size: int | None = None
    gelu: str = "erf"
    capacity_rounding: str | None = None  # sparse routers; resolved by ModelConfig
    router_noise: float | None = None  # sparse routers, in units of 1/E; resolved likewise
    seed: int = 0
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    measure: MeasureConfig = Field(default_factory=MeasureConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)  # not part of the id

    def canonical_json(self) -> str:
        """Sorted-key JSON of everything but the study name, the trackers and the layout
        (renaming a study, switching TensorBoard off or sharding the experts keeps ids)."""
        exclude = {"study": True, "tracking": True, "train": set(LAYOUT_FIELDS)}
        return json.dumps(self.model_dump(mode="json", exclude=exclude),
                          sort_keys=True, separators=(",", ":"))

    @property
    def run_id(self) -> str:
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()[:12]

    def model_config_(self, num_classes: int | None = None) -> ModelConfig:
        """The ModelConfig of this run; ``num_classes`` comes from the dataset at run time."""
        head = MODEL_NAME.fullmatch(self.model)
        return ModelConfig(
            size=head.group(1), patch_size=int(head.group(2)), image_size=self.data.image_size,
            num_classes=num_classes or self.data.num_classes or 1000, pool=self.pool,
            attention=self.attention, router=self.router, num_experts=self.num_experts,
            slots_per_expert=self.slots_per_expert, k=self.k,
            capacity_factor=self.capacity_factor, moe_layers=self.moe_layers,
            group_size=self.group_size, gelu=self.gelu,
            capacity_rounding=self.capacity_rounding, router_noise=self.router_noise,
        )

    @property
    def label(self) -> str:
        """A short human name: the model spec plus the seed."""
        return f"{self.model_config_().spec}#seed{self.seed}"

    def flat(self) -> dict[str, Any]:
        """The spec as flat record columns: the spec's axes, the key training knobs and the
        columns derived from them (``harness.spec.model.DERIVED_FIELDS``)."""
        cfg = self.model_config_()
        out = {key: getattr(self, key) for key in AXES}
        out.update({key: getattr(self.train, key) for key in TRAIN_AXES})
        out.update(study=self.study, run_id=self.run_id, data=self.data.name,
                   image_size=self.data.image_size, spec=cfg.spec)
        out.update(cfg.derived_fields())
        return out


class EstimateConfig(Section):
    """How ``run --dry-run`` turns training FLOPs into GPU-hours (``harness.cost.estimate``).

    GPU-hours = training FLOPs (3 x forward FLOPs x images, 2 FLOPs per multiply-add) /
    (``peak_tflops`` x ``utilization``). An estimate, not a measurement: the defaults are an
    H100 SXM's dense bf16 peak and a model-FLOPs utilisation of 40%, typical of ViT training.
    """

    peak_tflops: PositiveFloat = 989.0  # per GPU, dense (no sparsity), at train.precision
    utilization: float = Field(0.4, gt=0, le=1)  # achieved / peak FLOP rate (MFU)
    device: str = "H100 SXM, bf16 dense"  # what peak_tflops describes (printed with it)
    # images one CPU core decodes and augments per second for this study's data (measure it on
    # the nodes with `moe-harness bench data`); unset: harness.cost.estimate.IMAGES_PER_CPU_S
    images_per_cpu_s: PositiveFloat | None = None
    # a `moe-harness bench train --out FILE` result: its peak and median measured MFU replace
    # the three fields above
    from_bench: str | None = None
    gpu_memory_gb: PositiveFloat = 80.0  # per GPU: the memory plan's limit ("fits")

    @model_validator(mode="before")
    @classmethod
    def _measured(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("from_bench"):
            from harness.cost.peaks import estimate_from_bench

            given = sorted({"peak_tflops", "utilization", "device"} & set(data))
            if given:
                raise ValueError(f"from_bench sets {', '.join(given)}: give one or the other")
            try:
                data = {**data, **estimate_from_bench(data["from_bench"], "from_bench")}
            except HarnessError as err:
                raise ValueError(str(err)) from None
        return data


class Study(Section):
    name: str
    description: str = ""
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    measure: MeasureConfig = Field(default_factory=MeasureConfig)
    fixed: dict[str, Any] = Field(default_factory=dict)
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    exclude: list[dict[str, Any]] = Field(default_factory=list)
    executor: ExecutorConfig = Field(default_factory=ExecutorConfig)
    tune: dict[str, Any] | None = None  # validated by runners.tune
    estimate: EstimateConfig = Field(default_factory=EstimateConfig)  # run --dry-run
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)  # TensorBoard, MLflow
    profile: str | None = None  # the profile applied, if any
    source: str | None = None  # the study file's path (set by load)

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        if not NAME.fullmatch(value):
            raise ValueError("must be letters, digits, '_', '-' or '.', starting with a letter "
                             "or digit (it names the results folder)")
        return value

    @field_validator("fixed")
    @classmethod
    def _check_fixed(cls, value: dict) -> dict:
        for axis, item in _known_axes(value).items():
            _check_axis_value(axis, item)
        return value

    @field_validator("grid")
    @classmethod
    def _check_grid(cls, value: dict) -> dict:
        for axis, items in _known_axes(value).items():
            if not items:
                raise ValueError(f"{axis}: an empty list; give at least one value")
            for item in items:
                _check_axis_value(axis, item)
        return value

    @field_validator("exclude")
    @classmethod
    def _check_exclude(cls, value: list[dict]) -> list[dict]:
        for rule in value:
            for axis, item in _known_axes(rule).items():
                if axis == "moe_layers" and isinstance(item, list) and all(
                        isinstance(i, int) for i in item):
                    continue  # one placement given as block indices
                for one in item if isinstance(item, list) else [item]:  # a list: any of these
                    _check_axis_value(axis, one)
        return value

    def grid_points(self) -> int:
        """How many points the grid spans before exclusions and collapsing."""
        return math.prod(len(values) for values in self.grid.values())

    def expand(self) -> list[RunSpec]:
        """Every distinct run of the grid, in grid order, excluded points left out."""
        axes = list(self.grid)
        specs: dict[str, RunSpec] = {}
        for values in itertools.product(*(self.grid[a] for a in axes)):
            point = {**AXES, **self.fixed, **dict(zip(axes, values, strict=True))}
            if any(_matches(rule, point) for rule in self.exclude):
                continue
            spec = self.run_spec(point)
            if self.executor.name == "slurm":
                check_slurm_ranks(self.executor.slurm, spec.train.gpus, self.source or self.name)
            specs.setdefault(spec.run_id, spec)
        return list(specs.values())

    def run_spec(self, point: dict[str, Any]) -> RunSpec:
        """The run of one point of the axes (grid and tuning points alike), validated."""
        where = f"{self.source or self.name}: grid point " + ", ".join(
            f"{k}={v}" for k, v in point.items() if k in self.grid)
        if point["model"] is None:
            raise HarnessError(f"{self.source or self.name}: model: missing; give it in grid or "
                               f"fixed, e.g. 'vit-s/16'")
        model = str(point["model"])
        m = MODEL_NAME.fullmatch(model)
        if not m:
            raise HarnessError(f"{where}: model {model!r}: expected a backbone 'vit-SIZE/PATCH' "
                               f"such as 'vit-s/16' (routers and experts are axes of their own)")
        if m.group(3) and int(m.group(3)) != self.data.image_size:
            raise HarnessError(f"{where}: model {model!r} names {m.group(3)} px but "
                               f"data.image_size is {self.data.image_size}")
        try:
            train = TrainConfig.model_validate(
                {**self.train.model_dump(), **{k: point[k] for k in TRAIN_AXES if k in point}})
            cfg = ModelConfig(
                size=m.group(1), patch_size=int(m.group(2)), image_size=self.data.image_size,
                num_classes=self.data.num_classes or 1000, pool=point["pool"],
                attention=point["attention"], router=point["router"],
                num_experts=point["num_experts"], slots_per_expert=point["slots_per_expert"],
                k=point["k"], capacity_factor=point["capacity_factor"],
                moe_layers=point["moe_layers"], group_size=point["group_size"],
                gelu=point["gelu"], capacity_rounding=point["capacity_rounding"],
                router_noise=point["router_noise"],
            )
            check_backend(cfg.attention)
        except ConfigError as err:
            raise HarnessError(f"{where}: {err}") from None
        except (ValidationError, TypeError, ValueError) as err:
            raise HarnessError(f"{where}: {_first_error(err)}") from None
        return RunSpec(
            study=self.name, model=f"vit-{cfg.size}/{cfg.patch_size}",
            **cfg.routing.columns(),  # the resolved choice, flat again: the run id's columns
            moe_layers=cfg.moe_layers if cfg.moe_blocks else "none",
            pool=cfg.pool, attention=cfg.attention, gelu=cfg.gelu,
            seed=point["seed"], data=self.data, train=train, measure=self.measure,
            tracking=self.tracking,
        )


def _known_axes(value: dict) -> dict:
    unknown = sorted(set(value) - set(ALL_AXES), key=str)
    if unknown:
        raise ValueError(f"unknown axis {shorten(unknown[0])}; allowed: {', '.join(ALL_AXES)}")
    return value


def _check_axis_value(axis: str, value: Any) -> None:
    """Model axes hold values of one type: no silent ``int(1.5)`` or ``true`` for 1."""
    def is_int(v):
        return isinstance(v, int) and not isinstance(v, bool)

    if axis in INT_AXES:
        ok = is_int(value) or (value is None and axis != "seed")
        kind = "an integer"
    elif axis in NUMBER_AXES:
        ok = value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)
                               and math.isfinite(value))
        kind = "a finite number"
    elif axis in STR_AXES:
        ok, kind = isinstance(value, str), "a string"
    elif axis == "moe_layers":
        ok = isinstance(value, str) or (isinstance(value, list) and all(map(is_int, value)))
        kind = f"one of {PLACEMENT_HELP}"
    else:  # training knobs: TrainConfig validates them with the rest of the section
        return
    if not ok:
        raise ValueError(f"{axis}: expected {kind}, got {shorten(value)}")


def _matches(rule: dict[str, Any], point: dict[str, Any]) -> bool:
    def hit(want, have):
        if isinstance(want, list) and not isinstance(have, list):
            return have in want
        return have == want

    return all(hit(want, point.get(key)) for key, want in rule.items())


def _first_error(err: Exception) -> str:
    if isinstance(err, ValidationError):
        return describe(err)
    return str(err)


# --- loading ---------------------------------------------------------------------------------
def load(path: str | Path, overrides: list[str] = (), profile: str | None = None) -> Study:
    """Read, merge the profile and ``--set key.path=value`` overrides, validate."""
    path = Path(path)
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise HarnessError(f"{path}: a study file must be a mapping of keys "
                           f"(name, data, train, grid, ...), got {type(raw).__name__}")
    raw = apply_profile(path, raw, profile)
    for item in overrides:
        set_path(path, raw, item)
    raw["source"] = str(path)
    try:
        study = Study.model_validate(raw)
    except ValidationError as err:
        raise HarnessError(f"{path}: {describe(err)}") from None
    if study.grid_points() > MAX_GRID_POINTS:
        sizes = " x ".join(f"{len(v)} {k}" for k, v in study.grid.items())
        raise HarnessError(f"{path}: grid: {study.grid_points():,} points ({sizes}); at most "
                           f"{MAX_GRID_POINTS:,} in one study: split it into several files")
    study.expand()  # surfaces impossible grid values now, as one clear error
    return study


def read_yaml(path: Path) -> Any:
    """A YAML file's data, within bounds: at most ``MAX_STUDY_BYTES``, UTF-8, nesting at most
    ``MAX_YAML_DEPTH`` deep and ``MAX_YAML_NODES`` values once aliases are expanded (an alias
    bomb of a few lines would otherwise stall validation or fill memory)."""
    if path.is_dir():
        raise HarnessError(f"{path}: is a folder; give a study file (YAML), e.g. "
                           f"studies/quickstart.yaml")
    if not path.is_file():
        raise HarnessError(f"{path}: no such study file")
    data = path.read_bytes()
    if len(data) > MAX_STUDY_BYTES:
        raise HarnessError(f"{path}: {len(data):,} bytes; a study file is at most "
                           f"{MAX_STUDY_BYTES:,}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise HarnessError(f"{path}: not UTF-8 text (byte {err.start}: "
                           f"{data[err.start:err.start + 1]!r})") from None
    try:
        node = _bounded_compose(path, text)
        return yaml.safe_load(text) if node is not None else None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise HarnessError(f"{path}:{where}: malformed YAML: {problem}") from None


def _bounded_compose(path: Path, text: str):
    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):  # iterative: no recursion
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            depth += 1
            if depth > MAX_YAML_DEPTH:
                line = event.start_mark.line + 1
                raise HarnessError(f"{path}: line {line}: nested more than {MAX_YAML_DEPTH} "
                                   f"levels deep")
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            depth -= 1
    node = yaml.compose(text, Loader=yaml.SafeLoader)
    sizes: dict[int, int] = {}

    def size(n) -> int:  # values once aliases are expanded; each node visited once
        if id(n) not in sizes:
            children = (n.value if isinstance(n, yaml.SequenceNode) else
                        [c for pair in n.value for c in pair]
                        if isinstance(n, yaml.MappingNode) else [])
            sizes[id(n)] = min(1 + sum(size(c) for c in children), MAX_YAML_NODES + 1)
        return sizes[id(n)]

    try:
        too_big = node is not None and size(node) > MAX_YAML_NODES
    except RecursionError:
        too_big = True
    if too_big:
        raise HarnessError(f"{path}: more than {MAX_YAML_NODES:,} values once its aliases "
                           f"(*name) are expanded; write the values out or use fewer aliases")
    return node


def apply_profile(path: Path, raw: dict, profile: str | None) -> dict:
    profiles = raw.pop("profiles", None) or {}
    default = raw.pop("default_profile", None)
    chosen = profile or default or (next(iter(profiles)) if profiles else None)
    if chosen is None:
        return raw
    if chosen not in profiles:
        allowed = ", ".join(profiles) or "none (the file has no 'profiles' section)"
        raise HarnessError(f"{path}: profile {chosen!r} not found; allowed: {allowed}")
    merged = deep_merge(raw, profiles[chosen] or {})
    merged["profile"] = chosen
    return merged


def deep_merge(base: dict, update: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def set_path(path: Path, raw: dict, item: str) -> None:
    """Apply one ``key.path=value`` override; the value is parsed as YAML (numbers, lists)."""
    key, sep, text = item.partition("=")
    if not sep or not key:
        raise HarnessError(f"--set {item!r}: expected key.path=value, e.g. train.steps=100")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = text
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise HarnessError(f"{path}: --set {item!r}: {part!r} is not a section")
        node = child
    node[parts[-1]] = value


def describe(err: ValidationError) -> str:
    """The first validation error as 'field.path: what is wrong; allowed: ...'."""
    e = err.errors()[0]
    loc = [str(p) for p in e["loc"]]
    where = ".".join(loc)
    if e["type"] == "extra_forbidden":
        allowed = _allowed_keys(loc[:-1])
        return f"{where}: unknown key {loc[-1]!r}; allowed: {', '.join(allowed)}"
    if e["type"] == "missing":
        return f"{where}: missing (required)"
    if e["type"] == "value_error":  # our own validators' messages say what they got
        return f"{where}: {e['msg'].removeprefix('Value error, ')}"
    return f"{where}: {e['msg']} (got {shorten(e.get('input'))})"


def _allowed_keys(loc: list[str]) -> list[str]:
    model: type[BaseModel] = Study
    for part in loc:
        field = model.model_fields.get(part)
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            break
        model = annotation
    return [k for k in model.model_fields if k not in ("source", "profile")]


def json_schema() -> dict:
    """JSON schema of the study format, for editors (``moe-harness schema``)."""
    schema = Study.model_json_schema()
    schema["properties"].pop("source", None)
    schema["properties"]["profiles"] = {
        "type": "object", "description": "named overrides merged over the file (--profile)",
        "additionalProperties": {"type": "object"}}
    schema["properties"]["default_profile"] = {"type": "string"}
    schema["title"] = "moe-harness study"
    return schema

