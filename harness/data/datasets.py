"""Datasets: ``synthetic`` (generated), ``digits`` (scikit-learn), ``imagefolder`` / ``cifar10`` /
``mnist`` (the IDX family: MNIST, Fashion-MNIST, KMNIST) / ``prepared`` (uint8 shards).

``load_data(cfg) -> Datasets``. Every dataset yields ``(image, label)`` with ``image`` a float
tensor (3, H, W) at ``cfg.image_size`` and ``label`` an int. Nothing is downloaded: ``digits``
ships with scikit-learn, ``imagefolder``, ``cifar10``, ``mnist`` and ``prepared`` read a local
``data.path`` (Debian's ``dataset-fashion-mnist`` puts Fashion-MNIST's IDX files under
``/usr/share/datasets/fashion-mnist``; ``moe-harness data prepare`` writes prepared shards).

In-memory sets (synthetic, digits, cifar10, mnist) are ``InMemoryImages`` whose ``images`` and
``labels`` tensors the training loop indexes directly; ``imagefolder`` is lazy (one file read
per item, Pillow + numpy, no torchvision).

Synthetic task: "context-dependent prototype votes"
---------------------------------------------------
Images are a ``g × g`` grid of ``patch``-pixel tiles (16 px / 4 px = 16 tiles, one per token of
a /4 ViT). There are ``P = prototypes_per_class · num_classes`` class prototypes and
``distractors`` distractor tiles (fixed random 3 × patch × patch patterns), and ``contexts``
sub-tasks. Each context ``k`` has its own random colour tint and its own random, balanced
table ``vote[k]`` mapping every prototype to a class. An image of class ``y``: draw a context
``k``, draw one prototype ``p`` with ``vote[k][p] == y``, put ``p`` on ``signal_tokens``
random tiles and random distractors on the others, add context ``k``'s tint to every pixel and
Gaussian noise of std ``noise``. So every token carries its context (the tint) and the label
is a lookup of ``contexts × P`` (context, prototype) pairs: a memorisation task in which a
token-level router can send each context to its own experts, while the dense MLP has to hold
the whole table. The tables are fixed by ``cfg.seed``; train and test images are independent
draws from them (different random streams), so test accuracy measures the learned table, not
memorised images.

The defaults (50 classes, 6 contexts, 2 prototypes per class = 600 pairs, 4 signal tiles,
64 distractors, noise 0.5, tint 1.0, 60,000 train / 4,000 test images) put dense training
between saturation and chance in a laptop budget, so that the routers can differ; how they
were chosen, and what they do and do not show: ``docs/synthetic-data.md``.
"""

from __future__ import annotations

import gzip
import math
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from harness.errors import HarnessError
from harness.spec.config import DataConfig

# Generator knobs (``data.synthetic``) and their defaults; see the module docstring.
SYNTHETIC_DEFAULTS: dict[str, float | int] = {
    "patch": 4,  # tile size in pixels; match the model's patch size
    "contexts": 6,  # sub-tasks, each with its own tint and prototype -> class table
    "prototypes_per_class": 2,  # prototypes voting for each class in each context
    "signal_tokens": 4,  # tiles showing the image's prototype
    "distractors": 64,  # distractor tiles (vote for nothing)
    "noise": 0.5,  # std of the Gaussian pixel noise
    "tint": 1.0,  # scale of the per-context colour offset
}
SYNTHETIC_CLASSES = 50
SYNTHETIC_TRAIN = 60_000
SYNTHETIC_TEST = 4_000
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".ppm", ".tif", ".tiff")
_CHUNK = 1024  # images per random stream: memory stays flat, a larger n extends a smaller one


