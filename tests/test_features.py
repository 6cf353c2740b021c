"""FID feature spaces: the shipped classifiers, torch-fidelity's FID, floors and the Inception path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch_fidelity.feature_extractor_inceptionv3 as inception_module
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from bench.errors import UserError
from models import features
from models.data import load_dataset
from tests.helpers import needs_dataset

ACCURACY_THRESHOLDS = {"digits": 0.95, "fashion-mnist": 0.88}


def shipped(dataset: str):
    return pytest.mark.skipif(dataset not in features.shipped_datasets(),
                              reason=f"no shipped feature extractor for {dataset}")


@pytest.mark.parametrize("dataset", [pytest.param(name, marks=shipped(name)) for name in ACCURACY_THRESHOLDS])
def test_shipped_extractor_card_accuracy_is_above_threshold(dataset: str):
    card = features.load_card(dataset)
    assert card["test_accuracy"] > ACCURACY_THRESHOLDS[dataset]
    assert card["command"].startswith(f"python -m bench train-features --dataset {dataset}")


@pytest.mark.parametrize("dataset", [pytest.param(name, marks=shipped(name)) for name in ACCURACY_THRESHOLDS])
def test_shipped_files_are_under_two_megabytes(dataset: str):
    for path in (features.weights_path(dataset), features.card_path(dataset), features.stats_path(dataset)):
        assert path.stat().st_size < 2 * 1024 * 1024, path


FASHION_MARKS = [shipped("fashion-mnist"), needs_dataset("fashion-mnist"), pytest.mark.slow]


@pytest.mark.parametrize("dataset", [pytest.param("digits", marks=shipped("digits")),
                                     pytest.param("fashion-mnist", marks=FASHION_MARKS)])
def test_shipped_extractor_reaches_card_accuracy_on_test_split(dataset: str):
    images, labels = load_dataset(dataset, "test")
    net = features.load_feature_net(dataset)
    assert features.accuracy(net, images, labels) == pytest.approx(features.load_card(dataset)["test_accuracy"])


@shipped("digits")
def test_reference_stats_are_the_training_features_through_torch_fidelity():
    images, _ = load_dataset("digits", "train")
    extractor = features.create_classifier_extractor("digits")
    rows = features.extract_features(extractor, images)
    stats = features.reference_stats("digits")
    assert stats.count == len(images) == len(stats.real_features)
    np.testing.assert_allclose(stats.mu, rows.mean(0).numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(stats.sigma, np.cov(rows.numpy(), rowvar=False), rtol=1e-5, atol=1e-5)


def test_classifier_extractors_are_registered_with_torch_fidelity():
    for dataset in features.NET_CONFIGS:
        assert FEATURE_EXTRACTORS_REGISTRY[f"sampler-bench-{dataset}"] is features.ClassifierFeatureExtractor


def test_uint8_quantization_round_trips_the_255_levels():
    levels = torch.arange(256, dtype=torch.uint8)
    assert torch.equal(features.to_uint8(features.from_uint8(levels)), levels)
    assert torch.equal(features.to_uint8(torch.tensor([-3.0, 3.0])), torch.tensor([0, 255], dtype=torch.uint8))


def test_fid_of_features_against_their_own_statistics_is_zero():
    rows = torch.randn(2000, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    reference = features.reference_stats_from_features(rows)
    assert features.fid_from_features(rows, reference) == pytest.approx(0.0, abs=1e-8)


def test_fid_between_diagonal_gaussians_is_the_closed_form():
    mean_shift = np.array([1.0, -2.0, 0.5])
    var_1, var_2 = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    fid = features.fid_from_stats({"mu": np.zeros(3), "sigma": np.diag(var_1)},
                                  {"mu": mean_shift, "sigma": np.diag(var_2)})
    expected = mean_shift @ mean_shift + ((np.sqrt(var_1) - np.sqrt(var_2)) ** 2).sum()  # 5.25 + 4 + 1
    assert fid == pytest.approx(expected, rel=1e-10)


def test_fid_against_identity_is_trace_formula_for_a_full_covariance():
    generator = np.random.default_rng(0)
    a = generator.normal(size=(5, 5))
    sigma = a @ a.T + np.eye(5)
    eigenvalues = np.linalg.eigvalsh(sigma)
    expected = 5 + eigenvalues.sum() - 2 * np.sqrt(eigenvalues).sum()  # tr I + tr S - 2 tr S^1/2
    fid = features.fid_from_stats({"mu": np.zeros(5), "sigma": np.eye(5)}, {"mu": np.zeros(5), "sigma": sigma})
    assert fid == pytest.approx(expected, rel=1e-9)


SYNTHETIC_FLOORS = {
    "sizes": {"100": {"fid": 12.0, "method": "subset"}, "400": {"fid": 6.0, "method": "subset"},
              "1000": {"fid": 4.2, "method": "extrapolated a + b/n"}},
    "fit": {"intercept": 4.0, "slope": 800.0, "sizes": [100, 400]},
}


def test_floor_interpolates_linearly_in_inverse_n_between_measured_sizes():
    expected = 6.0 + (12.0 - 6.0) * (1 / 200 - 1 / 400) / (1 / 100 - 1 / 400)
    assert features.interpolate_floor(SYNTHETIC_FLOORS, 200) == pytest.approx(expected)
    assert features.interpolate_floor(SYNTHETIC_FLOORS, 400) == pytest.approx(6.0)


def test_floor_beyond_measured_sizes_uses_the_inverse_n_fit():
    assert features.interpolate_floor(SYNTHETIC_FLOORS, 2000) == pytest.approx(4.0 + 800.0 / 2000)


@shipped("digits")
def test_floor_fid_is_the_measured_value_at_a_measured_size():
    card = features.load_card("digits")
    assert features.floor_fid("digits", 250) == pytest.approx(card["floors"]["sizes"]["250"]["fid"])


def test_floor_fid_is_none_without_a_shipped_extractor():
    assert features.floor_fid(None, 500) is None
    assert features.floor_fid("cifar10", 500) is None or "cifar10" in features.shipped_datasets()


def test_missing_inception_weights_error_gives_url_and_option(tmp_path: Path):
    with pytest.raises(UserError) as error:
        features.create_inception_extractor(tmp_path / "absent.pth")
    assert features.INCEPTION_URL in str(error.value) and "--fid-weights" in str(error.value)


@pytest.fixture
def random_inception_weights(tmp_path: Path, monkeypatch) -> Path:
    """A weights file in torch-fidelity's format (a state dict saved with torch.save), random values."""
    monkeypatch.setattr(inception_module, "load_state_dict_from_url", lambda *args, **kwargs: None)
    monkeypatch.setattr(inception_module.FeatureExtractorInceptionV3, "load_state_dict", lambda self, state: None)
    torch.manual_seed(0)
    network = inception_module.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    monkeypatch.undo()
    path = tmp_path / "weights-inception-2015-12-05.pth"
    torch.save(network.state_dict(), path)
    return path


