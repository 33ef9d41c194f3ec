"""Cost before you submit: what each run of a study will spend, from its shapes alone.

For every run: forward GFLOP per image (closed form, :func:`harness.cost.flops.analytic_flops`:
no model is built, nothing is allocated, the dataset is not opened), training exaFLOPs in
both conventions (ours, 3 x forward FLOPs x images, and the paper's, 3 x forward
multiply-adds x images, i.e. half of ours; see docs/paper-costs.md) and an
**estimate** of GPU-hours::

    GPU-hours = 3 x forward FLOPs x steps x batch / (peak_tflops x 1e12 x utilization) / 3600

with ``peak_tflops``, ``utilization`` and the device's name from the study's ``estimate:``
section (:class:`harness.spec.study.EstimateConfig`; defaults: an H100 SXM's dense bf16 peak,
989 TFLOP/s, at 40% utilisation). Only the training steps are counted: evaluation, the
few-shot probe, cost measurement, data loading and scheduler waits are not. Wall-clock hours
divide the GPU-hours by ``train.gpus``.

The head's class count comes from ``data.num_classes`` when given; otherwise from the
dataset's known size (synthetic 50, digits, cifar10 and mnist 10) or, for ``imagefolder``, an
assumed 1,000 (ImageNet-1k), stated in the output. At the paper's shapes the head is under
0.3% of the FLOPs, so the assumption barely moves the totals.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from harness.cost.flops import analytic_flops, train_exaflops
from harness.spec.study import EstimateConfig, RunSpec, Study

#: Images one CPU core decodes and augments per second (random resized crop + flip to 224 px),
#: measured with ``moe-harness bench data`` (a worker's CPU time) on this project's 2-core
#: machines, twice: JPEGs of 500 x 375 px 251 and 259, prepared shards of 256 px 5,230 and
#: 4,204 (their crop and resize run on the GPU); rounded down. Datasets held in memory are
#: not decoded and not checked.
IMAGES_PER_CPU_S = {"imagefolder": 250.0, "prepared": 4000.0}
THREADS_WITHOUT_WORKERS = 4  # harness.data.pipeline.THREADS: decoding threads when workers == 0

#: Classes of the datasets whose size is known without opening them (harness.data.datasets).
KNOWN_CLASSES = {"synthetic": 50, "digits": 10, "cifar10": 10, "mnist": 10}
#: Assumed for a folder dataset without ``data.num_classes`` (ImageNet-1k).
ASSUMED_FOLDER_CLASSES = 1000


@dataclass(frozen=True)
class RunCost:
    """What one run will spend (estimated before it runs)."""

    run_id: str
    spec: str
    gflops_per_image: float  # forward, 2 FLOPs per multiply-add
    images: int  # images seen in training: steps x batch
    train_exaflops: float  # ours: 3 x forward FLOPs x images
    train_exaflops_paper: float  # the paper's: 3 x forward multiply-adds x images
    gpu_hours: float  # estimate
    gpus: int
    num_classes: int
    classes_assumed: bool  # True when num_classes was not stated anywhere

    @property
    def wall_hours(self) -> float:
        return self.gpu_hours / self.gpus


def head_classes(spec: RunSpec) -> tuple[int, bool]:
    """The head's class count without opening the data, and whether it was assumed."""
    data = spec.data
    if data.num_classes is not None and data.name in ("synthetic", "imagefolder", "prepared"):
        return data.num_classes, False
    if data.name in KNOWN_CLASSES:
        return KNOWN_CLASSES[data.name], False
    return ASSUMED_FOLDER_CLASSES, True


def gpu_hours(train_flops: float, settings: EstimateConfig) -> float:
    """GPU-hours to do ``train_flops`` FLOPs at ``peak_tflops`` x ``utilization``."""
    return train_flops / (settings.peak_tflops * 1e12 * settings.utilization) / 3600.0