class InMemoryImages(Dataset):
    """Images (N, 3, H, W) float32 and labels (N,) int64 held as tensors."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        if images.dim() != 4 or images.shape[0] != labels.shape[0]:
            raise ValueError(f"images (N, C, H, W) and labels (N,) must agree, got "
                             f"{tuple(images.shape)} and {tuple(labels.shape)}")
        self.images = images.float().contiguous()
        self.labels = labels.long().contiguous()

    def __len__(self) -> int:
        return self.labels.shape[0]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], int(self.labels[i])


class ImageFiles(Dataset):
    """Lazy image files: each item is read, converted to RGB, cropped and resized.

    ``load(i, rng)`` gives uint8 pixels (3, S, S) (what the input pipeline moves, see
    ``harness.data.pipeline``): with ``augment``, a random resized crop and flip drawn from ``rng``
    (training) or a center crop (``rng`` None); without, the whole image resized. Items
    (``dataset[i]``) are ``load(i, None)`` normalised to [-1, 1].
    """

    def __init__(self, samples: list[tuple[Path, int]], image_size: int, augment: bool = False,
                 classes: list[str] | None = None):
        self.samples, self.image_size, self.augment = samples, image_size, augment
        self.classes = classes or []
        self.labels = torch.tensor([label for _, label in samples], dtype=torch.long)

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, i: int, rng: np.random.Generator | None = None) -> np.ndarray:
        from PIL import Image

        from harness.data.pipeline import resize_crop

        with Image.open(self.samples[i][0]) as img:
            return resize_crop(img, self.image_size, rng, self.augment)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        pixels = torch.from_numpy(self.load(i)).float() / 255.0
        return _normalize(pixels), self.samples[i][1]


@dataclass
class Datasets:
    train: Dataset
    test: Dataset
    num_classes: int
    in_chans: int = 3


def _normalize(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] pixels -> [-1, 1], the same for every real dataset."""
    return (x - 0.5) / 0.5


def capped(n: int, cap: int | None, seed: int, salt: int) -> np.ndarray:
    """Sorted indices of a seeded random subset of ``cap`` of ``n`` items (all if no cap)."""
    if cap is None or cap >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng([seed, salt]).permutation(n)[:cap])


