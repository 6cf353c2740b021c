"""Paired comparisons: common random numbers make a difference sharper than two separate intervals imply."""

import numpy as np
import pytest
import torch

from bench.config import RunConfig
from bench.harness import run_benchmark
from bench.paired import (
    Reference,
    bootstrap_distances,
    compare_rows,
    load_reference,
    paired_table,
    resample_counts,
)
from bench.report import read_results_csv
from tests.helpers import run_sampler


def _truth(oracle) -> Reference:
    mixture = oracle.mixture
    return Reference("oracle_fd", mixture.mean().double().numpy(), mixture.covariance().double().numpy())


def test_paired_interval_is_narrower_than_unpaired_for_two_deterministic_samplers_on_the_oracle(registry, oracle):
    spec = registry.samplers["ddim"]
    images = torch.arange(300)
    uniform, _ = run_sampler(spec, spec.resolve_params(), oracle, 10, images)
    quadratic, _ = run_sampler(spec, spec.resolve_params({"plan": "quadratic"}), oracle, 10, images)
    rows = {"uniform": uniform.reshape(300, -1), "quadratic": quadratic.reshape(300, -1)}
    reference = _truth(oracle)
    ones = torch.ones(1, 300, dtype=torch.float64)
    points = {k: float(bootstrap_distances(v, ones, reference)[0]) for k, v in rows.items()}
    (comparison,) = compare_rows(rows, points, reference, resamples=200)
    assert comparison.width_ratio < 0.6  # measured 0.23 at n=400: the pairing removes most of the noise
    assert comparison.paired[0] <= comparison.diff <= comparison.paired[1]


def test_equivalent_samplers_are_the_same_samples_not_a_significant_difference(registry, oracle):
    images = torch.arange(64)
    eta1, _ = run_sampler(registry.samplers["ddim"], registry.samplers["ddim"].resolve_params({"eta": 1.0}), oracle,
                          10, images)
    stride, _ = run_sampler(registry.samplers["stride-uniform"], registry.samplers["stride-uniform"].resolve_params(),
                            oracle, 10, images)
    rows = {"ddim-eta1": eta1.reshape(64, -1), "stride-uniform": stride.reshape(64, -1)}
    (comparison,) = compare_rows(rows, {"ddim-eta1": 1.0, "stride-uniform": 1.0 + 1e-7}, _truth(oracle),
                                 resamples=50)
    assert comparison.same_samples and not comparison.significant


def test_saved_rows_are_the_scored_samples_and_the_report_rebuilds_pairs_from_the_folder(registry, tmp_path):
    config = RunConfig(samplers=("ddim", "ddim:plan=quadratic"), steps=(6,), model="gaussian-oracle",
                       num_samples=40, batch_size=16, grid_images=0, trajectory_images=0, bootstrap=30)
    out = run_benchmark(config, registry, out=str(tmp_path / "run"), quiet=True)
    df = read_results_csv(out / "results.csv")
    reference = load_reference(out)
    assert reference.column == "oracle_fd"
    for _, row in df.iterrows():
        rows = np.load(out / row["features_file"])
        assert rows.shape == (40, 64) and rows.dtype == np.float32
        assert (np.load(out / row["features_file"].replace(".npy", ".idx.npy")) == np.arange(40)).all()
        rebuilt = bootstrap_distances(torch.from_numpy(rows), torch.ones(1, 40, dtype=torch.float64), reference)
        assert float(rebuilt[0]) == pytest.approx(row["oracle_fd"], rel=1e-4)  # float32 rows, float64 moments
    table = paired_table(out, df, resamples=30)
    assert len(table) == 1 and table["diff"].iloc[0] == pytest.approx(df["oracle_fd"].min() - df["oracle_fd"].max())
    assert (out / "paired.csv").exists() and "Paired comparisons" in (out / "report.md").read_text()
    (out / df["features_file"].iloc[0]).unlink()  # a deleted rows file drops that row's pairs, not the report
    assert paired_table(out, df, resamples=30).empty
    run_benchmark(config, registry, out=str(out), force=True, quiet=True)  # --force knows features/ and paired.csv


