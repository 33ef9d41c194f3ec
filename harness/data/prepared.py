"""Prepared shards: an image folder decoded once into fixed-size uint8 arrays.

``moe-harness data prepare SRC OUT --resolution R`` reads an imagefolder (``SRC/train/CLASS/``
and ``SRC/val|test/CLASS/``), resizes each image's shorter side to ``R`` and takes the
centered ``R x R`` square (aspect kept; the training crop is drawn from that square later),
and writes::

    OUT/manifest.json            format, resolution, classes, per split: count, shard size,
                                 class counts, shards (file, count, sha256), labels file and
                                 its sha256, and one checksum over all of them
    OUT/train-00000.npy ...      uint8 (n, R, R, 3), ``shard_size`` images each but the last
    OUT/train-labels.npy         int64 (count,)
    OUT/test-00000.npy ...       (from SRC/val or SRC/test)

``data: {name: prepared, path: OUT, image_size: S}`` reads them through memory maps: no
decoding at training time: a worker copies the stored squares, and the crop, flip and resize
to ``S`` happen on the device for the whole batch (``harness.data.pipeline.crop_on_device``; none
when ``S == R`` without augmentation). Loading checks the manifest against the files
(shapes and sizes, cheap); ``moe-harness data verify OUT`` recomputes every checksum.

A manifest is input like any other: every field a run relies on is checked (types, positive
sizes, non-empty splits, counts that add up, shard and label files that are plain names of
files in the folder, no symlink leading out of it) before a file is opened, each problem one
line naming the file and field. Version 2 (written since) checksums every field of the
manifest; version 1 checksums the files, the resolution and the classes.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from harness.errors import HarnessError, shorten
from harness.runtime.lifeline import children, kill_tree, tether, this_process
from harness.spec.config import DataConfig

FORMAT = "moe-harness-prepared"
VERSION = 2  # 2: the checksum covers every field of the manifest; 1 is still read
VERSIONS = (1, 2)
MANIFEST = "manifest.json"
SPLITS = ("train", "test")


# --- writing -------------------------------------------------------------------------------------
def square(path: Path, resolution: int) -> np.ndarray:
    """One image file -> uint8 (R, R, 3): shorter side to R, centered square."""
    from PIL import Image

    with Image.open(path) as img:
        if img.format == "JPEG":  # decode at a reduced scale that still covers R
            img.draft("RGB", (resolution, resolution))
        w, h = img.size
        side = min(w, h)
        box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
        out = img.convert("RGB").resize((resolution, resolution), Image.Resampling.BILINEAR,
                                        box=box)
        return np.asarray(out, dtype=np.uint8)


def _square_all(job: tuple[list[Path], int]) -> np.ndarray:
    paths, resolution = job
    return np.stack([square(p, resolution) for p in paths])


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def prepare(src: Path, out: Path, resolution: int, *, shard_size: int = 1024,
            workers: int | None = None, log=print) -> dict:
    """Write ``src`` (an imagefolder) as prepared shards under ``out``; return the manifest."""
    from harness.data.datasets import imagefolder

    if resolution < 1 or shard_size < 1:
        raise HarnessError(f"data prepare: resolution and shard size must be positive, got "
                           f"{resolution} and {shard_size}")
    data = imagefolder(DataConfig(name="imagefolder", path=str(src), image_size=resolution))
    out.mkdir(parents=True, exist_ok=True)
    if (out / MANIFEST).exists():
        raise HarnessError(f"data prepare: {out / MANIFEST} exists; choose an empty folder")
    workers = workers or len(os.sched_getaffinity(0))
    manifest = {"format": FORMAT, "version": VERSION, "resolution": resolution,
                "classes": data.train.classes, "source": str(src), "splits": {}}
    # the decoding workers die with this process, even killed (SIGTERM, SIGKILL): else they
    # would wait for work for ever; interrupted (Ctrl-C), it ends them before it stops
    before = set(children(os.getpid()))
    pool = ProcessPoolExecutor(workers, initializer=tether, initargs=(this_process(),))
    try:
        for split, files in zip(SPLITS, (data.train, data.test), strict=True):
            manifest["splits"][split] = _write_split(
                pool, split, files, out, (resolution, shard_size, workers),
                len(data.train.classes), log)
    except BaseException:
        for pid in set(children(os.getpid())) - before:
            kill_tree(pid)
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()
    manifest["checksum"] = _checksum(manifest)
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def _write_split(pool, split: str, files, out: Path, sizes: tuple[int, int, int],
                 num_classes: int, log) -> dict:
    """Decode one split's images into shards with the pool's workers (``sizes``: resolution,
    shard size, workers); its manifest entry."""
    resolution, shard_size, workers = sizes
    paths = [p for p, _ in files.samples]
    labels = files.labels.numpy().astype(np.int64)
    shards = []
    starts = range(0, len(paths), shard_size)
    for n, start in enumerate(starts):
        name = f"{split}-{n:05d}.npy"
        chunk = paths[start:start + shard_size]
        step = max(1, -(-len(chunk) // (4 * workers)))  # a few jobs per worker
        jobs = [(chunk[i:i + step], resolution) for i in range(0, len(chunk), step)]
        array = np.concatenate(list(pool.map(_square_all, jobs)))
        np.save(out / name, array)
        shards.append({"file": name, "count": len(chunk), "sha256": sha256(out / name)})
        log(f"{split}: shard {n + 1}/{len(starts)} ({start + len(chunk)}/{len(paths)} "
            "images)")
    np.save(out / f"{split}-labels.npy", labels)
    return {"count": len(paths), "shard_size": shard_size, "shards": shards,
            "class_counts": np.bincount(labels, minlength=num_classes).tolist(),
            "labels": {"file": f"{split}-labels.npy",
                       "sha256": sha256(out / f"{split}-labels.npy")}}


def _checksum(manifest: dict) -> str:
    """Version 2: one SHA-256 over the whole manifest but its checksum (every file's checksum,
    name and count, the shard sizes, the resolution, the classes, ...). Version 1: over every
    file's checksum, the resolution and the classes."""
    if manifest.get("version") == 1:
        parts = [str(manifest["resolution"]), *manifest["classes"]]
        for split in SPLITS:
            info = manifest["splits"][split]
            parts += [s["sha256"] for s in info["shards"]] + [info["labels"]["sha256"]]
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()
    fields = {k: v for k, v in manifest.items() if k != "checksum"}
    text = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


