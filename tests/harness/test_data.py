"""Datasets: the synthetic generator, digits, and local image folders / CIFAR-10 batches."""

import pickle

import numpy as np
import pytest
import torch
from helpers import in_memory
from PIL import Image

from harness.data import load_data
from harness.data.datasets import SYNTHETIC_DEFAULTS, InMemoryImages, synthetic_arrays
from harness.errors import HarnessError
from harness.spec.config import DataConfig

SMALL = dict(train_size=300, test_size=100)


# --- synthetic ---------------------------------------------------------------------------------
def test_synthetic_shapes_and_labels():
    data = load_data(DataConfig(num_classes=5, **SMALL))
    assert data.num_classes == 5 and data.in_chans == 3 and in_memory(data)
    assert data.train.images.shape == (300, 3, 16, 16)
    assert data.train.images.dtype == torch.float32
    assert data.test.labels.shape == (100,)
    assert set(data.train.labels.tolist()) == set(range(5))
    image, label = data.train[0]
    assert image.shape == (3, 16, 16) and isinstance(label, int)
    assert torch.isfinite(data.train.images).all()


def test_synthetic_is_deterministic_and_seeded():
    a = load_data(DataConfig(**SMALL))
    b = load_data(DataConfig(**SMALL))
    assert torch.equal(a.train.images, b.train.images)
    assert torch.equal(a.test.labels, b.test.labels)
    c = load_data(DataConfig(seed=1, **SMALL))
    assert not torch.equal(a.train.images, c.train.images)
    assert not torch.equal(a.train.images[:100], a.test.images)  # independent draws


def test_synthetic_prefix_does_not_depend_on_size():
    small, _ = synthetic_arrays(DataConfig(), "train", 50)
    large, _ = synthetic_arrays(DataConfig(), "train", 2100)  # crosses generation chunks
    np.testing.assert_array_equal(small, large[:50])


def test_synthetic_images_follow_the_vote_tables():
    """Without noise, each image shows its prototype on `signal_tokens` tiles plus its tint."""
    cfg = DataConfig(num_classes=4, synthetic={"noise": 0, "contexts": 1, "distractors": 1,
                                               "signal_tokens": 3}, **SMALL)
    x, y = synthetic_arrays(cfg, "train", 40)
    tiles = x.reshape(40, 3, 4, 4, 4, 4).transpose(0, 2, 4, 1, 3, 5).reshape(40, 16, -1)
    for image in tiles:
        distinct, counts = np.unique(image, axis=0, return_counts=True)
        assert sorted(counts.tolist()) == [3, 13]  # one prototype x3, one distractor x13
    # one context, 2 prototypes per class: at most 2 distinct signal tiles per class
    signal = {}
    for image, label in zip(tiles, y, strict=True):
        distinct, counts = np.unique(image, axis=0, return_counts=True)
        signal.setdefault(int(label), set()).add(distinct[counts == 3][0].tobytes())
    assert all(len(s) <= SYNTHETIC_DEFAULTS["prototypes_per_class"] for s in signal.values())


def test_unknown_synthetic_knob_names_it_and_lists_allowed():
    with pytest.raises(HarnessError) as err:
        load_data(DataConfig(synthetic={"nosie": 0.1}, **SMALL))
    msg = str(err.value)
    assert msg.startswith("data.synthetic.nosie: unknown knob; allowed:")
    assert all(knob in msg for knob in SYNTHETIC_DEFAULTS)


@pytest.mark.parametrize("knobs, field", [
    ({"patch": 3}, "data.synthetic.patch"),
    ({"contexts": 0}, "data.synthetic.contexts"),
    ({"signal_tokens": 17}, "data.synthetic.signal_tokens"),
    ({"noise": -1.0}, "data.synthetic.noise"),
    ({"distractors": 2.5}, "data.synthetic.distractors"),
])
def test_impossible_synthetic_knobs(knobs, field):
    with pytest.raises(HarnessError, match=field):
        load_data(DataConfig(synthetic=knobs, **SMALL))


# --- digits ------------------------------------------------------------------------------------
def test_digits_split_and_upsampling():
    data = load_data(DataConfig(name="digits", image_size=16))
    assert data.num_classes == 10
    assert len(data.train) + len(data.test) == 1797 and len(data.test) == 1797 // 4
    assert data.train.images.shape[1:] == (3, 16, 16)
    assert torch.equal(data.train.images[:, 0], data.train.images[:, 2])  # grey in 3 channels
    assert data.train.images.min() >= -1 and data.train.images.max() <= 1
    again = load_data(DataConfig(name="digits", image_size=16))
    assert torch.equal(data.test.labels, again.test.labels)
    other = load_data(DataConfig(name="digits", image_size=16, seed=3))
    assert not torch.equal(data.test.labels, other.test.labels)


def test_digits_caps():
    data = load_data(DataConfig(name="digits", image_size=8, train_size=100, test_size=20))
    assert len(data.train) == 100 and len(data.test) == 20
    assert data.train.images.shape[-1] == 8


