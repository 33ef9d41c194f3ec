"""The input pipeline: batches by index, loaded in the training process or in worker processes.

``Loader(dataset, device, loader_cfg, augment=...)`` gives ``get(idx) -> (images, labels)`` on
the device, images as float (B, 3, H, W) in [-1, 1]. The training loop and the evaluations
first ``plan`` the index batches they will ask for, in order; ``get`` then returns the next
planned batch (and loads anything unplanned in the calling process).

* ``data.loader.workers: 0`` (default): in the training process. In-memory sets are indexed
  as tensors (moved to the GPU once when they fit); file datasets are decoded by a thread pool
  (Pillow releases the GIL).
* ``workers: N``: N torch DataLoader worker processes decode and augment whole batches,
  ``prefetch`` batches each ahead, into pinned memory on CUDA. The sample order stays in the
  training process: the plan is drawn there (from a copy of the sampler's generator, so the
  checkpointed generator state is the step's, not the prefetch's), and ``get`` checks that
  each batch it hands out is the one asked for. Workers end with the plan, on ``close``, and
  on their own when the training process dies (DataLoader's parent watchdog).

File datasets (imagefolder, prepared) hand over uint8 pixels, which are normalised on the
device (a quarter of the bytes through the host and the PCIe bus). Augmentation
(``data.augment: crop_flip``, the usual ImageNet protocol) is per image: training images get a
random resized crop (scale 0.08-1, aspect 3/4-4/3, as torchvision's RandomResizedCrop) and a
horizontal flip with probability 1/2; evaluation images a center crop of 87.5% of the shorter
side, resized. Each training image's random numbers come from (seed, step, position in the
batch), so they do not depend on the worker count or on a resume.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from harness.spec.config import LoaderConfig

EVAL_CROP = 0.875  # evaluation: center crop of this fraction of the shorter side
CROP_SCALE = (0.08, 1.0)  # random resized crop: area fraction
CROP_RATIO = (3 / 4, 4 / 3)  # random resized crop: aspect ratio (width / height)
THREADS = 4  # in-process decoding threads (workers: 0)


# --- augmentation (PIL images, per item) ---------------------------------------------------------
def crop_box(width: int, height: int, rng: np.random.Generator | None,
             augment: bool) -> tuple[float, float, float, float]:
    """The box (left, top, right, bottom) to resize to the output size.

    No augmentation: the whole image. Augmentation, evaluation (``rng`` None): the centered
    square of ``EVAL_CROP`` of the shorter side. Training: a random resized crop.
    """
    if not augment:
        return 0.0, 0.0, float(width), float(height)
    if rng is None:
        side = EVAL_CROP * min(width, height)
        left, top = (width - side) / 2, (height - side) / 2
        return left, top, left + side, top + side
    area = width * height
    for _ in range(10):  # torchvision's RandomResizedCrop
        target = area * rng.uniform(*CROP_SCALE)
        ratio = math.exp(rng.uniform(math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])))
        w, h = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
        if 0 < w <= width and 0 < h <= height:
            left, top = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
            return float(left), float(top), float(left + w), float(top + h)
    ratio = min(max(width / height, CROP_RATIO[0]), CROP_RATIO[1])  # fallback: center crop
    w, h = (width, round(width / ratio)) if width / height < ratio else (round(height * ratio),
                                                                           height)
    left, top = (width - w) / 2, (height - h) / 2
    return left, top, left + w, top + h


def resize_crop(img, size: int, rng: np.random.Generator | None, augment: bool) -> np.ndarray:
    """A PIL image -> uint8 (3, size, size): crop box (see ``crop_box``), resize, flip."""
    from PIL import Image

    box = crop_box(*img.size, rng, augment)
    if img.format == "JPEG":  # decode at 1/2, 1/4, 1/8 scale when that still covers the box
        scale_x, scale_y = size / (box[2] - box[0]), size / (box[3] - box[1])
        full = img.size
        img.draft("RGB", (math.ceil(full[0] * scale_x), math.ceil(full[1] * scale_y)))
        fx, fy = img.size[0] / full[0], img.size[1] / full[1]
        box = (box[0] * fx, box[1] * fy, box[2] * fx, box[3] * fy)
    out = img.convert("RGB").resize((size, size), Image.Resampling.BILINEAR, box=box)
    array = np.asarray(out, dtype=np.uint8)
    if rng is not None and augment and rng.random() < 0.5:
        array = array[:, ::-1]
    return np.ascontiguousarray(array.transpose(2, 0, 1))


def to_device(x: torch.Tensor, device: torch.device, boxes: torch.Tensor | None = None,
              size: int | None = None) -> torch.Tensor:
    """uint8 pixels -> float in [-1, 1] on ``device`` (after the copy: 4x fewer bytes moved);
    with ``boxes``, each image's crop is resized to ``size`` there too (``crop_on_device``)."""
    x = x.to(device, non_blocking=True)
    if x.dtype == torch.uint8:
        x = x.float()
        if boxes is not None:
            x = crop_on_device(x, boxes.to(device, non_blocking=True), size)
        return x.div_(127.5).sub_(1.0)
    return x


