"""The input pipeline: crops, on-device resize, worker processes, prepared shards, bench data."""

import json

import numpy as np
import pytest
import torch
from helpers import cli
from PIL import Image

from harness.data import load_data
from harness.data.pipeline import (
    CROP_RATIO,
    CROP_SCALE,
    Loader,
    crop_box,
    crop_on_device,
    training_plan,
)
from harness.data.prepared import MANIFEST, prepare, read_manifest, square, verify
from harness.errors import HarnessError
from harness.spec.config import DataConfig, LoaderConfig


def make_folder(root, per_class=6, classes=("ant", "bee", "cat"), size=(40, 30)):
    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("val", 2)):
        for c in classes:
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / c / f"{i}.{'png' if i % 2 else 'jpg'}")
    return root


# --- crops -------------------------------------------------------------------------------------
def test_crop_boxes():
    assert crop_box(40, 30, None, augment=False) == (0, 0, 40, 30)
    left, top, right, bottom = crop_box(40, 30, None, augment=True)  # eval: center 87.5%
    assert right - left == bottom - top == pytest.approx(0.875 * 30)
    assert (left + right) / 2 == 20 and (top + bottom) / 2 == 15
    rng = np.random.default_rng(0)
    for _ in range(200):
        left, top, right, bottom = crop_box(40, 30, rng, augment=True)
        w, h = right - left, bottom - top
        assert 0 <= left < right <= 40 and 0 <= top < bottom <= 30
        if (w, h) != (40, 30):  # not the fallback
            assert CROP_SCALE[0] * 1200 * 0.8 <= w * h <= 1200
            assert CROP_RATIO[0] * 0.8 <= w / h <= CROP_RATIO[1] * 1.25


def test_crop_on_device_identity_flip_and_half():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    same = crop_on_device(x, torch.tensor([[0, 0, 8, 8, 0.0]] * 2), 8)
    torch.testing.assert_close(same, x)
    flipped = crop_on_device(x, torch.tensor([[0, 0, 8, 8, 1.0]] * 2), 8)
    torch.testing.assert_close(flipped, x.flip(-1))
    halves = torch.zeros(1, 1, 8, 8)
    halves[..., 4:] = 1.0  # left half 0, right half 1
    right = crop_on_device(halves, torch.tensor([[4, 0, 8, 8, 0.0]]), 4)
    torch.testing.assert_close(right, torch.ones(1, 1, 4, 4))
    down = crop_on_device(x[:, :, ::2, ::2].repeat_interleave(2, 2).repeat_interleave(2, 3),
                          torch.tensor([[0, 0, 8, 8, 0.0]] * 2), 4)
    torch.testing.assert_close(down, x[:, :, ::2, ::2])


# --- loader ------------------------------------------------------------------------------------
def batches(dataset, workers, augment_seed, steps=3, batch=5):
    loader = Loader(dataset, "cpu", LoaderConfig(workers=workers), augment_seed=augment_seed)
    gen = torch.Generator().manual_seed(1)
    loader.plan(training_plan(gen, len(dataset), batch, steps), first_step=7)
    try:
        out = [loader.get(torch.randint(len(dataset), (batch,), generator=gen))
               for _ in range(steps)]
        extra = loader.get(torch.tensor([0, 1]))  # unplanned: loaded here
    finally:
        loader.close()
    return out, extra


@pytest.mark.parametrize("name", ["imagefolder", "prepared"])
def test_workers_give_the_same_augmented_batches_as_the_training_process(tmp_path, name):
    make_folder(tmp_path / "src")
    path = tmp_path / "src"
    if name == "prepared":
        prepare(path, tmp_path / "prep", 24, shard_size=4, workers=1, log=lambda _: None)
        path = tmp_path / "prep"
    data = load_data(DataConfig(name=name, path=str(path), image_size=16, augment="crop_flip"))
    here, extra_here = batches(data.train, 0, augment_seed=5)
    there, extra_there = batches(data.train, 2, augment_seed=5)
    for (x0, y0), (x2, y2) in zip(here, there, strict=True):
        assert x0.shape == (5, 3, 16, 16) and x0.dtype == torch.float32
        assert -1 <= x0.min() and x0.max() <= 1
        torch.testing.assert_close(x0, x2)
        assert torch.equal(y0, y2)
    torch.testing.assert_close(extra_here[0], extra_there[0])
    other, _ = batches(data.train, 0, augment_seed=6)  # another seed: other crops
    assert not torch.allclose(here[0][0], other[0][0])
    plain, _ = batches(data.train, 0, augment_seed=None)  # no augmentation: the eval crop
    x, label = data.train[int(torch.randint(len(data.train), (5,),
                                            generator=torch.Generator().manual_seed(1))[0])]
    torch.testing.assert_close(plain[0][0][0], x, atol=1e-5, rtol=0)