# --- reading -------------------------------------------------------------------------------------
def read_manifest(root: Path) -> dict:
    """The manifest of ``root``, validated (``check_manifest``) and checked against the files
    (shapes and types; no checksums)."""
    path = root / MANIFEST
    if not path.is_file():
        raise HarnessError(f"data.path: {root} has no {MANIFEST} (prepared needs the output of "
                           "moe-harness data prepare)")
    try:
        manifest = json.loads(path.read_text())
        ok = manifest.get("format") == FORMAT and manifest.get("version") in VERSIONS
    except (OSError, ValueError, AttributeError):  # UnicodeDecodeError, JSONDecodeError
        ok = False
    if not ok:
        raise HarnessError(f"data.path: {path} is not a {FORMAT} manifest of version "
                           f"{' or '.join(map(str, VERSIONS))}")
    check_manifest(manifest, root)
    res = manifest["resolution"]
    for split in SPLITS:
        info = manifest["splits"][split]
        for shard in info["shards"]:
            shape, dtype = _npy_shape(root / shard["file"])
            if shape != (shard["count"], res, res, 3):
                raise HarnessError(f"data.path: {root / shard['file']} holds {shape}, the "
                                   f"manifest says ({shard['count']}, {res}, {res}, 3)")
            if dtype != np.uint8:
                raise HarnessError(f"data.path: {root / shard['file']} holds {dtype} pixels; "
                                   f"allowed: uint8")
        shape, dtype = _npy_shape(root / info["labels"]["file"])
        if shape != (info["count"],) or dtype.kind not in "iu":
            raise HarnessError(f"data.path: {root / info['labels']['file']} does not hold "
                               f"{info['count']} integer labels, as the manifest says (it "
                               f"holds {dtype} {shape})")
    return manifest


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def check_manifest(manifest: dict, root: Path) -> None:
    """Every field a run relies on, or HarnessError naming the manifest and the field."""
    where = root / MANIFEST

    def bad(field: str, value, allowed: str) -> HarnessError:
        return HarnessError(f"data.path: {where}: {field}: {shorten(value, 60)}; allowed: "
                            f"{allowed}")

    if not _positive_int(manifest.get("resolution")):
        raise bad("resolution", manifest.get("resolution"), "a positive integer")
    classes = manifest.get("classes")
    if not isinstance(classes, list) or not classes or not all(
            isinstance(c, str) for c in classes):
        raise bad("classes", classes, "a non-empty list of class names")
    splits = manifest.get("splits")
    if not isinstance(splits, dict):
        raise bad("splits", splits, f"an object with {' and '.join(SPLITS)}")
    for split in SPLITS:
        info = splits.get(split)
        if not isinstance(info, dict):
            raise bad(f"splits.{split}", info, "an object (count, shard_size, shards, labels)")
        for key in ("count", "shard_size"):
            if not _positive_int(info.get(key)):
                raise bad(f"splits.{split}.{key}", info.get(key),
                          f"a positive integer (an empty {split} set cannot be used)"
                          if key == "count" else "a positive integer")
        shards = info.get("shards")
        if not isinstance(shards, list) or not shards:
            raise bad(f"splits.{split}.shards", shards, "a non-empty list of shards")
        for i, shard in enumerate(shards):
            field = f"splits.{split}.shards[{i}]"
            if not isinstance(shard, dict):
                raise bad(field, shard, "an object (file, count, sha256)")
            _check_entry(shard, field, root, bad)
            full = i < len(shards) - 1
            if not _positive_int(shard.get("count")) or shard["count"] > info["shard_size"] or (
                    full and shard["count"] != info["shard_size"]):
                raise bad(f"{field}.count", shard.get("count"),
                          f"{'' if full else 'at most '}the shard size {info['shard_size']}")
        total = sum(shard["count"] for shard in shards)
        if total != info["count"]:
            raise bad(f"splits.{split}.count", info["count"],
                      f"the sum of its shards' counts, {total}")
        labels = info.get("labels")
        if not isinstance(labels, dict):
            raise bad(f"splits.{split}.labels", labels, "an object (file, sha256)")
        _check_entry(labels, f"splits.{split}.labels", root, bad)