def run_cost(spec: RunSpec, settings: EstimateConfig | None = None) -> RunCost:
    """The estimated cost of one run (fast: closed form, also for H/14 with 256 experts)."""
    settings = settings or EstimateConfig()
    classes, assumed = head_classes(spec)
    cfg = spec.model_config_(classes)
    gflops = analytic_flops(cfg).total / 1e9
    images = spec.train.steps * spec.train.batch_size
    exa = train_exaflops(gflops, images)
    return RunCost(
        run_id=spec.run_id, spec=cfg.spec, gflops_per_image=gflops, images=images,
        train_exaflops=exa["train_exaflops"], train_exaflops_paper=exa["train_exaflops_paper"],
        gpu_hours=gpu_hours(exa["train_exaflops"] * 1e18, settings), gpus=spec.train.gpus,
        num_classes=classes, classes_assumed=assumed,
    )


def study_costs(study: Study, specs: Sequence[RunSpec] | None = None) -> list[RunCost]:
    """:func:`run_cost` of every run of ``study`` (or of ``specs``), in order."""
    specs = study.expand() if specs is None else specs
    return [run_cost(spec, study.estimate) for spec in specs]


@dataclass(frozen=True)
class Totals:
    runs: int
    train_exaflops: float
    train_exaflops_paper: float
    gpu_hours: float


def totals(costs: Iterable[RunCost]) -> Totals:
    costs = list(costs)
    return Totals(
        runs=len(costs),
        train_exaflops=sum(c.train_exaflops for c in costs),
        train_exaflops_paper=sum(c.train_exaflops_paper for c in costs),
        gpu_hours=sum(c.gpu_hours for c in costs),
    )


def describe(settings: EstimateConfig) -> str:
    """One line saying how the GPU-hours were estimated."""
    return (f"GPU-hours are an ESTIMATE: training FLOPs (ours) / ({settings.peak_tflops:g} "
            f"TFLOP/s peak [{settings.device}] x {settings.utilization:.0%} utilisation); "
            "training steps only (no evaluation, probe, measurement or queueing). Set "
            "'estimate: {peak_tflops, utilization, device}' in the study to change them.")


@dataclass(frozen=True)
class DataSupply:
    """Images/s a run's GPUs consume against what its CPUs decode (estimates)."""

    spec: str
    source: str
    demand: float  # images/s: GPUs x peak x utilisation / training FLOPs per image
    per_cpu: float  # images/s one core decodes
    cpus: int  # cores decoding: cpus_per_run, at most the worker processes (or threads)
    cpus_needed: int

    @property
    def supply(self) -> float:
        return self.per_cpu * self.cpus

    @property
    def bound(self) -> bool:
        return self.demand > self.supply