# --- imagefolder -------------------------------------------------------------------------------
def make_folder(root, split, classes, per_class, size=(10, 7)):
    rng = np.random.default_rng(0)
    for c in classes:
        (root / split / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            ext = "png" if i % 2 else "jpg"
            Image.fromarray(pixels).save(root / split / c / f"{i}.{ext}")
    (root / split / classes[0] / "notes.txt").write_text("not an image")


def test_imagefolder_reads_lazily_and_resizes(tmp_path):
    make_folder(tmp_path, "train", ["cat", "dog", "eel"], 4)
    make_folder(tmp_path, "val", ["cat", "eel"], 2)
    Image.new("L", (5, 5), 255).save(tmp_path / "train" / "dog" / "grey.png")  # -> RGB
    data = load_data(DataConfig(name="imagefolder", path=str(tmp_path), image_size=8))
    assert data.num_classes == 3 and not in_memory(data)
    assert len(data.train) == 13 and len(data.test) == 4
    assert sorted(set(data.test.labels.tolist())) == [0, 2]  # cat, eel
    image, label = data.train[len(data.train) - 1]
    assert image.shape == (3, 8, 8) and image.dtype == torch.float32
    assert -1 <= image.min() <= image.max() <= 1
    grey = [i for i, (p, _) in enumerate(data.train.samples) if p.name == "grey.png"][0]
    assert torch.allclose(data.train[grey][0], torch.ones(3, 8, 8))


def test_imagefolder_test_folder_and_caps(tmp_path):
    make_folder(tmp_path, "train", ["a", "b"], 5)
    make_folder(tmp_path, "test", ["a", "b"], 3)
    data = load_data(DataConfig(name="imagefolder", path=str(tmp_path), train_size=4,
                                test_size=2))
    assert len(data.train) == 4 and len(data.test) == 2


def test_imagefolder_missing_path_is_one_clear_error(tmp_path):
    missing = tmp_path / "x" / "y"
    with pytest.raises(HarnessError) as err:
        load_data(DataConfig(name="imagefolder", path=str(missing)))
    assert str(err.value).startswith(
        f"data.path: {missing} does not exist (imagefolder needs root/train/CLASS/")
    with pytest.raises(HarnessError, match="data.path: missing"):
        load_data(DataConfig(name="imagefolder"))
    make_folder(tmp_path, "train", ["a"], 1)
    with pytest.raises(HarnessError, match="no val \\(or test\\) folder"):
        load_data(DataConfig(name="imagefolder", path=str(tmp_path)))
    make_folder(tmp_path, "val", ["zebra"], 1)
    with pytest.raises(HarnessError, match="zebra"):
        load_data(DataConfig(name="imagefolder", path=str(tmp_path)))


# --- cifar10 -----------------------------------------------------------------------------------
def make_cifar(root, per_batch=4):
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for j, name in enumerate(names):
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        data[0] = 255  # a white image: +1 everywhere after normalisation
        batch = {b"data": data, b"labels": [(j + i) % 10 for i in range(per_batch)],
                 b"batch_label": name.encode()}
        with open(root / name, "wb") as f:
            pickle.dump(batch, f)


def test_cifar10_batches(tmp_path):
    make_cifar(tmp_path)
    data = load_data(DataConfig(name="cifar10", path=str(tmp_path), image_size=16))
    assert data.num_classes == 10 and isinstance(data.train, InMemoryImages)
    assert data.train.images.shape == (20, 3, 16, 16) and len(data.test) == 4
    assert data.train.labels[:4].tolist() == [0, 1, 2, 3]
    assert data.test.labels.tolist() == [5, 6, 7, 8]
    assert torch.allclose(data.train.images[0], torch.ones(3, 16, 16))
    full = load_data(DataConfig(name="cifar10", path=str(tmp_path), image_size=32))
    raw = pickle.load(open(tmp_path / "data_batch_1", "rb"))[b"data"][1].reshape(3, 32, 32)
    assert torch.allclose(full.train.images[1], torch.from_numpy(raw / 127.5 - 1).float(),
                          atol=1e-6)
    capped = load_data(DataConfig(name="cifar10", path=str(tmp_path), train_size=7,
                                  test_size=2))
    assert len(capped.train) == 7 and len(capped.test) == 2


def test_cifar10_missing_batch(tmp_path):
    make_cifar(tmp_path)
    (tmp_path / "data_batch_3").unlink()
    with pytest.raises(HarnessError, match="data_batch_3 does not exist"):
        load_data(DataConfig(name="cifar10", path=str(tmp_path)))
    with pytest.raises(HarnessError, match="does not exist \\(cifar10 needs"):
        load_data(DataConfig(name="cifar10", path=str(tmp_path / "nope")))


def test_an_empty_cifar10_test_batch_is_refused_naming_it(tmp_path):
    make_cifar(tmp_path)
    with open(tmp_path / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((0, 3072), np.uint8), b"labels": []}, f)
    with pytest.raises(HarnessError, match=f"^data.path: {tmp_path / 'test_batch'}: the test "
                                           "set is empty; allowed: at least one image$"):
        load_data(DataConfig(name="cifar10", path=str(tmp_path)))


def test_no_loader_gives_an_empty_set(monkeypatch):
    """Whatever a loader returns, an empty training or test set stops the run at loading."""
    from harness.data import datasets

    def empty(cfg):
        none = InMemoryImages(torch.zeros(0, 3, 8, 8), torch.zeros(0))
        return datasets.Datasets(none, none, 2)

    monkeypatch.setitem(datasets.LOADERS, "digits", empty)
    with pytest.raises(HarnessError, match="^data.path: digits: the train set is empty"):
        load_data(DataConfig(name="digits"))


@pytest.mark.parametrize("content", [b"", b"not a pickle", pickle.dumps({b"data": [1, 2]})])
def test_a_broken_cifar10_batch_is_one_clear_line(tmp_path, content):
    make_cifar(tmp_path)
    (tmp_path / "data_batch_2").write_bytes(content)
    with pytest.raises(HarnessError, match=f"^data.path: {tmp_path / 'data_batch_2'} is not a "
                                           "CIFAR-10 python batch"):
        load_data(DataConfig(name="cifar10", path=str(tmp_path)))