def _check_entry(entry: dict, field: str, root: Path, bad) -> None:
    """A file entry: a plain name of a file in ``root`` (no folder, no symlink leading out),
    and a SHA-256 in hex."""
    name = entry.get("file")
    plain = isinstance(name, str) and name not in ("", ".", "..") and not any(
        c in name for c in "/\\\0") and name == name.strip()
    if not plain:
        raise bad(f"{field}.file", name, f"the plain name of a file in {root}")
    if (root / name).exists() and (root / name).resolve().parent != root.resolve():
        raise bad(f"{field}.file", name,
                  f"a file in {root} (this one is a link to {(root / name).resolve()})")
    digest = entry.get("sha256")
    if not isinstance(digest, str) or len(digest) != 64 or any(
            c not in "0123456789abcdef" for c in digest):
        raise bad(f"{field}.sha256", digest, "a SHA-256 in hex (64 characters)")


def _npy_shape(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    if not path.is_file():
        raise HarnessError(f"data.path: {path} is missing (listed in the manifest)")
    try:
        array = np.load(path, mmap_mode="r")
        return tuple(array.shape), array.dtype
    except (ValueError, EOFError, OSError) as err:  # an empty file: EOFError
        raise HarnessError(f"data.path: {path} is not a numpy array file "
                           f"({type(err).__name__}{': ' + str(err) if str(err) else ''})"
                           ) from None


def verify(root: Path) -> dict:
    """Recompute every file's SHA-256 against the manifest; raise on the first mismatch."""
    manifest = read_manifest(root)
    if _checksum(manifest) != manifest.get("checksum"):
        raise HarnessError(f"data.path: {root / MANIFEST}: its checksum field does not match "
                           "its entries (changed by hand?)")
    for split in SPLITS:
        info = manifest["splits"][split]
        for entry in [*info["shards"], info["labels"]]:
            try:
                digest = sha256(root / entry["file"])
            except OSError as err:
                raise HarnessError(f"data.path: {root / entry['file']} cannot be read "
                                   f"({err.strerror or err})") from None
            if digest != entry["sha256"]:
                raise HarnessError(f"data.path: {root / entry['file']} does not match its "
                                   "checksum in the manifest (changed or corrupt)")
    return manifest


class Shards(Dataset):
    """One split of prepared shards; ``load(i, rng)`` -> uint8 (3, S, S) like ``ImageFiles``."""

    def __init__(self, root: Path, info: dict, resolution: int, image_size: int,
                 augment: bool, keep: np.ndarray, num_classes: int):
        self.root, self.resolution, self.image_size = root, resolution, image_size
        self.augment, self.keep = augment, keep
        self.files = [s["file"] for s in info["shards"]]
        self.shard_size = info["shard_size"]
        labels = np.load(root / info["labels"]["file"])
        if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
            raise HarnessError(f"data.path: {root / info['labels']['file']}: labels range "
                               f"{labels.min()}..{labels.max()}; allowed: 0..{num_classes - 1} "
                               f"(the manifest's {num_classes} classes)")
        self.labels = torch.from_numpy(labels[keep].astype(np.int64))
        self._maps: list | None = None

    def __len__(self) -> int:
        return len(self.keep)

    def __getstate__(self) -> dict:  # worker processes open their own memory maps
        return {**self.__dict__, "_maps": None}

    def _pixels(self, i: int) -> np.ndarray:
        if self._maps is None:
            self._maps = [np.load(self.root / f, mmap_mode="r") for f in self.files]
        j = int(self.keep[i])
        return self._maps[j // self.shard_size][j % self.shard_size]

    @property
    def device_crop(self) -> bool:
        """Crops (and any resize) are done on the device from the full stored square."""
        return self.augment or self.image_size != self.resolution

    def load(self, i: int, rng: np.random.Generator | None = None) -> np.ndarray:
        """uint8 (3, R, R): the stored square (see ``box`` for the crop to take from it)."""
        return np.ascontiguousarray(self._pixels(i).transpose(2, 0, 1))

    def box(self, rng: np.random.Generator | None) -> list[float]:
        from harness.data.pipeline import device_box

        return device_box(self.resolution, rng, self.augment)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from harness.data.pipeline import to_device

        pixels = torch.from_numpy(self.load(i))[None]
        boxes = torch.tensor([self.box(None)]) if self.device_crop else None
        return to_device(pixels, torch.device("cpu"), boxes, self.image_size)[0], \
            int(self.labels[i])


def load_prepared(cfg: DataConfig):
    from harness.data.datasets import Datasets, capped, data_root

    root = data_root(cfg, "the output of moe-harness data prepare")
    manifest = read_manifest(root)
    res = manifest["resolution"]
    if cfg.image_size > res:
        raise HarnessError(f"data.image_size: {cfg.image_size} exceeds the resolution {res} "
                           f"that {root} was prepared at")
    sets = {}
    for split, cap, salt in (("train", cfg.train_size, 1), ("test", cfg.test_size, 2)):
        info = manifest["splits"][split]
        sets[split] = Shards(root, info, res, cfg.image_size, cfg.augment == "crop_flip",
                             capped(info["count"], cap, cfg.seed, salt),
                             len(manifest["classes"]))
    return Datasets(sets["train"], sets["test"], len(manifest["classes"]))


__all__ = ["Shards", "load_prepared", "prepare", "read_manifest", "square", "verify"]
