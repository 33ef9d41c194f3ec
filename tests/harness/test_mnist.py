"""The IDX family (MNIST, Fashion-MNIST, KMNIST): files the tests write, and the real
Fashion-MNIST from Debian's package."""

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import fashion_mnist_dir
from helpers import cli, in_memory

from harness.data import load_data
from harness.data.datasets import IDX_FILES, read_idx
from harness.errors import HarnessError
from harness.spec.config import DataConfig


def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(n).to_bytes(4, "big") for n in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx(root, n_train=12, n_test=5, gz=True, size=28):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", n_train), ("test", n_test)):
        x = rng.integers(0, 256, (n, size, size)).astype(np.uint8)
        y = np.arange(n) % 10
        images, labels = IDX_FILES[split]
        for stem, array in ((images, x), (labels, y)):
            raw = idx_bytes(array)
            if gz:
                (root / f"{stem}.gz").write_bytes(gzip.compress(raw))
            else:
                (root / stem).write_bytes(raw)
        arrays[split] = (x, y)
    return arrays


@pytest.mark.parametrize("gz", [True, False])
def test_idx_files_load_exactly(tmp_path, gz):
    arrays = write_idx(tmp_path, gz=gz)
    data = load_data(DataConfig(name="mnist", path=str(tmp_path), image_size=28))
    assert data.num_classes == 10 and in_memory(data)
    x, y = arrays["train"]
    assert data.train.images.shape == (12, 3, 28, 28)
    expected = torch.from_numpy(x.astype(np.float32) / 255.0 * 2 - 1)
    for c in range(3):  # grey copied to the three channels, [0, 255] -> [-1, 1]
        torch.testing.assert_close(data.train.images[:, c], expected)
    assert data.train.labels.tolist() == y.tolist()
    assert data.test.labels.tolist() == arrays["test"][1].tolist()


def test_idx_resize_and_caps(tmp_path):
    write_idx(tmp_path)
    data = load_data(DataConfig(name="mnist", path=str(tmp_path), image_size=16,
                                train_size=7, test_size=3))
    assert data.train.images.shape == (7, 3, 16, 16) and len(data.test) == 3
    assert data.train.images.min() >= -1 and data.train.images.max() <= 1


def test_idx_missing_path_and_files(tmp_path):
    with pytest.raises(HarnessError, match=r"^data.path: missing; mnist"):
        load_data(DataConfig(name="mnist"))
    with pytest.raises(HarnessError, match="does not exist"):
        load_data(DataConfig(name="mnist", path=str(tmp_path / "nope")))
    write_idx(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(HarnessError, match=r"has no t10k-labels-idx1-ubyte\[\.gz\]"):
        load_data(DataConfig(name="mnist", path=str(tmp_path)))


def test_idx_bad_files_are_one_clear_error(tmp_path):
    write_idx(tmp_path, gz=False)
    images = tmp_path / "train-images-idx3-ubyte"
    raw = images.read_bytes()
    images.write_bytes(raw[:-10])
    with pytest.raises(HarnessError, match="truncated"):
        load_data(DataConfig(name="mnist", path=str(tmp_path)))
    images.write_bytes(b"\x00\x00\x0d\x03" + raw[4:])  # float32 type code
    with pytest.raises(HarnessError, match="not an IDX file of unsigned bytes"):
        read_idx(images, 3)
    images.write_bytes(raw)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(11)))
    with pytest.raises(HarnessError, match="has 12 images but .* has 11 labels"):
        load_data(DataConfig(name="mnist", path=str(tmp_path)))
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"not gzip")  # .gz wins
    with pytest.raises(HarnessError, match="not a readable IDX file"):
        load_data(DataConfig(name="mnist", path=str(tmp_path)))


