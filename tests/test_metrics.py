"""Built-in metrics: streaming moments, vectorised bootstrap FID, the fid accumulator and oracle-fd."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pluggy
import pytest
import torch

from bench import DenoiserInfo, hookspecs
from bench.plugins import collect
from models import features
from models import metrics as metrics_module
from models.data import load_dataset
from models.metrics import (
    MomentAccumulator,
    bootstrap_fid,
    bootstrap_interval,
    create_fid,
    create_oracle_fd,
    weighted_fid,
)
from models.oracle import OracleDenoiser, make_mixture

CONTEXT = {"num_samples": 360, "device": "cpu", "seed": 0, "fid_weights": None, "bootstrap": 50}


class FakeDenoiser:
    """Only what metrics look at: `info` (and, for the oracle, `mixture`)."""

    def __init__(self, dataset: str | None, image_shape=(1, 8, 8)):
        self.info = DenoiserInfo("fake", image_shape, 10, dataset=dataset)


def gaussian_rows(n: int, dim: int, seed: int) -> torch.Tensor:
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_moments_streamed_in_batches_equal_moments_of_all_rows():
    rows = gaussian_rows(1000, 6, 0) * 3 + 1
    streamed = MomentAccumulator(6)
    for batch in rows.split(137):
        streamed.update(batch)
    assert streamed.count == 1000
    torch.testing.assert_close(streamed.mean(), rows.mean(0))
    torch.testing.assert_close(streamed.covariance(), torch.from_numpy(np.cov(rows.numpy(), rowvar=False)))


def test_weighted_fid_with_unit_weights_equals_torch_fidelity_fid():
    reference = features.reference_stats_from_features(gaussian_rows(3000, 16, 1))
    rows = gaussian_rows(500, 16, 2) * 1.2 + 0.3
    vectorised = weighted_fid(rows, torch.ones(1, 500), reference)
    assert float(vectorised[0]) == pytest.approx(features.fid_from_features(rows, reference), rel=1e-9)


def test_bootstrap_is_reproducible_with_the_same_seed():
    reference = features.reference_stats_from_features(gaussian_rows(3000, 8, 1))
    rows = gaussian_rows(300, 8, 3)
    assert torch.equal(bootstrap_fid(rows, reference, 20, seed=7), bootstrap_fid(rows, reference, 20, seed=7))
    assert not torch.equal(bootstrap_fid(rows, reference, 20, seed=7), bootstrap_fid(rows, reference, 20, seed=8))


def test_bootstrap_interval_is_centred_on_the_point_estimate_by_median():
    samples = torch.tensor([4.0, 5.0, 6.0, 7.0, 8.0], dtype=torch.float64)
    low, high = bootstrap_interval(3.0, samples, confidence=0.5)  # quartiles 5 and 7, median 6, shift 3
    assert (low, high) == pytest.approx((2.0, 4.0))


def test_fid_applies_only_to_datasets_with_a_matching_feature_extractor():
    assert create_fid(FakeDenoiser(None), CONTEXT) is None
    assert create_fid(FakeDenoiser("digits", (1, 28, 28)), CONTEXT) is None
    assert create_fid(FakeDenoiser("cifar10", (3, 32, 32)), CONTEXT) is None


@pytest.mark.skipif("digits" not in features.shipped_datasets(), reason="no digits feature extractor")
class TestDigitsFid:
    @pytest.fixture(autouse=True)
    def few_kid_subsets(self, monkeypatch):
        monkeypatch.setattr(metrics_module, "KID_SUBSETS", 5)  # KID's cost is not under test here

    def test_accumulator_keeps_float64_features_not_images(self):
        metric = create_fid(FakeDenoiser("digits"), CONTEXT)
        metric.update(torch.zeros(5, 1, 8, 8))
        assert [tuple(rows.shape) for rows in metric.rows] == [(5, 64)]
        assert metric.rows[0].dtype == torch.float64

    def test_fid_of_the_whole_test_split_equals_the_floor_at_its_size(self):
        images, _ = load_dataset("digits", "test")
        metric = create_fid(FakeDenoiser("digits"), CONTEXT)
        for batch in images.split(100):
            metric.update(batch)
        result = metric.compute()
        # float32 features of batches of 100 vs the stored floor's batching: summation order differs (~1e-7)
        assert result["fid"] == pytest.approx(result["fid_floor"], rel=1e-6)

    def test_fid_is_the_same_streamed_in_batches_or_at_once(self):
        images, _ = load_dataset("digits", "test")
        batched, whole = create_fid(FakeDenoiser("digits"), CONTEXT), create_fid(FakeDenoiser("digits"), CONTEXT)
        for batch in images.split(64):
            batched.update(batch)
        whole.update(images)
        assert batched.compute() == pytest.approx(whole.compute(), rel=1e-9)

    def test_compute_returns_documented_keys_and_ci_contains_estimate(self):
        images, _ = load_dataset("digits", "test")
        metric = create_fid(FakeDenoiser("digits"), CONTEXT)
        metric.update(images + 0.2 * torch.randn(images.shape, generator=torch.Generator().manual_seed(0)))
        result = metric.compute()
        assert set(result) == {"fid", "fid_ci_low", "fid_ci_high", "fid_floor", "kid", "kid_std", "prc_precision",
                               "prc_recall"}
        assert result["fid_ci_low"] <= result["fid"] <= result["fid_ci_high"]
        assert 0 <= result["prc_precision"] <= 1 and 0 <= result["prc_recall"] <= 1
        assert result["fid"] > result["fid_floor"]


def test_oracle_fd_applies_only_to_models_with_a_mixture():
    assert create_oracle_fd(FakeDenoiser(None), CONTEXT) is None
    assert create_oracle_fd(OracleDenoiser(make_mixture(8)), CONTEXT) is not None


def test_oracle_fd_of_exact_samples_is_small_and_of_shifted_samples_matches_the_shift():
    mixture = make_mixture(8)
    samples = mixture.sample(20000, generator=torch.Generator().manual_seed(0))
    exact, shifted = (create_oracle_fd(OracleDenoiser(mixture), CONTEXT) for _ in range(2))
    shift = 0.2
    for batch in samples.split(4096):
        exact.update(batch)
        shifted.update(batch + shift)
    exact_result, shifted_result = exact.compute(), shifted.compute()
    analytic = mixture.dim * shift**2  # same covariance, mean moved by `shift` in every pixel: 64 * 0.04
    assert exact_result["oracle_fd"] < 0.05 * analytic
    assert shifted_result["oracle_fd"] == pytest.approx(analytic, rel=0.05)
    assert shifted_result["mean_err"] == pytest.approx(shift, abs=0.03)
    assert shifted_result["var_err"] == pytest.approx(exact_result["var_err"], rel=1e-6)


def test_plugin_registers_fid_and_oracle_fd():
    manager = pluggy.PluginManager("sampler_bench")
    manager.add_hookspecs(hookspecs)
    manager.register(metrics_module, name="models.metrics")
    registry = collect(manager)
    assert {"fid", "oracle-fd"} <= set(registry.metrics) and not registry.errors


def test_kid_and_prc_are_nan_when_there_are_too_few_rows():
    result = metrics_module.kid_and_prc(gaussian_rows(1, 4, 0), gaussian_rows(50, 4, 1), seed=0)
    assert all(math.isnan(value) for value in result.values())


def test_bootstrap_interval_never_goes_below_zero():
    low, high = bootstrap_interval(0.2, torch.tensor([0.5, 1.0, 2.0, 4.0, 8.0], dtype=torch.float64))
    assert low == 0.0 and high > 0.2


def test_oracle_fd_says_when_there_are_no_more_images_than_pixels(tmp_path):
    import pandas as pd

    from bench.cli import main

    for n, noted in ((48, True), (96, False)):
        out = tmp_path / f"n{n}"
        assert main(["run", "--model", "gaussian-oracle", "--samplers", "ddim", "--steps", "4", "--num-samples", str(n),
                     "--batch-size", "48", "--metrics", "oracle-fd", "--quiet", "--out", str(out)]) == 0
        row = pd.read_csv(out / "results.csv").iloc[0]
        assert (isinstance(row.get("oracle_fd_note"), str) and "48 images for 64 pixels" in row["oracle_fd_note"]) \
            == noted


# ---------------------------------------------------------------- merges the fast suite never ran (coverage, round 7)
def _rank_batches(batches: list, world: int) -> list[list]:
    """What the harness feeds each rank (bench.distributed.Processes.share)."""
    from bench.distributed import Processes
    return [Processes(rank=r, world_size=world).share(batches) for r in range(world)]


@pytest.mark.parametrize("world", [2, 3])
def test_fid_feature_rows_merged_from_ranks_are_the_rows_of_one_process_in_image_order(world):
    from models.features import ReferenceStats
    from models.metrics import FeatureMetrics

    generator = torch.Generator().manual_seed(0)
    batches = [torch.randn(n, 4, generator=generator, dtype=torch.float64) for n in (5, 5, 5, 5, 3)]
    real = torch.randn(40, 4, generator=generator, dtype=torch.float64)
    reference = ReferenceStats(real.mean(0).numpy(), np.cov(real.numpy(), rowvar=False), 40, real)
    single = FeatureMetrics(None, reference, 1.0, 0, 20)
    single.rows = list(batches)
    ranks = [FeatureMetrics(None, reference, 1.0, 0, 20) for _ in range(world)]
    for accumulator, share in zip(ranks, _rank_batches(batches, world)):
        accumulator.rows = list(share)
    ranks[0].merge_shards([a.shard_state() for a in ranks])
    assert torch.equal(ranks[0].features(), torch.cat(batches))
    assert ranks[0].compute() == single.compute()


@pytest.mark.parametrize("world", [2, 3])
def test_ref_errors_merged_from_ranks_are_every_images_error_once(world):
    from models.metrics import RefError

    generator = torch.Generator().manual_seed(1)
    reference = torch.randn(23, 1, 2, 2, generator=generator, dtype=torch.float64)
    samples = reference + 0.1 * torch.randn(23, 1, 2, 2, generator=generator, dtype=torch.float64)
    references = SimpleNamespace(for_images=lambda start, n: reference[start:start + n])
    starts = list(range(0, 23, 5))
    single = RefError(references, 30, 0)
    for start in starts:
        single.update(samples[start:start + 5], torch.arange(start, min(start + 5, 23)))
    ranks = [RefError(references, 30, 0) for _ in range(world)]
    for accumulator, share in zip(ranks, _rank_batches(starts, world)):
        for start in share:
            accumulator.update(samples[start:start + 5], torch.arange(start, min(start + 5, 23)))
    ranks[0].merge_shards([a.shard_state() for a in ranks])
    expected = (samples - reference).reshape(23, -1).pow(2).mean(1).sqrt().numpy()
    np.testing.assert_allclose(ranks[0].per_image_values(), expected, rtol=1e-12)
    assert ranks[0].compute() == single.compute()
