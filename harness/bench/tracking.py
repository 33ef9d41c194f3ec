"""The cost of a live tracker: ``moe-harness bench tracking``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from harness.runtime.tracking import open_log


def bench_tracking(*, model: str = "vit-w64d4h4m256/4", router: str = "soft",
                   num_experts: int = 16, image_size: int = 16, steps: int = 150,
                   batch_size: int = 128, repeats: int = 5, threads: int | None = None,
                   progress=None) -> dict[str, Any]:
    """The training loop's time with TensorBoard event files on and off.

    ``repeats`` interleaved pairs of identical runs (same seed, data and model; the order
    within a pair alternates), each timed by the loop's own ``train_time_s`` (the steps, with
    the tracker's calls, without the evaluations) and by the process's CPU time between its
    first and last progress points (every thread of the process, so a tracker's own threads
    count; other processes on a shared machine do not). Returns the per-run times, each
    mode's median, the median of the per-pair ratios on / off (wall and CPU), and
    ``log_share``: the time inside the tracker's calls over the loop's time (median over the
    "on" runs), the overhead measured directly.
    """
    import statistics
    import tempfile

    import torch.utils.tensorboard  # noqa: F401 - imported once, outside the timed loops

    from harness.data import load_data
    from harness.errors import HarnessError
    from harness.nn.vit import build
    from harness.runtime.train import fit, seed_everything
    from harness.spec import routers
    from harness.spec.config import DataConfig, MeasureConfig, TrackingConfig, TrainConfig
    from harness.spec.model import MODEL_NAME
    from harness.spec.study import RunSpec

    name = MODEL_NAME.fullmatch(model)
    if not name:
        raise HarnessError(f"--model {model!r}: expected a backbone 'vit-SIZE/PATCH[@RES]' "
                           "such as 'vit-w64d4h4m256/4' or 'vit-s/16@32'")
    if name.group(3):  # the resolution the model names is the images' size
        image_size = int(name.group(3))
    fields = routers.get(router).settings(num_experts=num_experts)
    spec = RunSpec(
        study="bench-tracking", model=model, router=router, num_experts=fields.num_experts,
        slots_per_expert=fields.slots_per_expert, k=fields.k,
        capacity_factor=fields.capacity_factor, moe_layers="last:2",
        data=DataConfig(image_size=image_size, num_classes=100, train_size=20_000,
                        test_size=1_000),
        train=TrainConfig(steps=steps, batch_size=batch_size, eval_every=0,
                          checkpoint_every=0, fewshot_shots=0, warmup_steps=10, device="cpu",
                          threads=threads),
        measure=MeasureConfig(enabled=False))
    data = load_data(spec.data)
    times: dict[str, list[float]] = {"off": [], "on": []}
    cpu: dict[str, list[float]] = {"off": [], "on": []}
    shares: list[float] = []
    for i in range(repeats):
        for mode in (("off", "on") if i % 2 == 0 else ("on", "off")):
            seed_everything(spec.seed)
            net = build(spec.model_config_(data.num_classes))
            run = spec.model_copy(update={"tracking": TrackingConfig(tensorboard=mode == "on")})
            with tempfile.TemporaryDirectory(prefix="moe-bench-tracking-") as tmp:
                log, close = open_log(run, Path(tmp), Path(tmp))  # as harness.runtime.run does
                spent = [0.0]

                def timed(step: int, values: dict, log=log, spent=spent) -> None:
                    tic = time.perf_counter()
                    log(step, values)
                    if step > 0:  # the call before the loop opens the writer, untimed
                        spent[0] += time.perf_counter() - tic

                marks: list[float] = []
                result = fit(net, run, data, workdir=Path(tmp), device="cpu",
                             log=timed if log else None,
                             on_progress=lambda _, marks=marks: marks.append(time.process_time()))
                close()
                if log:
                    shares.append(spent[0] / result["train_time_s"])
                assert bool(list(Path(tmp).glob("events.out.tfevents.*"))) == (mode == "on")
            times[mode].append(result["train_time_s"])
            cpu[mode].append(marks[-1] - marks[0])
            if progress:
                progress(f"{mode:>3}: {1e3 * result['train_time_s'] / steps:.2f} ms/step")
    ratios = [on / off for on, off in zip(times["on"], times["off"], strict=True)]
    cpu_ratios = [on / off for on, off in zip(cpu["on"], cpu["off"], strict=True)]
    return {"spec": spec.model_config_().spec, "steps": steps, "batch_size": batch_size,
            "times_s": times, "median_s": {k: statistics.median(v) for k, v in times.items()},
            "ratio_on_off": statistics.median(ratios), "ratios": ratios,
            "cpu_s": cpu, "cpu_ratio_on_off": statistics.median(cpu_ratios),
            "cpu_ratios": cpu_ratios,
            "log_share": statistics.median(shares), "log_shares": shares}