def test_paired_fid_interval_is_narrower_on_digits_and_reuses_the_fid_bootstrap(registry, tmp_path):
    config = RunConfig(samplers=("ddim", "ddim:plan=quadratic"), steps=(10,), model="digits", num_samples=200,
                       batch_size=200, grid_images=0, trajectory_images=0, bootstrap=100, metrics=("fid",))
    out = run_benchmark(config, registry, out=str(tmp_path / "digits"), quiet=True)
    df = read_results_csv(out / "results.csv")
    table = paired_table(out, df, resamples=100)
    assert len(table) == 1 and table["width_ratio"].iloc[0] < 0.8
    # the values the FID metric saved are the report's own resamples (same seed, same draws)
    features = df["features_file"].iloc[0]
    saved = np.load(out / features.replace(".npy", ".boot.npy"))
    recomputed = bootstrap_distances(torch.from_numpy(np.load(out / features)), resample_counts(200, 100, 0),
                                     load_reference(out))
    assert recomputed.numpy() == pytest.approx(saved, rel=1e-4)


def test_fid_infinity_removes_most_of_the_small_sample_bias_on_exact_samples(oracle):
    from bench.paired import fid_infinity
    reference, ones = _truth(oracle), torch.ones(1, 1000, dtype=torch.float64)
    at_n, extrapolated = [], []
    for seed in range(4):  # exact samples: the true distance is 0, so what FD measures at n = 1000 is bias
        rows = oracle.mixture.sample(1000, generator=torch.Generator().manual_seed(seed)).reshape(1000, -1).double()
        at_n.append(float(bootstrap_distances(rows, ones, reference)[0]))
        extrapolated.append(abs(fid_infinity(rows, reference)[0]))
    assert sum(extrapolated) < sum(at_n) / 4  # measured 0.035 against 0.235


def test_compare_gives_a_paired_interval_for_two_runs_on_the_same_images(registry, tmp_path):
    from bench.report import compare
    base = dict(samplers=("ddim",), steps=(5,), model="digits", num_samples=100, batch_size=100, grid_images=0,
                trajectory_images=0, bootstrap=100, metrics=("fid",))
    fp32 = run_benchmark(RunConfig(**base), registry, out=str(tmp_path / "fp32"), quiet=True)
    bf16 = run_benchmark(RunConfig(**base, precision="bf16"), registry, out=str(tmp_path / "bf16"), quiet=True)
    row = compare(fp32, bf16).iloc[0]
    assert row["fid_diff_ci_low"] <= row["fid_diff_b_minus_a"] <= row["fid_diff_ci_high"]
    per_row = read_results_csv(fp32 / "results.csv").iloc[0]
    assert row["fid_diff_ci_high"] - row["fid_diff_ci_low"] < (per_row["fid_ci_high"] - per_row["fid_ci_low"]) / 2


def test_compare_of_two_guided_runs_pairs_each_guidance_scale_with_itself(registry, tmp_path):
    """Each w of a guided run is its own configuration: compare matches w with w (one row each, not every w of
    one run against every w of the other), and each row's paired interval is that w's."""
    from bench.report import compare
    base = dict(samplers=("ddim",), steps=(4,), model="gaussian-oracle-cond", guidance=(0.0, 2.0), classes=(0, 2),
                num_samples=48, batch_size=48, grid_images=0, trajectory_images=0, bootstrap=50,
                metrics=("oracle-fd",))
    a = run_benchmark(RunConfig(**base), registry, out=str(tmp_path / "a"), quiet=True)
    b = run_benchmark(RunConfig(**base, precision="bf16"), registry, out=str(tmp_path / "b"), quiet=True)
    table = compare(a, b)
    assert sorted(table["guidance"]) == [0.0, 2.0]
    rows_a = read_results_csv(a / "results.csv").set_index("guidance")
    rows_b = read_results_csv(b / "results.csv").set_index("guidance")
    assert rows_a.loc[0.0, "oracle_fd"] != rows_a.loc[2.0, "oracle_fd"]
    for _, row in table.iterrows():
        w = row["guidance"]
        assert row["oracle_fd_a"] == rows_a.loc[w, "oracle_fd"] and row["oracle_fd_b"] == rows_b.loc[w, "oracle_fd"]
        assert row["oracle_fd_diff_b_minus_a"] == pytest.approx(rows_b.loc[w, "oracle_fd"] - rows_a.loc[w, "oracle_fd"])
        assert row["oracle_fd_diff_ci_low"] <= row["oracle_fd_diff_b_minus_a"] <= row["oracle_fd_diff_ci_high"]
