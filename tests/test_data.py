"""Tests for superserve.data: real MNIST-5k, splits, the other loaders and their errors."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from superserve.data import (
    DEFAULT_FRACTIONS,
    DataError,
    batches,
    load_dataset,
    random_shift,
    stratified_split,
)


@pytest.fixture(scope="module")
def mnist():
    return load_dataset("mnist5k", seed=0)


def _class_counts(y: torch.Tensor, num_classes: int = 10) -> list[int]:
    return torch.bincount(y, minlength=num_classes).tolist()


def _row_keys(x: torch.Tensor) -> set[bytes]:
    """Exact fingerprints of images: equal pixels <=> equal key (same ops give bit-equal floats)."""
    return {row.numpy().tobytes() for row in x.flatten(1)}


def _nearest_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """For each image in a, the L2 distance to its closest image in b (float64: no mm rounding)."""
    return torch.cdist(a.flatten(1).double(), b.flatten(1).double()).min(dim=1).values


# --------------------------------------------------------------------------- MNIST-5k


def test_mnist5k_is_the_default_and_has_expected_shapes(mnist):
    assert load_dataset().spec == "mnist5k"
    assert mnist.name == "mnist5k"
    assert mnist.sizes() == {"train": 3500, "val": 500, "test": 1000}
    assert (mnist.in_channels, mnist.image_size, mnist.num_classes) == (1, 28, 10)
    assert mnist.class_names == tuple("0123456789")
    assert mnist.fractions == DEFAULT_FRACTIONS
    for split in ("train", "val", "test"):
        x, y = mnist.split(split)
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert x.shape[1:] == (1, 28, 28) and x.is_contiguous()
        assert set(y.unique().tolist()) == set(range(10))


def test_mnist5k_is_stratified_and_normalised_with_train_statistics(mnist):
    assert _class_counts(mnist.train_y) == [350] * 10
    assert _class_counts(mnist.val_y) == [50] * 10
    assert _class_counts(mnist.test_y) == [100] * 10
    # real MNIST: mean pixel ~0.13, std ~0.31 on the [0, 1] scale
    assert 0.10 < mnist.mean[0] < 0.16 and 0.27 < mnist.std[0] < 0.35
    assert abs(mnist.train_x.mean().item()) < 1e-4
    assert abs(mnist.train_x.std().item() - 1.0) < 1e-3
    # background pixels (raw 0) map to -mean/std
    assert mnist.train_x.min().item() == pytest.approx(-mnist.mean[0] / mnist.std[0], abs=1e-5)
    # train is shuffled, not grouped by class
    assert len(set(mnist.train_y[:50].tolist())) > 5


def test_mnist5k_splits_are_disjoint_and_cover_all_images(mnist):
    train, val, test = (_row_keys(mnist.split(s)[0]) for s in ("train", "val", "test"))
    assert not train & val and not train & test and not val & test
    assert len(train | val | test) == 5000  # the 5,000 shipped digits are all distinct


def test_split_is_deterministic_per_seed(mnist):
    from superserve import data as data_module

    # Reloading must stay cheap (tests and the zoo reload it often): the csv is parsed once per process, and a
    # reload reuses it (checked on the cache, not with a stopwatch on a shared host).
    parsed = data_module._read_mnist5k_cached.cache_info().misses
    again = load_dataset("mnist5k", seed=0)
    assert data_module._read_mnist5k_cached.cache_info().misses == parsed <= 1
    other = load_dataset("mnist5k", seed=1)
    for split in ("train", "val", "test"):
        assert torch.equal(mnist.split(split)[0], again.split(split)[0])
        assert torch.equal(mnist.split(split)[1], again.split(split)[1])
        assert not torch.equal(mnist.split(split)[1], other.split(split)[1])
    # a different split holds different images, not just a different order
    assert _row_keys(other.test_x) != _row_keys(mnist.test_x)


def test_calibration_subset_is_seeded_stratified_and_from_train(mnist):
    x, y = mnist.calibration_subset(2000, seed=3)
    assert x.shape == (2000, 1, 28, 28)
    assert _class_counts(y) == [200] * 10
    x2, y2 = mnist.calibration_subset(2000, seed=3)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert not torch.equal(y, mnist.calibration_subset(2000, seed=4)[1])
    assert _row_keys(x) <= _row_keys(mnist.train_x)


def test_custom_fractions(mnist):
    s = load_dataset("mnist5k", seed=0, fractions=(0.5, 0.25, 0.25))
    assert s.sizes() == {"train": 2500, "val": 1250, "test": 1250}
    with pytest.raises(DataError, match="fractions must be three positive numbers"):
        load_dataset("mnist5k", fractions=(0.8, 0.3, 0.1))
    with pytest.raises(DataError, match="fractions"):
        load_dataset("mnist5k", fractions=(0.9, 0.1, 0.0))


def test_stratified_split_on_unbalanced_labels_is_a_partition():
    labels = np.repeat(np.arange(4), [100, 41, 7, 253])
    tr, va, te = stratified_split(labels, (0.7, 0.1, 0.2), np.random.default_rng(0))
    assert np.array_equal(np.sort(np.concatenate([tr, va, te])), np.arange(len(labels)))
    for c, n in enumerate([100, 41, 7, 253]):
        assert abs((labels[va] == c).sum() - 0.1 * n) <= 1
        assert abs((labels[te] == c).sum() - 0.2 * n) <= 1


# --------------------------------------------------------------------------- sklearn digits


def test_digits_native_and_resized():
    native = load_dataset("digits", seed=0)
    assert native.name == "digits" and native.raw_max == 16.0
    assert native.image_size == 8 and native.train_x.shape[1:] == (1, 8, 8)
    assert sum(native.sizes().values()) == 1797
    # digits classes hold 174-183 images: each split gets its share of every class, +-1
    per_class = torch.bincount(torch.cat([native.train_y, native.val_y, native.test_y]))
    for y, share in ((native.val_y, 0.1), (native.test_y, 0.2)):
        assert ((torch.bincount(y, minlength=10) - share * per_class).abs() <= 1).all()
    big = load_dataset("digits", seed=0, image_size=28)
    assert big.train_x.shape == (native.sizes()["train"], 1, 28, 28)
    assert torch.equal(big.train_y, native.train_y)  # resizing does not change the split


def test_prepare_reproduces_loaded_tensors_from_raw_pixels():
    from sklearn.datasets import load_digits

    s = load_dataset("digits", seed=2, image_size=28)
    raw = load_digits().images  # (1797, 8, 8) in 0..16
    prepared = s.prepare(raw)
    assert prepared.shape == (1797, 1, 28, 28)
    for split in ("train", "val", "test"):  # 100 per split keeps the distance matrix small
        assert (_nearest_distance(s.split(split)[0][:100], prepared) < 1e-4).all()
    assert s.prepare(raw[0]).shape == (1, 1, 28, 28)
    with pytest.raises(DataError, match="channel"):
        s.prepare(np.zeros((2, 3, 8, 8)))


def test_server_codec_prepares_raw_pixels_like_prepare_pixels():
    """The attack code reproduces the server's input with `prepare_pixels` (it may not import the server): the two
    must agree, resized or not."""
    from superserve.data import prepare_pixels
    from superserve.server.codec import ModelSpec, prepare_raw

    raw = torch.randint(0, 256, (3, 1, 20, 20), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    for size in (20, 28):
        spec = ModelSpec("m", "1", 1, size, 10, (0.13,), (0.31,), 255.0)
        torch.testing.assert_close(prepare_pixels(raw, spec.mean, spec.std, spec.raw_max, size), prepare_raw(raw, spec))


def test_checkpoint_normalisation_from_meta_or_the_dataset():
    from superserve.data import checkpoint_normalisation

    assert checkpoint_normalisation({"normalization": {"mean": [0.5], "std": [0.25], "raw_max": 16}}, "mnist5k") \
        == ((0.5,), (0.25,), 16.0)
    assert checkpoint_normalisation({"mean": [0.1], "std": [0.2]}, "mnist5k") == ((0.1,), (0.2,), 255.0)
    digits = load_dataset("digits")  # no normalisation stored: recomputed from the meta's dataset, as training did
    assert checkpoint_normalisation({"dataset": "digits"}, "mnist5k") == (digits.mean, digits.std, digits.raw_max)


# --------------------------------------------------------------------------- batches / augmentation


def test_batches_cover_everything_once_and_replay_with_the_same_seed():
    x = torch.arange(10, dtype=torch.float32).view(10, 1, 1, 1).expand(10, 1, 4, 4).contiguous()
    y = torch.arange(10)
    got = list(batches(x, y, 4, torch.Generator().manual_seed(0)))
    assert [len(b[1]) for b in got] == [4, 4, 2]
    order = torch.cat([b[1] for b in got])
    assert sorted(order.tolist()) == list(range(10)) and order.tolist() != list(range(10))
    for xb, yb in got:  # x and y stay paired
        assert torch.equal(xb[:, 0, 0, 0], yb.float())
    replay = torch.cat([b[1] for b in batches(x, y, 4, torch.Generator().manual_seed(0))])
    assert torch.equal(order, replay)
    assert [len(b[1]) for b in batches(x, y, 4, None, shuffle=False, drop_last=True)] == [4, 4]
    with pytest.raises(DataError, match="needs an explicit torch.Generator"):
        next(batches(x, y, 4))
    with pytest.raises(DataError, match="samples"):
        next(batches(x, y[:5], 4, shuffle=False))


def test_augmentation_shifts_each_image_by_at_most_two_pixels():
    x = torch.zeros(64, 1, 12, 12)
    x[:, 0, 6, 6] = 1.0  # one bright pixel per image
    g = torch.Generator().manual_seed(0)
    out = random_shift(x, 2, g)
    assert out.shape == x.shape
    pos = out.flatten(1).argmax(dim=1)
    rows, cols = pos // 12, pos % 12
    assert (out.flatten(1).sum(dim=1) == 1).all()  # content moved, not lost or duplicated
    assert ((rows - 6).abs() <= 2).all() and ((cols - 6).abs() <= 2).all()
    assert len(set(zip(rows.tolist(), cols.tolist()))) > 10  # shifts really vary per image
    assert torch.equal(random_shift(x, 2, torch.Generator().manual_seed(0)), out)
    assert torch.equal(random_shift(x, 0, g), x)
    (xb, _), = batches(x, torch.zeros(64, dtype=torch.long), 64, torch.Generator().manual_seed(1), augment=True)
    assert not torch.equal(xb.sum(dim=0), x.sum(dim=0))


# --------------------------------------------------------------------------- CIFAR-10


def _write_cifar(root: Path, per_batch: int = 20, test_n: int = 30) -> None:
    """A tiny CIFAR-10 python-batch directory; every image has R=255, G=0, B=128 planes."""
    root.mkdir(parents=True, exist_ok=True)
    pixel = np.concatenate([np.full(1024, 255), np.zeros(1024), np.full(1024, 128)]).astype(np.uint8)

    def batch(n: int) -> dict:
        return {b"batch_label": b"fake", b"labels": [i % 10 for i in range(n)],
                b"data": np.tile(pixel, (n, 1)), b"filenames": [b"x.png"] * n}

    for i in range(1, 6):
        (root / f"data_batch_{i}").write_bytes(pickle.dumps(batch(per_batch)))
    (root / "test_batch").write_bytes(pickle.dumps(batch(test_n)))
    names = [b"plane", b"car", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    (root / "batches.meta").write_bytes(pickle.dumps({b"label_names": names}))


def test_cifar10_loader_reads_python_batches(tmp_path):
    _write_cifar(tmp_path / "cifar-10-batches-py")
    for path in (tmp_path / "cifar-10-batches-py", tmp_path):  # the batch dir or its parent
        s = load_dataset(f"cifar10:{path}", seed=0)
        assert s.name == "cifar10" and s.in_channels == 3 and s.image_size == 32
        assert s.class_names[:2] == ("plane", "car") and s.num_classes == 10
        assert s.sizes()["test"] == 30  # the official test batch is kept whole
        assert s.sizes()["train"] + s.sizes()["val"] == 100
        assert _class_counts(s.val_y) == [1] * 10  # 10 / (70 + 10) of 10 per class, rounded
        assert s.train_x.shape == (s.sizes()["train"], 3, 32, 32)
    # each row is 1024 R, then G, then B values: channel means prove the NCHW reshape
    assert s.mean == pytest.approx((1.0, 0.0, 128 / 255))
    s_small = load_dataset(f"cifar10:{tmp_path}", image_size=16)
    assert s_small.test_x.shape == (30, 3, 16, 16)


def test_cifar10_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=r"empty.*not a CIFAR-10 python-batch directory: missing data_batch_1"):
        load_dataset(f"cifar10:{empty}")

    corrupt = tmp_path / "corrupt"
    _write_cifar(corrupt)
    (corrupt / "data_batch_3").write_bytes(os.urandom(500))
    with pytest.raises(DataError, match=r"data_batch_3.*corrupt or not a python pickle"):
        load_dataset(f"cifar10:{corrupt}")

    evil = tmp_path / "evil"
    _write_cifar(evil)

    class Boom:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    (evil / "test_batch").write_bytes(pickle.dumps({b"data": Boom()}))
    with pytest.raises(DataError, match=r"test_batch.*refusing to load global"):
        load_dataset(f"cifar10:{evil}")

    shape = tmp_path / "shape"
    _write_cifar(shape)
    (shape / "data_batch_1").write_bytes(pickle.dumps({b"data": np.zeros((4, 100), np.uint8), b"labels": [0] * 4}))
    with pytest.raises(DataError, match=r"data_batch_1.*must be \(N, 3072\) uint8, got \(4, 100\)"):
        load_dataset(f"cifar10:{shape}")
    (shape / "data_batch_1").write_bytes(pickle.dumps({b"data": np.zeros((4, 3072), np.uint8), b"labels": [0] * 3}))
    with pytest.raises(DataError, match=r"4 images but labels of shape \(3,\)"):
        load_dataset(f"cifar10:{shape}")
    (shape / "data_batch_1").write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(DataError, match="holds a list, expected a dict"):
        load_dataset(f"cifar10:{shape}")


# --------------------------------------------------------------------------- ImageFolder


def _write_folder(root: Path, classes: dict[str, int], mode: str = "L", size: tuple[int, int] = (10, 12)) -> None:
    rng = np.random.default_rng(0)
    for name, n in classes.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            shape = (size[1], size[0]) + ((3,) if mode == "RGB" else ())
            Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(root / name / f"{i}.png")


def test_image_folder_grey(tmp_path):
    _write_folder(tmp_path, {"cat": 10, "dog": 10, "emu": 10})
    (tmp_path / "cat" / "notes.txt").write_text("not an image")  # ignored by suffix
    s = load_dataset(f"folder:{tmp_path}", seed=0, image_size=16)
    assert s.name == "folder" and s.class_names == ("cat", "dog", "emu")
    assert s.in_channels == 1 and s.image_size == 16 and s.num_classes == 3
    assert s.sizes() == {"train": 21, "val": 3, "test": 6}
    assert _class_counts(s.test_y, 3) == [2, 2, 2]
    assert s.train_x.shape == (21, 1, 16, 16)
    # prepare() on the raw PNG pixels gives back the loaded tensors
    raw = np.stack([np.asarray(Image.open(tmp_path / "dog" / f"{i}.png")) for i in range(10)])
    assert (_nearest_distance(s.prepare(raw), torch.cat([s.train_x, s.val_x, s.test_x])) < 1e-4).all()


def test_image_folder_rgb_default_size(tmp_path):
    _write_folder(tmp_path, {"a": 5, "b": 5}, mode="RGB", size=(40, 20))
    s = load_dataset(f"folder:{tmp_path}", seed=1, fractions=(0.6, 0.2, 0.2))
    assert s.in_channels == 3 and s.image_size == 32 and len(s.mean) == 3
    assert s.train_x.shape == (6, 3, 32, 32)


def test_image_folder_errors(tmp_path):
    with pytest.raises(DataError, match=r"no usable class folders"):
        load_dataset(f"folder:{tmp_path}")
    (tmp_path / "cls").mkdir()
    (tmp_path / "cls" / "readme.txt").write_text("hi")
    with pytest.raises(DataError, match=r"no usable class folders with images"):
        load_dataset(f"folder:{tmp_path}")
    (tmp_path / "cls" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"cannot decode image .*broken\.png"):
        load_dataset(f"folder:{tmp_path}")
    few = tmp_path / "few"
    _write_folder(few, {"a": 1, "b": 1})
    with pytest.raises(DataError, match=r"the val split is empty \(2 images in total\)"):
        load_dataset(f"folder:{few}")


# --------------------------------------------------------------------------- specs


def test_spec_errors(tmp_path):
    with pytest.raises(DataError, match=r"unknown dataset spec 'imagenet'"):
        load_dataset("imagenet")
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match=r"nowhere' does not exist"):
        load_dataset(f"cifar10:{missing}")
    with pytest.raises(DataError, match=r"nowhere' does not exist"):
        load_dataset(f"folder:{missing}")
    with pytest.raises(DataError, match="needs a path"):
        load_dataset("folder")
    a_file = tmp_path / "file.bin"
    a_file.write_bytes(b"x")
    with pytest.raises(DataError, match="is not a directory"):
        load_dataset(f"cifar10:{a_file}")
    with pytest.raises(DataError, match="takes no path"):
        load_dataset("digits:/tmp")
    with pytest.raises(DataError, match="image_size"):
        load_dataset("digits", image_size=0)
    assert issubclass(DataError, ValueError)