# --- synthetic ---------------------------------------------------------------------------------
def synthetic_knobs(cfg: DataConfig) -> dict[str, float | int]:
    """``data.synthetic`` merged over the defaults; unknown or impossible knobs are errors."""
    unknown = sorted(set(cfg.synthetic) - set(SYNTHETIC_DEFAULTS))
    if unknown:
        raise HarnessError(f"data.synthetic.{unknown[0]}: unknown knob; allowed: "
                           + ", ".join(f"{k} (default {v})" for k, v in SYNTHETIC_DEFAULTS.items()))
    knobs = {**SYNTHETIC_DEFAULTS, **cfg.synthetic}
    for key in ("patch", "contexts", "prototypes_per_class", "signal_tokens", "distractors"):
        if int(knobs[key]) != knobs[key] or knobs[key] < 1:
            raise HarnessError(f"data.synthetic.{key}: must be a positive integer, "
                               f"got {knobs[key]!r}")
        knobs[key] = int(knobs[key])
    for key in ("noise", "tint"):
        if knobs[key] < 0:
            raise HarnessError(f"data.synthetic.{key}: must be >= 0, got {knobs[key]!r}")
    if cfg.image_size % knobs["patch"]:
        raise HarnessError(f"data.synthetic.patch: {knobs['patch']} must divide "
                           f"data.image_size {cfg.image_size}")
    tiles = (cfg.image_size // knobs["patch"]) ** 2
    if knobs["signal_tokens"] > tiles:
        raise HarnessError(f"data.synthetic.signal_tokens: {knobs['signal_tokens']} exceeds the "
                           f"{tiles} tiles of a {cfg.image_size} px image with patch "
                           f"{knobs['patch']}")
    return knobs


def synthetic_arrays(cfg: DataConfig, split: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images (n, 3, S, S) float32 and labels (n,) int64 of the synthetic task."""
    k = synthetic_knobs(cfg)
    classes = cfg.num_classes or SYNTHETIC_CLASSES
    size, patch = cfg.image_size, k["patch"]
    g = size // patch
    per = k["prototypes_per_class"]
    num_protos = per * classes
    # The task itself (shared by train and test): tiles, tints, vote tables.
    rng = np.random.default_rng([cfg.seed, 0])
    protos = rng.standard_normal((num_protos, 3, patch, patch), dtype=np.float32)
    distract = rng.standard_normal((k["distractors"], 3, patch, patch), dtype=np.float32)
    tints = rng.standard_normal((k["contexts"], 3), dtype=np.float32) * np.float32(k["tint"])
    # voters[c, y] = the ``per`` prototypes that vote for class y in context c.
    voters = np.stack([rng.permutation(num_protos).reshape(classes, per)
                       for _ in range(k["contexts"])])
    salt = {"train": 1, "test": 2}[split]
    images = np.empty((n, 3, size, size), dtype=np.float32)
    labels = np.empty(n, dtype=np.int64)
    for chunk, start in enumerate(range(0, n, _CHUNK)):
        m = _CHUNK  # whole chunks, so the first images do not depend on n
        r = np.random.default_rng([cfg.seed, salt, chunk])
        y = r.integers(0, classes, m)
        ctx = r.integers(0, k["contexts"], m)
        proto = voters[ctx, y, r.integers(0, per, m)]
        tiles = distract[r.integers(0, k["distractors"], (m, g * g))]  # (m, T, 3, p, p)
        where = np.argsort(r.random((m, g * g)), axis=1)[:, : k["signal_tokens"]]
        tiles[np.arange(m)[:, None], where] = protos[proto][:, None]
        tiles += tints[ctx][:, None, :, None, None]
        tiles += np.float32(k["noise"]) * r.standard_normal(tiles.shape, dtype=np.float32)
        keep = min(m, n - start)
        images[start:start + keep] = (tiles[:keep].reshape(keep, g, g, 3, patch, patch)
                                      .transpose(0, 3, 1, 4, 2, 5).reshape(keep, 3, size, size))
        labels[start:start + keep] = y[:keep]
    return images, labels


def _synthetic(cfg: DataConfig) -> Datasets:
    sets = {}
    for split, n in (("train", cfg.train_size or SYNTHETIC_TRAIN),
                     ("test", cfg.test_size or SYNTHETIC_TEST)):
        x, y = synthetic_arrays(cfg, split, n)
        sets[split] = InMemoryImages(torch.from_numpy(x), torch.from_numpy(y))
    return Datasets(sets["train"], sets["test"], cfg.num_classes or SYNTHETIC_CLASSES)


# --- digits ------------------------------------------------------------------------------------
def _digits(cfg: DataConfig) -> Datasets:
    """scikit-learn's 1,797 8×8 digits: 25% held out by a split seeded with ``cfg.seed``."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.from_numpy(digits.images.astype(np.float32) / 16.0).unsqueeze(1)  # (N, 1, 8, 8)
    x = torch.nn.functional.interpolate(x, size=(cfg.image_size,) * 2, mode="bilinear",
                                        align_corners=False)
    x = _normalize(x.clamp(0, 1)).expand(-1, 3, -1, -1)
    y = torch.from_numpy(digits.target.astype(np.int64))
    order = torch.from_numpy(np.random.default_rng([cfg.seed, 7]).permutation(len(y)))
    n_test = len(y) // 4
    test, train = order[:n_test], order[n_test:]
    train = train[capped(len(train), cfg.train_size, cfg.seed, 1)]
    test = test[capped(len(test), cfg.test_size, cfg.seed, 2)]
    return Datasets(InMemoryImages(x[train], y[train]), InMemoryImages(x[test], y[test]), 10)


# --- local folders -----------------------------------------------------------------------------
def data_root(cfg: DataConfig, layout: str) -> Path:
    if cfg.path is None:
        raise HarnessError(f"data.path: missing; {cfg.name} reads a local folder ({layout})")
    root = Path(cfg.path).expanduser()
    if not root.is_dir():
        raise HarnessError(f"data.path: {root} does not exist ({cfg.name} needs {layout})")
    return root


def imagefolder(cfg: DataConfig) -> Datasets:
    layout = "root/train/CLASS/*.jpg|png and root/val/CLASS/... (or root/test/CLASS/...)"
    root = data_root(cfg, layout)
    train_dir = root / "train"
    test_dir = next((root / d for d in ("val", "test") if (root / d).is_dir()), None)
    if not train_dir.is_dir() or test_dir is None:
        missing = "train" if not train_dir.is_dir() else "val (or test)"
        raise HarnessError(f"data.path: {root} has no {missing} folder (imagefolder needs "
                           f"{layout})")
    classes = sorted(d.name for d in train_dir.iterdir() if d.is_dir())
    if not classes:
        raise HarnessError(f"data.path: {train_dir} has no class folders (imagefolder needs "
                           f"{layout})")
    index = {name: i for i, name in enumerate(classes)}
    extra = sorted(d.name for d in test_dir.iterdir() if d.is_dir() and d.name not in index)
    if extra:
        raise HarnessError(f"data.path: {test_dir / extra[0]} is a class that {train_dir} "
                           f"does not have")

    def scan(folder: Path, cap: int | None, salt: int) -> list[tuple[Path, int]]:
        samples = [(f, index[d.name]) for d in sorted(folder.iterdir())
                   if d.is_dir() and d.name in index
                   for f in sorted(d.iterdir()) if f.suffix.lower() in IMAGE_EXTENSIONS]
        if not samples:
            raise HarnessError(f"data.path: no images ({', '.join(IMAGE_EXTENSIONS)}) under "
                               f"{folder}")
        return [samples[i] for i in capped(len(samples), cap, cfg.seed, salt)]

    augment = cfg.augment == "crop_flip"
    train = ImageFiles(scan(train_dir, cfg.train_size, 1), cfg.image_size, augment, classes)
    test = ImageFiles(scan(test_dir, cfg.test_size, 2), cfg.image_size, augment, classes)
    return Datasets(train, test, len(classes))


def _cifar10(cfg: DataConfig) -> Datasets:
    layout = "the python batches data_batch_1..5 and test_batch"
    root = data_root(cfg, layout)
    if not (root / "test_batch").is_file() and (root / "cifar-10-batches-py").is_dir():
        root = root / "cifar-10-batches-py"
    names = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
    sets = {}
    for split, cap, salt in (("train", cfg.train_size, 1), ("test", cfg.test_size, 2)):
        xs, ys = [], []
        for name in names[split]:
            file = root / name
            if not file.is_file():
                raise HarnessError(f"data.path: {file} does not exist (cifar10 needs {layout})")
            try:
                with open(file, "rb") as f:
                    batch = pickle.load(f, encoding="bytes")
                xs.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
                ys.append(np.asarray(batch[b"labels"], dtype=np.int64).reshape(-1))
            except (OSError, EOFError, pickle.UnpicklingError, KeyError, TypeError,
                    ValueError) as err:  # an empty file: EOFError
                raise HarnessError(f"data.path: {file} is not a CIFAR-10 python batch (a "
                                   f"pickled dict of data (N, 3072) uint8 and N labels; "
                                   f"{type(err).__name__}: {err})") from None
            if len(xs[-1]) != len(ys[-1]):
                raise HarnessError(f"data.path: {file} has {len(xs[-1])} images but "
                                   f"{len(ys[-1])} labels")
        x, y = np.concatenate(xs), np.concatenate(ys)
        if len(y) == 0:
            raise HarnessError(f"data.path: {', '.join(str(root / n) for n in names[split])}: "
                               f"the {split} set is empty; allowed: at least one image")
        keep = capped(len(y), cap, cfg.seed, salt)
        images = torch.from_numpy(x[keep]).float() / 255.0
        if cfg.image_size != 32:
            images = torch.nn.functional.interpolate(
                images, size=(cfg.image_size,) * 2, mode="bilinear", align_corners=False,
                antialias=cfg.image_size < 32).clamp(0, 1)
        sets[split] = InMemoryImages(_normalize(images), torch.from_numpy(y[keep]))
    return Datasets(sets["train"], sets["test"], 10)


# --- IDX files (MNIST, Fashion-MNIST, KMNIST) ------------------------------------------------
IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
_IDX_UBYTE = 0x08  # the IDX type code of unsigned bytes, the only one this family uses


def read_idx(path: Path, dims: int) -> np.ndarray:
    """An IDX file of unsigned bytes with ``dims`` dimensions (gzipped or not) as uint8."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as err:
        raise HarnessError(f"data.path: {path} is not a readable IDX file ({err})") from None
    if len(raw) < 4 + 4 * dims or raw[:2] != b"\0\0" or raw[2] != _IDX_UBYTE or raw[3] != dims:
        raise HarnessError(f"data.path: {path} is not an IDX file of unsigned bytes with {dims} "
                           f"dimension(s) (header {raw[:4].hex() or 'empty'}, expected "
                           f"0000080{dims})")
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims))
    body = raw[4 + 4 * dims:]
    size = math.prod(shape)  # Python integers: 3 dimensions of 2**32 - 1 overflow int64
    if len(body) != size:
        why = "truncated file?" if len(body) < size else "extra bytes at the end"
        raise HarnessError(f"data.path: {path} holds {len(body)} bytes of data, its header "
                           f"{shape} says {size} ({why})")
    return np.frombuffer(body, dtype=np.uint8).reshape(shape)


def _idx_file(root: Path, stem: str, layout: str) -> Path:
    for name in (stem + ".gz", stem):
        if (root / name).is_file():
            return root / name
    raise HarnessError(f"data.path: {root} has no {stem}[.gz] (mnist needs {layout})")


def _mnist(cfg: DataConfig) -> Datasets:
    """The IDX family: 28 x 28 grey images, 60k train / 10k test, resized to image_size."""
    layout = ("the IDX files " + ", ".join(f"{s}[.gz]" for pair in IDX_FILES.values()
                                             for s in pair))
    root = data_root(cfg, layout)
    sets, classes = {}, 0
    for split, cap, salt in (("train", cfg.train_size, 1), ("test", cfg.test_size, 2)):
        images_file, labels_file = (_idx_file(root, s, layout) for s in IDX_FILES[split])
        x, y = read_idx(images_file, 3), read_idx(labels_file, 1)
        if len(x) != len(y):
            raise HarnessError(f"data.path: {images_file} has {len(x)} images but "
                               f"{labels_file} has {len(y)} labels")
        if len(y) == 0:
            raise HarnessError(f"data.path: {images_file}, {labels_file}: the {split} set is "
                               f"empty; allowed: at least one image")
        if 0 in x.shape[1:]:
            raise HarnessError(f"data.path: {images_file}: images of {x.shape[1]} x "
                               f"{x.shape[2]} pixels; allowed: at least 1 x 1")
        keep = capped(len(y), cap, cfg.seed, salt)
        images = torch.from_numpy(x[keep].astype(np.float32) / 255.0).unsqueeze(1)
        if images.shape[-1] != cfg.image_size or images.shape[-2] != cfg.image_size:
            images = torch.nn.functional.interpolate(
                images, size=(cfg.image_size,) * 2, mode="bilinear", align_corners=False,
                antialias=cfg.image_size < x.shape[-1]).clamp(0, 1)
        sets[split] = InMemoryImages(_normalize(images).expand(-1, 3, -1, -1),
                                     torch.from_numpy(y[keep].astype(np.int64)))
        classes = max(classes, int(y.max()) + 1)
    return Datasets(sets["train"], sets["test"], classes)


LOADERS = {"synthetic": _synthetic, "digits": _digits, "imagefolder": imagefolder,
           "cifar10": _cifar10, "mnist": _mnist}
"""The in-memory and image-folder loaders by ``DataConfig.name`` (prepared shards: their own
module)."""

def check_not_empty(data: Datasets, cfg: DataConfig) -> Datasets:
    """``data``, or HarnessError when its training or test set is empty (every loader refuses
    its own empty files by name; this is the last word for any loader)."""
    for split, dataset in (("train", data.train), ("test", data.test)):
        if len(dataset) == 0:
            raise HarnessError(f"data.path: {cfg.path or cfg.name}: the {split} set is empty; "
                               f"allowed: at least one image")
    return data


__all__ = ["IDX_FILES", "LOADERS", "SYNTHETIC_DEFAULTS", "Datasets", "ImageFiles",
           "InMemoryImages", "imagefolder", "read_idx", "synthetic_arrays", "synthetic_knobs"]
