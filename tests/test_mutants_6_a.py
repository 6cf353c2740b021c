"""Tests for the survivors of hand mutation run 6, helper a (numerics; /work/tmp/r6/a/report.md)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import torch


def test_restarts_karras_grid_ends_on_the_bottom_sigma_at_equal_steps_in_sigma_to_the_one_over_rho():
    """Karras et al. (2022), Eq. 5: sigma_i = (top^(1/rho) + i / (n - 1) (bottom^(1/rho) - top^(1/rho)))^rho, so the
    grid ends exactly on the bottom sigma (Restart's t_min) and its inner points are equally spaced in sigma^(1/7)."""
    from samplers.kdiffusion import karras_sigmas

    top, bottom, rho = 2.0, 0.05, 7.0
    for n in (2, 3, 5):
        sigmas = karras_sigmas(top, bottom, n, rho)
        assert len(sigmas) == n
        assert math.isclose(sigmas[0], top, rel_tol=1e-12) and math.isclose(sigmas[-1], bottom, rel_tol=1e-12)
        roots = [s ** (1 / rho) for s in sigmas]
        gaps = [a - b for a, b in itertools.pairwise(roots)]
        assert all(math.isclose(g, gaps[0], rel_tol=1e-9) for g in gaps)


def test_edm_stochastic_reports_the_x0_predicted_at_the_churned_level_it_evaluated():
    """The callback's x0 is 'as predicted at the churned point': D(x_hat; sigma_hat) = x0_from_eps at the level
    the model was called at, not at the plan level (they differ whenever gamma > 0)."""
    from bench import x0_from_eps
    from bench.sampling import batch_noise
    from models.oracle import OracleDenoiser, make_mixture
    from samplers.karras import sample_edm_stochastic

    class Recording(OracleDenoiser):
        def __init__(self):
            super().__init__(make_mixture(8))
            self.calls = []

        def predict_eps(self, x_t, t, cond=None):
            eps = super().predict_eps(x_t, t, cond)
            self.calls.append((x_t.clone(), float(t[0]), eps.clone()))
            return eps

    den = Recording()
    noise = batch_noise(0, torch.arange(3), den.image_shape, dtype=torch.float64)
    seen = []
    sample_edm_stochastic(den, noise.initial(), [999, 400, 100], noise, s_churn=40.0, s_tmin=0.0, s_tmax=math.inf,
                          callback=lambda s: seen.append(s))
    x_hat, t_hat, eps = den.calls[2]   # step 1's first call (step 0 made two), at the churned level
    assert t_hat > 400                 # gamma > 0 raised it (at step 0 the churn is capped at sigma_max: no change)
    assert seen[1]["t"] == 400
    expected = x0_from_eps(x_hat, eps, den.schedule.alpha_bar_at(t_hat))
    torch.testing.assert_close(seen[1]["x0"], expected, rtol=1e-9, atol=1e-9)


def test_the_per_path_order_table_gives_each_solvers_own_seeded_order(monkeypatch):
    """`bench orders --model a,b`: 'each solver's own order (seeded where it takes history)', not the order its
    standard warm-up caps it at."""
    from bench import orders
    from bench.plugins import load_registry

    def fake_measure(case, registry, denoiser, steps, num_images):
        return orders.OrderResult(case, [10, 20], [1e-2, 2.5e-3], [1e-2, 1.25e-3])  # warm-up 2, own 3

    monkeypatch.setattr(orders, "measure", fake_measure)
    case = orders.OrderCase("dpmpp-3m", "dpm-solver++", 3, {"order": 3})
    table = orders.path_order_table(load_registry(), models=("gaussian-single",), cases=(case,))
    assert table.splitlines()[-1] == "| dpmpp-3m | 3 | 3.00 |"


def test_cosine_betas_are_clipped_at_0_999_as_nichol_and_dhariwal():
    """Improved DDPM (Nichol & Dhariwal 2021, Sec. 3.2): betas from the cosine alpha_bar, clipped to be no larger
    than 0.999 (diffusers' betas_for_alpha_bar(max_beta=0.999))."""
    from bench.schedule import make_betas

    betas = make_betas("cosine", 1000)
    s = 0.008
    f = [math.cos((t / 1000 + s) / (1 + s) * math.pi / 2) ** 2 for t in range(1001)]
    expected = [min(1 - f[t + 1] / f[t], 0.999) for t in range(1000)]
    torch.testing.assert_close(betas, torch.tensor(expected, dtype=torch.float64), rtol=1e-9, atol=1e-12)
    assert float(betas[-1]) == 0.999


def test_the_reference_of_a_guided_run_converges_against_the_guided_solution_at_half_the_steps():
    """The convergence check solves the same (guided, class-conditional) ODE at CONVERGENCE_STEPS: on the exact
    conditional oracle the two solutions agree far below the tolerance."""
    from bench.plugins import load_registry
    from bench.reference import CONVERGENCE_TOLERANCE, compute_references

    registry = load_registry()
    den = registry.model("gaussian-oracle-cond").load("cpu")
    refs = compute_references(registry, den, [(0, 4)], seed=0, num_samples=4, classes=(0, 2), guidance=2.0)
    convergence = refs.info["convergence"]
    assert convergence["converged"] and convergence["rms_difference"] < CONVERGENCE_TOLERANCE / 10


def test_compares_paired_interval_is_of_b_minus_a_bootstrap_values(monkeypatch, tmp_path):
    """`bench compare`: the interval of fid_diff_b_minus_a is shifted_interval(diff, FID_b(r) - FID_a(r)) over the
    shared resamples r; a - b would mirror a skewed bootstrap distribution's interval around its median."""
    from bench import paired, report
    from bench.frechet import resample_counts, shifted_interval, weighted_fid

    generator = torch.Generator().manual_seed(0)
    rows_a = torch.randn(40, 3, generator=generator)
    rows_b = rows_a + torch.randn(40, 3, generator=generator) ** 2  # a shifted, skewed second run
    ref = paired.Reference("fid", np.zeros(3), np.eye(3))
    dir_a, dir_b = tmp_path / "a", tmp_path / "b"
    existing = tmp_path / "rows.npy"
    existing.write_bytes(b"")
    df = pd.DataFrame({"sampler": ["s"], "steps": [10], "features_file": ["features/s.npy"]})
    config = {"config": {"seed": 0, "bootstrap": 50}, "num_samples": 40}
    monkeypatch.setattr(report, "load_results", lambda d: (df, config))
    monkeypatch.setattr(paired, "load_reference", lambda d: ref)
    monkeypatch.setattr(paired, "feature_file", lambda d, f, *a: existing)
    monkeypatch.setattr(paired, "load_rows", lambda d, f, r: rows_a if d == dir_a else rows_b)
    ones = torch.ones(1, 40, dtype=torch.float64)
    diff = float(weighted_fid(rows_b, ones, ref)[0] - weighted_fid(rows_a, ones, ref)[0])
    merged = pd.DataFrame({"sampler": ["s"], "steps": [10], "fid_diff_b_minus_a": [diff]})
    out = paired.paired_across_runs(dir_a, dir_b, merged, "fid")
    counts = resample_counts(40, 50, 0)
    values = weighted_fid(rows_b, counts, ref) - weighted_fid(rows_a, counts, ref)
    low, high = shifted_interval(diff, values)
    mirrored = shifted_interval(diff, -values)
    assert abs((high - diff) - (diff - low)) > 1e-3  # the distribution is skewed: the direction matters
    assert (out["fid_diff_ci_low"].iloc[0], out["fid_diff_ci_high"].iloc[0]) == (low, high) != mirrored


def test_oracle_moments_merged_from_two_ranks_are_the_moments_of_all_their_images():
    """OracleFD.merge_shards sums every rank's count, pixel sums and outer products: the merged mean and
    covariance are those of all images together."""
    from models.metrics import OracleFD, OracleTruth

    generator = torch.Generator().manual_seed(1)
    images = torch.randn(12, 1, 2, 2, generator=generator, dtype=torch.float64) + 0.5
    truth = OracleTruth(torch.zeros(4, dtype=torch.float64), torch.eye(4, dtype=torch.float64))
    ranks = [OracleFD(truth), OracleFD(truth)]
    ranks[0].update(images[:5])
    ranks[1].update(images[5:])
    merged = OracleFD(truth)
    merged.merge_shards([r.shard_state() for r in ranks])
    flat = images.reshape(12, -1)
    torch.testing.assert_close(merged.moments.mean(), flat.mean(0))
    torch.testing.assert_close(merged.moments.covariance(), torch.cov(flat.T))