@pytest.mark.slow
def test_inception_extractor_loads_a_local_weights_file(random_inception_weights: Path):
    extractor = features.create_inception_extractor(random_inception_weights)
    saved = torch.load(random_inception_weights)
    assert torch.equal(extractor.state_dict()["fc.weight"], saved["fc.weight"])


@pytest.mark.slow
def test_inception_features_of_grayscale_equal_those_of_repeated_rgb(random_inception_weights: Path):
    extractor = features.create_inception_extractor(random_inception_weights)
    gray = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    rows_gray = features.extract_features(extractor, gray)
    rows_rgb = features.extract_features(extractor, gray.repeat(1, 3, 1, 1))
    assert rows_gray.shape == (2, 2048) and rows_gray.dtype == torch.float64
    assert torch.equal(rows_gray, rows_rgb)


@pytest.mark.slow
def test_inception_reference_stats_are_cached_after_first_use(random_inception_weights: Path, tmp_path: Path,
                                                              monkeypatch):
    images = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    calls = []
    monkeypatch.setattr(features, "load_dataset", lambda *args: calls.append(args) or (images, torch.zeros(3)))
    monkeypatch.setenv(features.CACHE_ENV, str(tmp_path / "cache"))
    first = features.inception_reference_stats("cifar10", random_inception_weights)
    second = features.inception_reference_stats("cifar10", random_inception_weights)
    assert len(calls) == 1 and first.count == 3
    np.testing.assert_array_equal(first.mu, second.mu)


def test_card_json_is_valid_for_every_shipped_dataset():
    for dataset in features.shipped_datasets():
        card = json.loads(features.card_path(dataset).read_text())
        assert card["dataset"] == dataset and card["stats"]["split"] == "train"