def test_augment_is_refused_for_in_memory_sets():
    with pytest.raises(HarnessError, match=r"^data.augment: crop_flip applies to imagefolder"):
        load_data(DataConfig(augment="crop_flip", train_size=10, test_size=10))


def test_loader_settings_stay_outside_the_run_id():
    from harness.spec.study import RunSpec

    plain = RunSpec(study="s", model="vit-s/16")
    workers = RunSpec(study="s", model="vit-s/16", data=DataConfig(loader=LoaderConfig(workers=8)))
    augmented = RunSpec(study="s", model="vit-s/16", data=DataConfig(augment="crop_flip"))
    assert plain.run_id == workers.run_id != augmented.run_id
    assert "augment" not in plain.canonical_json() and "loader" not in plain.canonical_json()


# --- prepared shards ---------------------------------------------------------------------------
def test_prepare_writes_shards_and_a_manifest(tmp_path):
    make_folder(tmp_path / "src", per_class=5)
    manifest = prepare(tmp_path / "src", tmp_path / "p", 20, shard_size=4, workers=2,
                       log=lambda _: None)
    assert manifest["classes"] == ["ant", "bee", "cat"] and manifest["resolution"] == 20
    train = manifest["splits"]["train"]
    assert train["count"] == 15 and train["class_counts"] == [5, 5, 5]
    assert [s["count"] for s in train["shards"]] == [4, 4, 4, 3]
    assert manifest["splits"]["test"]["count"] == 6
    assert json.loads((tmp_path / "p" / MANIFEST).read_text()) == manifest
    shard = np.load(tmp_path / "p" / "train-00001.npy")
    assert shard.shape == (4, 20, 20, 3) and shard.dtype == np.uint8
    data = load_data(DataConfig(name="imagefolder", path=str(tmp_path / "src")))
    np.testing.assert_array_equal(shard[1], square(data.train.samples[5][0], 20))
    assert np.load(tmp_path / "p" / "train-labels.npy").tolist() == data.train.labels.tolist()
    # at the stored resolution and without augmentation, items are the stored squares
    prepared = load_data(DataConfig(name="prepared", path=str(tmp_path / "p"), image_size=20))
    x, y = prepared.train[5]
    torch.testing.assert_close(x, torch.from_numpy(shard[1]).permute(2, 0, 1).float() / 127.5
                               - 1)
    assert y == data.train.labels[5] and prepared.num_classes == 3
    assert verify(tmp_path / "p")["checksum"] == manifest["checksum"]


def test_prepared_errors(tmp_path):
    make_folder(tmp_path / "src", per_class=3)
    root = tmp_path / "p"
    prepare(tmp_path / "src", root, 12, shard_size=4, workers=1, log=lambda _: None)
    with pytest.raises(HarnessError, match="exceeds the resolution 12"):
        load_data(DataConfig(name="prepared", path=str(root), image_size=16))
    with pytest.raises(HarnessError, match="exists; choose an empty folder"):
        prepare(tmp_path / "src", root, 12, workers=1)
    shard = root / "train-00000.npy"
    array = np.load(shard)
    array[0, 0, 0, 0] ^= 1
    np.save(shard, array)
    read_manifest(root)  # same shapes: the cheap check passes
    with pytest.raises(HarnessError, match="train-00000.npy does not match its checksum"):
        verify(root)
    np.save(shard, array[:2])
    with pytest.raises(HarnessError, match=r"holds \(2, 12, 12, 3\), the manifest says \(4,"):
        load_data(DataConfig(name="prepared", path=str(root), image_size=12))
    shard.unlink()
    with pytest.raises(HarnessError, match="is missing"):
        read_manifest(root)
    with pytest.raises(HarnessError, match="has no manifest.json"):
        load_data(DataConfig(name="prepared", path=str(tmp_path / "src"), image_size=12))


def test_data_prepare_and_verify_commands(tmp_path):
    make_folder(tmp_path / "src", per_class=2)
    out = cli("data", "prepare", tmp_path / "src", tmp_path / "p", "--resolution", 16,
              "--workers", 1).stdout
    assert "6 train, 6 test images, 3 classes, 16 px" in out
    assert "ok (2 shards" in cli("data", "verify", tmp_path / "p").stdout
    bad = cli("data", "verify", tmp_path / "src", check=False)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0
    assert "has no manifest.json" in bad.stderr


