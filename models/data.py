"""Real image datasets as tensors in [-1, 1]: sklearn digits, Fashion-MNIST and CIFAR-10.

Nothing is downloaded at run time. Digits ship with scikit-learn; Fashion-MNIST is read from
the original IDX .gz files (Debian package `dataset-fashion-mnist`, or a folder); CIFAR-10 is
read by torchvision from an already extracted `cifar-10-batches-py` folder.

Splits: digits has no official split, so every 5th image (index % 5 == 0) is the test split
(360 images) and the rest is the training split (1437 images). Fashion-MNIST and CIFAR-10
use their official train/test splits.
"""

from __future__ import annotations

import gzip
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bench.errors import UserError

SPLITS = ("train", "test")
FASHION_MNIST_ENV = "SAMPLER_BENCH_FASHION_MNIST"
FASHION_MNIST_SYSTEM_DIR = "/usr/share/datasets/fashion-mnist"
CIFAR10_ENV = "SAMPLER_BENCH_CIFAR10"
FASHION_MNIST_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
                       "t10k-labels-idx1-ubyte.gz")
DIGITS_TEST_EVERY = 5  # digits: image i is in the test split when i % 5 == 0

IDX_DTYPES = {0x08: np.dtype(np.uint8), 0x09: np.dtype(np.int8), 0x0B: np.dtype(">i2"),
              0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


@dataclass(frozen=True)
class DatasetInfo:
    """What a dataset looks like: image shape (C, H, W), class count and class names."""

    name: str
    image_shape: tuple[int, int, int]
    num_classes: int
    class_names: tuple[str, ...]


DATASETS: dict[str, DatasetInfo] = {
    "digits": DatasetInfo("digits", (1, 8, 8), 10, tuple(str(d) for d in range(10))),
    "fashion-mnist": DatasetInfo("fashion-mnist", (1, 28, 28), 10, (
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")),
    "cifar10": DatasetInfo("cifar10", (3, 32, 32), 10, (
        "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")),
}

_CACHE: dict[tuple[str, str, str | None], tuple[torch.Tensor, torch.Tensor]] = {}


def read_idx(path: str | Path) -> np.ndarray:
    """Parse an IDX file (optionally .gz): magic 0x0000 <dtype> <ndim>, big-endian uint32 dims, data."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            raw = handle.read()
    except (OSError, EOFError, zlib.error) as exc:  # gzip: EOFError when truncated, zlib.error when corrupt
        raise UserError(f"cannot read IDX file {str(path)!r}: {exc}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_DTYPES:
        raise UserError(f"{str(path)!r} is not an IDX file (bad magic number {raw[:4].hex() or 'empty'})")
    dtype, ndim = IDX_DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise UserError(f"IDX file {str(path)!r} is truncated: header needs {header} bytes, file has {len(raw)}")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = header + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        raise UserError(f"IDX file {str(path)!r} has {len(raw)} bytes but its header {dims} implies {expected}; "
                        "it is truncated or corrupt")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def _digits(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.as_tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16 * 2 - 1
    labels = torch.as_tensor(bunch.target, dtype=torch.int64)
    is_test = torch.arange(len(labels)) % DIGITS_TEST_EVERY == 0
    keep = is_test if split == "test" else ~is_test
    return images[keep].contiguous(), labels[keep].contiguous()


def fashion_mnist_dir(data_dir: str | None = None) -> Path:
    """The folder holding the Fashion-MNIST IDX files.

    A folder the user names (data_dir) is used alone: one that does not exist or lacks a file is an
    error, never a silent fall back to another copy. Otherwise $SAMPLER_BENCH_FASHION_MNIST, then the
    system folder.
    """
    if data_dir is not None:
        folder = Path(data_dir)
        missing = [name for name in FASHION_MNIST_FILES if not (folder / name).is_file()]
        if not folder.is_dir() or missing:
            problem = "does not exist" if not folder.exists() else (
                "is not a folder" if not folder.is_dir() else f"lacks {', '.join(missing)}")
            raise UserError(f"--data-dir {str(folder)!r} {problem}: dataset 'fashion-mnist' needs a folder "
                            f"holding {', '.join(FASHION_MNIST_FILES)} ('apt-get install dataset-fashion-mnist' "
                            f"puts them in {FASHION_MNIST_SYSTEM_DIR})")
        return folder
    candidates = [c for c in (os.environ.get(FASHION_MNIST_ENV), FASHION_MNIST_SYSTEM_DIR) if c]
    for candidate in candidates:
        if (Path(candidate) / "train-images-idx3-ubyte.gz").is_file():
            return Path(candidate)
    raise UserError(
        f"dataset 'fashion-mnist' not found (looked in {', '.join(map(repr, candidates))}). Install it with "
        f"'apt-get install dataset-fashion-mnist', or put train/t10k-images-idx3-ubyte.gz and "
        f"train/t10k-labels-idx1-ubyte.gz in a folder and pass --data-dir or set {FASHION_MNIST_ENV}")


def _fashion_mnist(split: str, data_dir: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    folder = fashion_mnist_dir(data_dir)
    prefix = "train" if split == "train" else "t10k"
    images = read_idx(folder / f"{prefix}-images-idx3-ubyte.gz")
    labels = read_idx(folder / f"{prefix}-labels-idx1-ubyte.gz")
    if images.ndim != 3 or images.shape[1:] != (28, 28) or labels.shape != (images.shape[0],):
        raise UserError(f"Fashion-MNIST files in {str(folder)!r} have unexpected shapes "
                        f"{images.shape} / {labels.shape}; expected (N, 28, 28) / (N,)")
    pixels = torch.from_numpy(images.astype(np.float32)).unsqueeze(1) / 255 * 2 - 1
    return pixels, torch.from_numpy(labels.astype(np.int64))


def _cifar10(split: str, data_dir: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    root = data_dir or os.environ.get(CIFAR10_ENV)
    how = ("download https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz on a machine with internet, "
           "extract it into a folder (it creates cifar-10-batches-py/) and pass --data-dir FOLDER "
           f"or set {CIFAR10_ENV}")
    if not root or not (Path(root) / "cifar-10-batches-py").is_dir():
        where = f" in {root!r}" if root else ""
        raise UserError(f"dataset 'cifar10' not found{where}: {how}")
    from torchvision.datasets import CIFAR10

    try:
        dataset = CIFAR10(root, train=split == "train", download=False)
    except RuntimeError as exc:
        raise UserError(f"dataset 'cifar10' in {root!r} is incomplete or corrupt ({exc}): {how}") from None
    pixels = torch.from_numpy(dataset.data).permute(0, 3, 1, 2).to(torch.float32) / 255 * 2 - 1
    return pixels.contiguous(), torch.as_tensor(dataset.targets, dtype=torch.int64)


def load_dataset(name: str, split: str = "train", data_dir: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Images float32 in [-1, 1] shaped (N, C, H, W) and int64 labels; cached per process."""
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; available: {', '.join(DATASETS)}")
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r} for dataset {name!r}; expected one of {', '.join(SPLITS)}")
    key = (name, split, data_dir, os.environ.get(FASHION_MNIST_ENV), os.environ.get(CIFAR10_ENV))  # where it looks
    if key not in _CACHE:
        if name == "digits":
            if data_dir is not None:
                raise UserError(f"dataset 'digits' ships with scikit-learn and reads no folder; drop --data-dir "
                                f"{data_dir!r}")
            _CACHE[key] = _digits(split)
        elif name == "fashion-mnist":
            _CACHE[key] = _fashion_mnist(split, data_dir)
        else:
            _CACHE[key] = _cifar10(split, data_dir)
    return _CACHE[key]