def data_supply(study: Study, specs: Sequence[RunSpec] | None = None) -> list[DataSupply]:
    """For a study on SLURM GPUs reading image files: each distinct model's data balance.

    Demand per run = ``train.gpus`` x peak x utilisation / (3 x forward FLOPs per image), the
    same rate the GPU-hour estimate assumes. Supply = the cores that decode (the run's
    ``cpus_per_run``, at most ``data.loader.workers`` per GPU process, or the in-process
    decoding threads without workers) x the per-core rate (``estimate.images_per_cpu_s``, else
    ``IMAGES_PER_CPU_S``). Empty for CPU runs and for datasets held in memory.
    """
    slurm = study.executor.slurm
    if study.executor.name != "slurm" or slurm.gpus_per_run == 0:
        return []
    settings = study.estimate
    out: dict[str, DataSupply] = {}
    for spec in study.expand() if specs is None else specs:
        source = spec.data.name
        if source not in IMAGES_PER_CPU_S:
            continue
        cost = run_cost(spec, settings)
        flops = 3 * cost.gflops_per_image * 1e9
        demand = spec.train.gpus * settings.peak_tflops * 1e12 * settings.utilization / flops
        per_cpu = settings.images_per_cpu_s or IMAGES_PER_CPU_S[source]
        decoders = spec.train.gpus * (spec.data.loader.workers or THREADS_WITHOUT_WORKERS)
        cpus = min(slurm.cpus_per_run, decoders)
        row = DataSupply(cost.spec, source, demand, per_cpu, cpus, -int(-demand // per_cpu))
        if cost.spec not in out or row.demand > out[cost.spec].demand:
            out[cost.spec] = row
    return list(out.values())


def data_supply_notes(study: Study, specs: Sequence[RunSpec] | None = None) -> list[str]:
    """The dry run's line on whether the GPUs will wait for data (see ``data_supply``): the
    hungriest model, and how many models its CPUs cannot feed."""
    rows = data_supply(study, specs)
    if not rows:
        return []
    worst = max(rows, key=lambda r: r.demand / r.supply)
    bound = sum(r.bound for r in rows)
    line = (f"{worst.spec} on {worst.source}: its GPUs consume ~{worst.demand:,.0f} images/s "
            f"(from the FLOP estimate), {worst.cpus} CPUs decode ~{worst.supply:,.0f} at "
            f"~{worst.per_cpu:,.0f}/core (estimate.images_per_cpu_s; measure it with "
            "`moe-harness bench data`)")
    if not bound:
        return [f"Data: fed. Hungriest model {line}."]
    return [f"DATA-BOUND: {bound} of {len(rows)} models would leave their GPUs waiting for "
            f"data. Hungriest: {line}; it needs ~{worst.cpus_needed} CPUs (executor.slurm."
            "cpus_per_run, and data.loader.workers x GPUs at least as many), or prepared shards "
            "(`moe-harness data prepare`, data.name: prepared)."]


CONVENTIONS = ("GFLOP/img: forward, 1 multiply-add = 2 FLOPs. train EF ours = 3 x forward "
               "FLOPs x steps x batch; train EF paper = 3 x forward multiply-adds x steps x "
               "batch = ours / 2, the convention of the paper's 'training exaFLOP' column.")


#: Datasets read from ``data.path`` (synthetic and digits need none).
PATH_DATASETS = ("imagefolder", "cifar10", "mnist", "prepared")


def data_path_notes(study) -> list[str]:
    """A warning when the study's data would fail every run at start: ``data.path`` unset or
    missing on this machine (the cluster profiles ship a placeholder)."""
    data = study.data
    if data.name not in PATH_DATASETS:
        return []
    from pathlib import Path

    if data.path is None:
        return [f"WARNING: data.path is unset; every {data.name} run would fail at start "
                "(give it with --set data.path=...)."]
    if not Path(data.path).expanduser().exists():
        return [f"WARNING: data.path {data.path} does not exist on this machine; every run "
                "would fail at start unless it exists where the jobs run (give the real "
                "folder with --set data.path=...)."]
    return []


# --- calibrated from a finished study ------------------------------------------------------------
@dataclass(frozen=True)
class Calibration:
    """Measured training time on one device, fitted to a finished study's runs::

        seconds = per_step_s x steps + per_gflop_s x training GFLOPs / GPUs

    (training GFLOPs: 3 x forward GFLOPs x images, ours). ``per_step_s`` is what every step
    costs whatever its size (launches, the optimizer's loop, data, the Python around them);
    ``per_gflop_s`` the device's time per GFLOP at these shapes. ``form`` says which terms
    were fitted; ``rms_error`` is the fit's relative error on its own runs."""

    device: str
    runs: int
    per_step_s: float
    per_gflop_s: float
    rms_error: float
    form: str

    def seconds(self, gflops_per_image: float, images: float, steps: float,
                gpus: int = 1) -> float:
        """Predicted training time (the steps alone, as ``train_time_s`` measures)."""
        return (self.per_step_s * steps
                + self.per_gflop_s * 3.0 * gflops_per_image * images / max(gpus, 1))

    def utilization(self, peak_tflops: float) -> float:
        """The achieved share of ``peak_tflops`` (per GPU) the FLOP term implies."""
        if not self.per_gflop_s:
            return float("nan")
        return 1e9 / self.per_gflop_s / (peak_tflops * 1e12)


def _timed(record) -> tuple[float, float, float, float] | None:
    """(seconds, steps, GFLOPs, GPUs) of a finished record with a measured training time."""
    try:
        seconds = float(record.get("train_time_s") or 0)
        steps = float(record.get("steps_done") or record.get("steps") or 0)
        gflops = float(record.get("gflops_per_image") or 0)
        batch = float(record.get("batch_size") or 0)
        gpus = float(record.get("ranks") or record.get("world_size") or 1)
    except (TypeError, ValueError):
        return None
    if record.get("status") != "ok" or min(seconds, steps, gflops, batch) <= 0:
        return None
    return seconds, steps, 3.0 * gflops * batch * steps, gpus


def _fit_time(rows: list[tuple[float, float, float, float]]) -> tuple[float, float, str]:
    """Non-negative least squares on relative errors: (per step, per GFLOP, form)."""
    import numpy as np

    t = np.array([r[0] for r in rows])
    cols = np.array([[r[1], r[2] / r[3]] for r in rows]) / t[:, None]
    fits = {"FLOPs only": (0.0, float(np.sum(cols[:, 1]) / np.sum(cols[:, 1] ** 2))),
            "steps only": (float(np.sum(cols[:, 0]) / np.sum(cols[:, 0] ** 2)), 0.0)}
    if len(rows) >= 3 and np.linalg.cond(cols) < 1e8:
        both = np.linalg.lstsq(cols, np.ones(len(rows)), rcond=None)[0]
        if (both >= 0).all():
            fits["steps + FLOPs"] = (float(both[0]), float(both[1]))

    def sse(p):
        return float(np.sum((cols @ np.array(p) - 1.0) ** 2))

    form = min(fits, key=lambda k: sse(fits[k]))
    return (*fits[form], form)


def calibrate(records: Iterable[dict]) -> dict[str, Calibration]:
    """Device name -> its :class:`Calibration` from a store's records (``ok`` runs with a
    measured ``train_time_s``, ``gflops_per_image``, ``batch_size`` and steps). With fewer
    than 3 runs, or runs whose steps and FLOPs do not vary apart, one term is fitted."""
    by_device: dict[str, list] = {}
    for record in records:
        row = _timed(record)
        if row is not None:
            by_device.setdefault(str(record.get("device") or "unknown"), []).append(row)
    out = {}
    for device, rows in by_device.items():
        per_step, per_gflop, form = _fit_time(rows)
        rel = [(per_step * s + per_gflop * f / g) / t - 1.0 for t, s, f, g in rows]
        out[device] = Calibration(device, len(rows), per_step, per_gflop,
                                  (sum(r * r for r in rel) / len(rel)) ** 0.5, form)
    return out


def pick_calibration(calibrations: dict[str, Calibration],
                     device: str | None = None) -> Calibration | None:
    """The calibration of ``device`` (a substring of its name), else of the device with the
    most runs; None when there is none."""
    if device is not None:
        found = [c for name, c in calibrations.items() if device.lower() in name.lower()]
        return max(found, key=lambda c: c.runs) if found else None
    return max(calibrations.values(), key=lambda c: c.runs) if calibrations else None


def calibrated_seconds(cost: RunCost, steps: int, calibration: Calibration) -> float:
    """A dry run's :class:`RunCost` as measured training seconds (wall, its GPUs together)."""
    return calibration.seconds(cost.gflops_per_image, cost.images, steps, cost.gpus)


def describe_calibration(calibration: Calibration) -> str:
    """One line: where the calibrated times come from and how well they fit."""
    c = calibration
    return (f"Wall times CALIBRATED on {c.runs} finished runs on {c.device}: "
            f"{c.per_step_s * 1e3:.3g} ms per step + {c.per_gflop_s * 1e3:.3g} ms per training "
            f"GFLOP ({c.form}); the fit is within {c.rms_error:.0%} (rms) of its own runs. "
            "Training steps only; another device or other shapes make it an extrapolation.")


__all__ = ["ASSUMED_FOLDER_CLASSES", "CONVENTIONS", "IMAGES_PER_CPU_S", "KNOWN_CLASSES",
           "PATH_DATASETS", "THREADS_WITHOUT_WORKERS", "Calibration", "DataSupply", "RunCost",
           "Totals", "calibrate", "calibrated_seconds", "data_path_notes", "data_supply",
           "data_supply_notes", "describe", "describe_calibration", "gpu_hours",
           "head_classes", "pick_calibration", "run_cost", "study_costs", "totals"]