@pytest.mark.slow
def test_bench_data_reports_each_source(tmp_path):
    out = tmp_path / "bench.json"
    proc = cli("bench", "data", "--images", 24, "--image-size", 32, "--resolution", 40,
               "--workers", 1, "--batch", 8, "--batches", 2, "--repeats", 1, "--out", out)
    result = json.loads(out.read_text())
    assert {r["source"] for r in result["rows"]} == {"jpeg", "prepared", "in-memory"}
    assert all(r["images_per_s"] > 0 and r["images_per_cpu_s"] > 0 for r in result["rows"])
    assert "prepared shards" in proc.stdout and "JPEG" in proc.stdout


# --- hostile manifests -------------------------------------------------------------------------
def _edit(root, change) -> None:
    """Change the manifest and give it a matching checksum, as someone who means it would."""
    from harness.data.prepared import _checksum

    manifest = json.loads((root / MANIFEST).read_text())
    change(manifest)
    manifest["checksum"] = _checksum(manifest)
    (root / MANIFEST).write_text(json.dumps(manifest))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    folder = tmp_path_factory.mktemp("prepared")
    make_folder(folder / "src", per_class=3)
    prepare(folder / "src", folder / "p", 12, shard_size=4, workers=1, log=lambda _: None)
    return folder / "p"


def _copy(prepared, tmp_path):
    import shutil

    shutil.copytree(prepared, tmp_path / "p")
    return tmp_path / "p"


def _shard(i=0, split="train"):
    return lambda m: m["splits"][split]["shards"][i]


@pytest.mark.parametrize("change, says", [
    (lambda m: _shard()(m).update(file="../outside.npy"),
     "splits.train.shards[0].file: '../outside.npy'; allowed: the plain name of a file in"),
    (lambda m: _shard()(m).update(file="/etc/passwd"), "splits.train.shards[0].file: '/etc"),
    (lambda m: m["splits"]["test"]["labels"].update(file="sub/labels.npy"),
     "splits.test.labels.file: 'sub/labels.npy'"),
    (lambda m: m["splits"]["train"].update(shard_size=0),
     "splits.train.shard_size: 0; allowed: a positive integer"),
    (lambda m: m["splits"]["train"].update(shard_size=5),
     "splits.train.shards[0].count: 4; allowed: the shard size 5"),
    (lambda m: m["splits"]["train"].pop("shard_size"), "splits.train.shard_size: None"),
    (lambda m: m["splits"].pop("test"), "splits.test: None; allowed: an object"),
    (lambda m: m.update(resolution="12"), "resolution: '12'; allowed: a positive integer"),
    (lambda m: m.update(classes=[]), "classes: []; allowed: a non-empty list"),
    (lambda m: m["splits"]["test"].update(count=0, shards=[]),
     "splits.test.count: 0; allowed: a positive integer (an empty test set cannot be used)"),
    (lambda m: m["splits"]["test"].update(count=5),
     "splits.test.count: 5; allowed: the sum of its shards' counts, 6"),
    (lambda m: _shard()(m).update(sha256="x"), "splits.train.shards[0].sha256: 'x'"),
])
def test_a_manifest_is_validated_before_any_file_is_read(prepared, tmp_path, change, says):
    root = _copy(prepared, tmp_path)
    (tmp_path / "outside.npy").write_bytes((root / "train-00000.npy").read_bytes())
    _edit(root, change)
    for check in (read_manifest, verify,
                  lambda r: load_data(DataConfig(name="prepared", path=str(r), image_size=12))):
        with pytest.raises(HarnessError) as err:
            check(root)
        assert str(err.value).startswith(f"data.path: {root / MANIFEST}: "), err.value
        assert says in str(err.value)


def test_a_symlink_out_of_the_folder_is_refused(prepared, tmp_path):
    root = _copy(prepared, tmp_path)
    outside = tmp_path / "outside.npy"
    (root / "train-00000.npy").rename(outside)
    (root / "train-00000.npy").symlink_to(outside)
    with pytest.raises(HarnessError, match=r"splits.train.shards\[0\].file: 'train-00000.npy'; "
                                           r"allowed: a file in .* \(this one is a link to"):
        verify(root)
    (root / "train-00000.npy").unlink()
    (root / "train-00000.npy").symlink_to(root / "train-00001.npy")  # inside: the checksum
    with pytest.raises(HarnessError, match="train-00000.npy does not match its checksum"):
        verify(root)