def crop_on_device(x: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Crop each image of ``x`` (B, C, R, R) to its box (left, top, right, bottom, flip) in
    pixels, resized bilinearly to ``size``: one affine ``grid_sample`` for the whole batch."""
    r = x.shape[-1]
    left, top, right, bottom, flip = boxes.float().unbind(1)
    theta = torch.zeros(len(x), 2, 3, device=x.device)
    theta[:, 0, 0] = (right - left) / r * (1 - 2 * flip)  # a mirrored x axis flips the image
    theta[:, 0, 2] = (left + right) / r - 1
    theta[:, 1, 1] = (bottom - top) / r
    theta[:, 1, 2] = (top + bottom) / r - 1
    grid = torch.nn.functional.affine_grid(theta, [len(x), x.shape[1], size, size],
                                           align_corners=False)
    return torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="border",
                                           align_corners=False)


def device_box(resolution: int, rng: np.random.Generator | None, augment: bool) -> list[float]:
    """(left, top, right, bottom, flip) of one image's crop for ``crop_on_device``."""
    box = crop_box(resolution, resolution, rng, augment)
    flip = float(rng is not None and augment and rng.random() < 0.5)
    return [*box, flip]


# --- the batch a worker makes ---------------------------------------------------------------
# indices, and for training augmentation (seed, step, position of the first index) or None
Key = tuple[list[int], tuple[int, int, int] | None]


def fetch(dataset: Dataset, key: Key) -> tuple[torch.Tensor, ...]:
    """One batch: images stacked as uint8 or float, labels int64, and for a dataset whose
    crops are resized on the device (``device_crop``), their boxes."""
    idx, seeds = key
    images = getattr(dataset, "images", None)
    if images is not None:  # in memory: one gather
        t = torch.as_tensor(idx)
        return images[t], dataset.labels[t]
    load = getattr(dataset, "load", None)
    if load is None:
        items = [dataset[i] for i in idx]
        return torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items])
    rngs = [_rng(seeds, pos) for pos in range(len(idx))]
    pixels = torch.from_numpy(np.stack([load(i, rng) for i, rng in zip(idx, rngs, strict=True)]))
    labels = dataset.labels[torch.as_tensor(idx)]
    if getattr(dataset, "device_crop", False):  # crops drawn here, resized on the device
        return pixels, labels, torch.tensor([dataset.box(rng) for rng in rngs])
    return pixels, labels


def _rng(seeds: tuple[int, int, int] | None, pos: int) -> np.random.Generator | None:
    """Image ``pos`` of a key's batch: its generator from (seed, step, position in the step)."""
    return None if seeds is None else np.random.default_rng([seeds[0], seeds[1],
                                                             seeds[2] + pos])


class _Batched(Dataset):
    """A dataset whose items are whole batches (the DataLoader's ``batch_size=None``)."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __getitem__(self, key: Key) -> tuple[torch.Tensor, ...]:
        return fetch(self.dataset, key)

    def __len__(self) -> int:
        return len(self.dataset)


class _Keys(torch.utils.data.Sampler):
    """Yields the plan's keys, noting each in ``queue`` as the DataLoader takes it."""

    def __init__(self, keys: Iterable[Key], queue: deque):
        self.keys, self.queue = keys, queue

    def __iter__(self) -> Iterator[Key]:
        for key in self.keys:
            self.queue.append(key[0])
            yield key