def test_idx_error_in_a_run_is_its_one_line_record_error(tmp_path):
    study = tmp_path / "s.yaml"
    study.write_text(f"name: s\ndata: {{name: mnist, path: {tmp_path / 'none'}}}\n"
                     "train: {steps: 2}\ngrid: {model: [vit-w32d2h2m64/4]}\n"
                     "executor: {name: debug}\n")
    proc = cli("run", study, "--results", tmp_path / "r", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stdout + proc.stderr
    (record,) = [json.loads(f.read_text()) for f in (tmp_path / "r/s/runs").glob("*.json")]
    assert record["status"] == "failed"
    assert record["error"].startswith(f"HarnessError: data.path: {tmp_path / 'none'} does "
                                      "not exist (mnist needs the IDX files")


def test_real_fashion_mnist():
    root = fashion_mnist_dir()
    data = load_data(DataConfig(name="mnist", path=str(root), image_size=28))
    assert len(data.train) == 60_000 and len(data.test) == 10_000 and data.num_classes == 10
    # Fashion-MNIST is balanced: 6,000 train and 1,000 test images per class
    assert torch.bincount(data.train.labels).tolist() == [6000] * 10
    assert torch.bincount(data.test.labels).tolist() == [1000] * 10
    assert data.train.images.min() == -1 and data.train.images.max() == 1


@pytest.mark.slow
def test_fashion_mnist_study_runs_end_to_end(tmp_path):
    """The shipped study, shrunk: real images through the CLI, records and a report."""
    root = fashion_mnist_dir()
    study = Path(__file__).resolve().parents[2] / "studies" / "fashion_mnist.yaml"
    shrink = ["train.steps=6", "train.eval_every=0", "train.checkpoint_every=0",
              "train.fewshot_shots=2", "data.train_size=600", "data.test_size=200",
              "measure.enabled=false", "grid.router=[dense, soft]", "grid.seed=[0]",
              "grid.slots_per_expert=[1]", f"data.path={root}"]
    args = [a for s in shrink for a in ("--set", s)]
    cli("run", study, *args, "--results", tmp_path, "--quiet")
    records = [json.loads(f.read_text()) for f in (tmp_path / "fashion-mnist/runs").glob("*.json")]
    assert sorted(r["router"] for r in records) == ["dense", "soft"]
    for r in records:
        assert r["status"] == "ok" and r["data"] == "mnist" and r["image_size"] == 28
        assert 0.0 <= r["test_accuracy"] <= 1.0
    cli("report", study, *args, "--results", tmp_path)
    html = (tmp_path / "fashion-mnist/report.html").read_text()
    assert len(html) > 10_000
    # the fitted-curves section: a curve where a router has 3+ distinct costs, else the note
    assert 'id="fits"' in html and ('id="fig-fit-' in html or 'id="fits-note"' in html)


@pytest.mark.parametrize("split", ["train", "test"])
def test_an_empty_idx_set_is_refused_naming_its_files(tmp_path, split):
    write_idx(tmp_path, gz=False, **{f"n_{split}": 0})
    images, labels = IDX_FILES[split]
    with pytest.raises(HarnessError) as err:
        load_data(DataConfig(name="mnist", path=str(tmp_path)))
    assert str(err.value) == (f"data.path: {tmp_path / images}, {tmp_path / labels}: the "
                              f"{split} set is empty; allowed: at least one image")


def test_idx_dimensions_that_overflow_int64_are_one_clear_line(tmp_path):
    """Three dimensions of 2**32 - 1: their product (about 2**96) is computed exactly."""
    path = tmp_path / "t10k-images-idx3-ubyte"
    big = (1 << 32) - 1
    for dims in ((big, big, big), (1 << 31, 1 << 31, 4), (big, 1, 1)):
        path.write_bytes(bytes([0, 0, 8, 3]) + b"".join(d.to_bytes(4, "big") for d in dims)
                         + bytes(16))
        with pytest.raises(HarnessError) as err:
            read_idx(path, 3)
        assert str(err.value) == (f"data.path: {path} holds 16 bytes of data, its header "
                                  f"{dims} says {dims[0] * dims[1] * dims[2]} (truncated file?)")