def test_every_field_is_under_the_checksum(prepared, tmp_path):
    root = _copy(prepared, tmp_path)
    manifest = json.loads((root / MANIFEST).read_text())
    assert manifest["version"] == 2 and verify(root)["checksum"] == manifest["checksum"]
    manifest["splits"]["train"]["class_counts"] = [9, 9, 9]  # not checksummed by version 1
    (root / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(HarnessError, match="its checksum field does not match its entries"):
        verify(root)


@pytest.mark.parametrize("content", [b"", b"\x93NUMPY garbage"])
def test_an_empty_or_broken_npy_is_one_clear_line(prepared, tmp_path, content):
    root = _copy(prepared, tmp_path)
    (root / "test-labels.npy").write_bytes(content)
    with pytest.raises(HarnessError, match=f"^data.path: {root / 'test-labels.npy'} is not a "
                                           "numpy array file"):
        load_data(DataConfig(name="prepared", path=str(root), image_size=12))


def test_prepared_labels_outside_the_classes_are_refused(prepared, tmp_path):
    root = _copy(prepared, tmp_path)
    labels = np.load(root / "train-labels.npy")
    labels[0] = 7
    np.save(root / "train-labels.npy", labels)
    with pytest.raises(HarnessError, match=r"train-labels.npy: labels range 0..7; allowed: 0..2"):
        load_data(DataConfig(name="prepared", path=str(root), image_size=12))


def test_data_verify_of_a_hostile_manifest_exits_2_with_one_line(prepared, tmp_path):
    root = _copy(prepared, tmp_path)
    (root / "test-00000.npy").write_bytes(b"")
    out = cli("data", "verify", root, check=False)
    assert out.returncode == 2 and out.stderr.strip().count("\n") == 0, out.stderr
    assert f"{root / 'test-00000.npy'} is not a numpy array file" in out.stderr


# --- no process left behind --------------------------------------------------------------------
def _descendants(pid: int) -> list[tuple[int, str | None]]:
    from harness.runtime.lifeline import children, process_start

    out = []
    for child in children(pid):
        out += [(child, process_start(child)), *_descendants(child)]
    return out


def _killed_leaves_nothing(argv: list, sig: int, started) -> None:
    """Start ``moe-harness ARGV``, wait until ``started(pid)`` (its worker processes are up),
    send ``sig``, and find every process it started gone within seconds."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from harness.runtime.lifeline import alive

    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", *map(str, argv)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not started(proc.pid):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the workers never started"
            time.sleep(0.2)
        time.sleep(1.0)
        workers = _descendants(proc.pid)
        assert workers and proc.poll() is None
        os.kill(proc.pid, sig)
        _, err = proc.communicate(timeout=60)
        if sig == signal.SIGINT:
            assert proc.returncode == 130 and "Traceback" not in err, err
        else:
            assert proc.returncode == -sig
        deadline = time.monotonic() + 30
        while any(alive(*w) for w in workers):
            assert time.monotonic() < deadline, [w for w in workers if alive(*w)]
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGKILL", "SIGINT"])
def test_data_prepare_killed_leaves_no_worker_behind(tmp_path, sig):
    """A decoding worker blocked on its input (a FIFO named like an image), others waiting
    for work: killed or interrupted, the command takes every worker with it."""
    import os
    import signal

    src = make_folder(tmp_path / "src", per_class=2)
    os.mkfifo(src / "train" / "ant" / "zz-blocks.jpg")
    _killed_leaves_nothing(["data", "prepare", src, tmp_path / "out", "--workers", "2"],
                           getattr(signal, sig), lambda pid: len(_descendants(pid)) >= 2)


@pytest.mark.slow
@pytest.mark.parametrize("sig", ["SIGTERM", "SIGKILL"])
def test_bench_all_to_all_killed_leaves_no_rank_behind(tmp_path, sig):
    import signal

    def ranks_up(pid):
        return sum(1 for child, _ in _descendants(pid)
                   if "spawn_main" in open(f"/proc/{child}/cmdline").read()) >= 2

    _killed_leaves_nothing(["bench", "all-to-all", "--ranks", "2", "--repeats", "1000000",
                            "--dim", "16", "--tokens", "4", "--experts", "2"],
                           getattr(signal, sig), ranks_up)
