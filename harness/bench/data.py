"""``moe-harness bench data``: images/s of each input source, per CPU core.

Sources, each read through ``harness.data.pipeline.Loader`` exactly as training reads them
(random batches with replacement, training augmentation when asked), on the CPU:

* ``jpeg``: an imagefolder of JPEG files (decode, crop, resize in the workers);
* ``prepared``: the same images as prepared shards (``harness.data.prepared``; memory maps, crop and
  resize, no decoding);
* ``in-memory``: float tensors already at the training size (a gather).

Without ``--path`` it writes a temporary imagefolder of ImageNet-like JPEGs first (500 x 375,
quality 90, smooth random content: a decode costs about what a photo's does; noise would cost
more). Two figures per source: images per CPU-second of a worker's work, measured in one
thread by its CPU time (what sizes ``cpus_per_run``, and robust to other load); and the
wall-clock images/s through N worker processes into the training process (the median of
``repeats`` passes of ``batches`` batches after one warm-up batch, which starts the workers).
Prepared shards' crop and resize run on the device, so their per-core figure is the copy.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from harness.spec.config import DataConfig, LoaderConfig

JPEG_SIZE = (500, 375)  # ImageNet's most common size (width, height)


def make_jpeg_folder(root: Path, images: int, classes: int = 10, seed: int = 0) -> Path:
    """An imagefolder (train/ and val/) of smooth random JPEGs; returns ``root``."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = JPEG_SIZE
    for split, n in (("train", images), ("val", max(classes, images // 10))):
        for i in range(n):
            folder = root / split / f"class{i % classes:03d}"
            folder.mkdir(parents=True, exist_ok=True)
            coarse = rng.integers(0, 256, (h // 25, w // 25, 3), dtype=np.uint8)
            img = Image.fromarray(coarse).resize((w, h), Image.Resampling.BICUBIC)
            pixels = np.asarray(img, dtype=np.int16) + rng.integers(-12, 13, (h, w, 3))
            Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(
                folder / f"{i:06d}.jpg", quality=90)
    return root


def per_core(dataset, *, batch: int, batches: int, augment: bool) -> float:
    """Images per CPU-second of a worker's work (``fetch``), in this thread alone: its CPU
    time, so other load on the machine barely moves it."""
    from harness.data.pipeline import fetch

    gen = torch.Generator().manual_seed(0)
    fetch(dataset, (torch.randint(len(dataset), (batch,), generator=gen).tolist(), None))
    tic = time.thread_time()
    for step in range(batches):
        idx = torch.randint(len(dataset), (batch,), generator=gen).tolist()
        fetch(dataset, (idx, (0, step, 0) if augment else None))
    return batch * batches / (time.thread_time() - tic)


def measure(dataset, workers: int, *, batch: int, batches: int, repeats: int,
            augment: bool) -> float:
    """Median images/s of ``repeats`` passes of ``batches`` training batches."""
    from harness.data.pipeline import Loader, training_plan

    rates = []
    for r in range(repeats):
        loader = Loader(dataset, "cpu", LoaderConfig(workers=workers, prefetch=4),
                        augment_seed=r if augment else None)
        gen = torch.Generator().manual_seed(r)
        loader.plan(training_plan(gen, len(dataset), batch, batches + 1), first_step=0)
        try:
            for _ in range(1 + batches):
                idx = torch.randint(len(dataset), (batch,), generator=gen)
                loader.get(idx)
                if _ == 0:
                    tic = time.perf_counter()  # after the warm-up batch (workers started)
            rates.append(batch * batches / (time.perf_counter() - tic))
        finally:
            loader.close()
    return statistics.median(rates)


def bench_data(path: Path | None = None, *, image_size: int = 224, resolution: int = 256,
               images: int = 512, workers: tuple[int, ...] = (1, 2), batch: int = 64,
               batches: int = 6, repeats: int = 3, augment: bool = True,
               progress=print) -> dict:
    """Images/s of each source with each worker count (see the module docstring)."""
    from harness.data import load_data
    from harness.data.datasets import InMemoryImages
    from harness.data.prepared import prepare

    with tempfile.TemporaryDirectory(prefix="bench-data-") as tmp:
        tmp = Path(tmp)
        if path is None:
            progress(f"writing {images} JPEGs ({JPEG_SIZE[0]} x {JPEG_SIZE[1]}) to {tmp}")
            path = make_jpeg_folder(tmp / "jpeg", images)
        progress(f"preparing shards at {resolution} px")
        tic = time.perf_counter()
        prepare(path, tmp / "prepared", resolution, log=lambda _: None)
        prepare_s = time.perf_counter() - tic
        aug = "crop_flip" if augment else "none"
        sources = {
            "jpeg": load_data(DataConfig(name="imagefolder", path=str(path),
                                         image_size=image_size, augment=aug)).train,
            "prepared": load_data(DataConfig(name="prepared", path=str(tmp / "prepared"),
                                             image_size=image_size, augment=aug)).train,
        }
        n = len(sources["jpeg"])
        sources["in-memory"] = InMemoryImages(torch.rand(n, 3, image_size, image_size),
                                              torch.zeros(n, dtype=torch.long))
        rows = []
        for name, dataset in sources.items():
            aug_here = augment and name != "in-memory"
            core = per_core(dataset, batch=batch, batches=batches, augment=aug_here)
            progress(f"{name:10s} per CPU-second: {core:8.0f} images")
            for w in workers:
                rate = measure(dataset, w, batch=batch, batches=batches, repeats=repeats,
                               augment=aug_here)
                rows.append({"source": name, "workers": w, "images_per_s": rate,
                             "images_per_cpu_s": core})
                progress(f"{name:10s} {w} worker(s): {rate:8.0f} images/s")
    return {"image_size": image_size, "resolution": resolution, "augment": aug,
            "images": n, "batch": batch, "cpus": len(os.sched_getaffinity(0)),
            "prepare_s": prepare_s, "rows": rows}
