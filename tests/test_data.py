"""Dataset loading: the IDX reader, digits, Fashion-MNIST and the errors for missing data."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.errors import UserError
from models import data
from models.data import load_dataset, read_idx
from tests.helpers import DATASET_PACKAGES, idx_bytes, in_ci, needs_dataset


@pytest.fixture
def images() -> np.ndarray:
    return np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)


def test_read_idx_returns_the_array_written(tmp_path: Path, images: np.ndarray):
    path = tmp_path / "x-idx3-ubyte"
    path.write_bytes(idx_bytes(images))
    np.testing.assert_array_equal(read_idx(path), images)


def test_read_idx_reads_gzip_files(tmp_path: Path, images: np.ndarray):
    path = tmp_path / "x-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(idx_bytes(images)))
    np.testing.assert_array_equal(read_idx(path), images)


def test_read_idx_rejects_wrong_magic(tmp_path: Path, images: np.ndarray):
    path = tmp_path / "bad"
    path.write_bytes(b"\x12\x34" + idx_bytes(images)[2:])
    with pytest.raises(UserError, match="bad magic number"):
        read_idx(path)


def test_read_idx_rejects_truncated_data(tmp_path: Path, images: np.ndarray):
    path = tmp_path / "short"
    path.write_bytes(idx_bytes(images)[:-5])
    with pytest.raises(UserError, match="truncated"):
        read_idx(path)


def test_read_idx_rejects_truncated_header(tmp_path: Path, images: np.ndarray):
    path = tmp_path / "short-header"
    path.write_bytes(idx_bytes(images)[:9])
    with pytest.raises(UserError, match="truncated"):
        read_idx(path)


def test_read_idx_rejects_truncated_gzip_stream(tmp_path: Path, images: np.ndarray):
    path = tmp_path / "short.gz"
    path.write_bytes(gzip.compress(idx_bytes(images))[:-10])
    with pytest.raises(UserError, match="cannot read IDX file"):
        read_idx(path)


def test_digits_splits_partition_the_1797_images():
    train_images, train_labels = load_dataset("digits", "train")
    test_images, test_labels = load_dataset("digits", "test")
    assert train_images.shape == (1437, 1, 8, 8) and test_images.shape == (360, 1, 8, 8)
    assert train_labels.dtype == torch.int64 and len(train_labels) == 1437 and len(test_labels) == 360


def test_digits_pixels_span_minus_one_to_one_in_sixteenths():
    images, _ = load_dataset("digits", "train")
    assert images.dtype == torch.float32
    assert images.min() == -1 and images.max() == 1
    levels = (images + 1) / 2 * 16
    torch.testing.assert_close(levels, levels.round())


def test_load_dataset_caches_tensors_per_process():
    assert load_dataset("digits", "test")[0] is load_dataset("digits", "test")[0]


@needs_dataset("fashion-mnist")
def test_fashion_mnist_has_60000_train_and_10000_test_images_in_range():
    train_images, train_labels = load_dataset("fashion-mnist", "train")
    test_images, test_labels = load_dataset("fashion-mnist", "test")
    assert train_images.shape == (60000, 1, 28, 28) and test_images.shape == (10000, 1, 28, 28)
    assert train_images.min() == -1 and train_images.max() == 1
    assert torch.equal(train_labels.bincount(), torch.full((10,), 6000))
    assert torch.equal(test_labels.bincount(), torch.full((10,), 1000))


@pytest.mark.skipif(not in_ci(), reason="only under CI (CI=true), which installs every data set package")
@pytest.mark.parametrize("dataset", sorted(DATASET_PACKAGES))
def test_ci_has_every_dataset_package_installed(dataset: str):
    package, folder, probe = DATASET_PACKAGES[dataset]
    assert Path(folder, probe).is_file(), f"CI must install {package} (files in {folder}); .ci/run apt-get installs it"


def test_helpers_dataset_folder_is_the_readers_default():
    assert DATASET_PACKAGES["fashion-mnist"][1] == data.FASHION_MNIST_SYSTEM_DIR


def test_missing_fashion_mnist_error_names_dataset_and_fix(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(data, "FASHION_MNIST_SYSTEM_DIR", str(tmp_path / "absent"))
    monkeypatch.delenv(data.FASHION_MNIST_ENV, raising=False)
    with pytest.raises(UserError) as error:
        load_dataset("fashion-mnist", "train", data_dir=str(tmp_path))
    message = str(error.value)
    assert "'fashion-mnist'" in message
    assert "apt-get install dataset-fashion-mnist" in message and "--data-dir" in message


def test_missing_cifar10_error_names_dataset_and_fix(tmp_path: Path, monkeypatch):
    monkeypatch.delenv(data.CIFAR10_ENV, raising=False)
    with pytest.raises(UserError) as error:
        load_dataset("cifar10", "train", data_dir=str(tmp_path))
    message = str(error.value)
    assert "'cifar10'" in message and "cifar-10-python.tar.gz" in message and "--data-dir" in message


def test_unknown_dataset_lists_the_known_ones():
    with pytest.raises(UserError, match="digits, fashion-mnist, cifar10"):
        load_dataset("mnist")


def test_dataset_metadata_matches_loaded_shapes():
    images, labels = load_dataset("digits", "test")
    assert tuple(images.shape[1:]) == data.DATASETS["digits"].image_shape
    assert int(labels.max()) + 1 == data.DATASETS["digits"].num_classes == len(data.DATASETS["digits"].class_names)


def _fake_fashion_folder(folder: Path, value: int) -> Path:
    """Two 28x28 images of one grey value per split, in the package's file names (gzip IDX)."""
    folder.mkdir()
    for prefix in ("train", "t10k"):
        (folder / f"{prefix}-images-idx3-ubyte.gz").write_bytes(
            gzip.compress(idx_bytes(np.full((2, 28, 28), value, dtype=np.uint8))))
        (folder / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.array([1, 2]))))
    return folder


def test_the_dataset_cache_is_per_folder_so_another_or_a_missing_folder_is_never_served_the_first(
        tmp_path: Path, monkeypatch):
    """Order-independent (it builds its own folders; round 7's W12 was caught only after another test had loaded
    the installed package): --data-dir and the environment variable are part of what is cached."""
    from bench.errors import UserError
    from models.data import FASHION_MNIST_ENV

    black, white = _fake_fashion_folder(tmp_path / "black", 0), _fake_fashion_folder(tmp_path / "white", 255)
    assert load_dataset("fashion-mnist", "train", str(black))[0].max() == -1
    assert load_dataset("fashion-mnist", "train", str(white))[0].min() == 1
    with pytest.raises(UserError, match="does not exist"):
        load_dataset("fashion-mnist", "train", str(tmp_path / "missing"))
    monkeypatch.setenv(FASHION_MNIST_ENV, str(black))
    assert load_dataset("fashion-mnist", "test")[0].max() == -1
    monkeypatch.setenv(FASHION_MNIST_ENV, str(white))
    assert load_dataset("fashion-mnist", "test")[0].min() == 1