# --- the loader ------------------------------------------------------------------------------
class Loader:
    """Batches by index on ``device`` (see the module docstring)."""

    def __init__(self, dataset: Dataset, device: torch.device | str,
                 cfg: LoaderConfig | None = None, *, augment_seed: int | None = None):
        self.dataset, self.device = dataset, torch.device(device)
        self.cfg = cfg or LoaderConfig()
        self.augment_seed = augment_seed  # None: no training augmentation from this loader
        self.images = getattr(dataset, "images", None)
        self.labels = getattr(dataset, "labels", None)
        if (self.images is not None and self.cfg.workers == 0 and self.device.type == "cuda"
                and self.images.numel() * self.images.element_size() < 2**31):
            self.images, self.labels = self.images.to(self.device), self.labels.to(self.device)
        self.pool: ThreadPoolExecutor | None = None
        self._planned: Iterator[Key] | None = None
        self._queue: deque = deque()  # index lists the DataLoader has taken, in order
        self._batches: Iterator | None = None  # the DataLoader's iterator

    def __len__(self) -> int:
        return len(self.dataset)

    def plan(self, batches: Iterable[torch.Tensor], *, first_step: int | None = None) -> None:
        """The index batches ``get`` will be asked for next, in order (any earlier plan ends).

        ``first_step``: these are training batches from that step on, augmented (when the
        loader has an ``augment_seed``) with random numbers from (seed, step, position).
        """
        self._stop()
        train = first_step is not None and self.augment_seed is not None

        def keys() -> Iterator[Key]:
            for n, idx in enumerate(batches):
                yield idx.tolist(), (self.augment_seed, first_step + n, 0) if train else None

        if self.cfg.workers == 0:
            self._planned = keys()
            return
        loader = DataLoader(
            _Batched(self.dataset), sampler=_Keys(keys(), self._queue), batch_size=None,
            num_workers=self.cfg.workers, prefetch_factor=self.cfg.prefetch,
            pin_memory=self.cfg.pin_memory and self.device.type == "cuda",
            # its own generator: the workers' base seed must not draw from the global RNG,
            # which the training state (gate noise) owns and checkpoints
            generator=torch.Generator().manual_seed(0),
            multiprocessing_context="fork" if "fork" in _start_methods() else None)
        self._batches = iter(loader)

    def get(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch ``idx``: the next planned one, or loaded here if it was not planned."""
        wanted = idx.tolist()
        if self._batches is not None:
            if self._queue and self._queue[0] == wanted:  # keys are queued as workers get them
                self._queue.popleft()
                return self._to_device(next(self._batches))
            self._stop()  # off plan: what the workers prepared is not wanted
        key: Key = (wanted, None)
        if self._planned is not None:
            planned = next(self._planned, None)
            if planned is not None and planned[0] == wanted:
                key = planned
            else:
                self._planned = None
        return self._load_here(key)

    def _load_here(self, key: Key) -> tuple[torch.Tensor, torch.Tensor]:
        if self.images is not None:
            i = torch.as_tensor(key[0], device=self.images.device)
            return self._to_device((self.images[i], self.labels[i]))
        if getattr(self.dataset, "load", None) is not None and len(key[0]) > 1:
            if self.pool is None:
                self.pool = ThreadPoolExecutor(THREADS)  # Pillow decodes without the GIL
            idx, seeds = key
            one = lambda p: fetch(self.dataset, ([idx[p]], seeds and (*seeds[:2], p)))  # noqa: E731
            parts = list(self.pool.map(one, range(len(idx))))
            return self._to_device(tuple(torch.cat(t) for t in zip(*parts, strict=True)))
        return self._to_device(fetch(self.dataset, key))

    def _to_device(self, batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        x, y, *boxes = batch
        size = getattr(self.dataset, "image_size", None)
        return (to_device(x, self.device, boxes[0] if boxes else None, size),
                y.to(self.device, non_blocking=True))

    def _stop(self) -> None:
        """End the current plan; its worker processes exit."""
        batches, self._batches, self._planned = self._batches, None, None
        self._queue.clear()
        shutdown = getattr(batches, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()

    def close(self) -> None:
        self._stop()
        if self.pool is not None:
            self.pool.shutdown()
            self.pool = None


def _start_methods() -> list[str]:
    import multiprocessing

    return multiprocessing.get_all_start_methods()


def training_plan(generator: torch.Generator, size: int, batch_size: int, steps: int,
                  shard=lambda idx: idx) -> Iterator[torch.Tensor]:
    """The training batches of ``steps`` steps, drawn as the training loop draws them (with
    replacement, ``batch_size`` indices a step, each rank's ``shard``) from a copy of
    ``generator`` taken now; ``generator`` itself is left untouched."""
    ahead = torch.Generator().set_state(generator.get_state())
    return (shard(torch.randint(size, (batch_size,), generator=ahead)) for _ in range(steps))


__all__ = ["Loader", "crop_box", "crop_on_device", "fetch", "resize_crop", "to_device",
           "training_plan"]
