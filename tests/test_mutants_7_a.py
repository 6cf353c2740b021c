"""Tests for the survivors of hand mutation run 7, helper a (numerics; docs/mutation-run-7-a.md)."""

from __future__ import annotations

import math

import pytest
import torch


@pytest.mark.parametrize("eta", [0.0, 0.25, 0.5, 1.0, 2.0])
def test_ddim_sigma_is_eta_times_the_posterior_standard_deviation(eta):
    """DDIM Eq. 16: sigma_t(eta) = eta sqrt((1 - a_prev) / (1 - a_t)) sqrt(1 - a_t / a_prev), i.e. eta times the
    standard deviation of DDPM's posterior q(x_{t-1} | x_t, x_0) (beta~_t, the schedule's posterior_variance) on
    consecutive timesteps; linear in eta, not in eta^2. (Only the golden values saw this before: round 7, Z01.)"""
    from bench.schedule import NoiseSchedule
    from samplers.ddim import ddim_sigma

    schedule = NoiseSchedule.linear(1000)
    posterior = schedule.posterior_variance()
    for t in (1, 500, 999):
        a_t, a_prev = float(schedule.alpha_bar[t]), float(schedule.alpha_bar[t - 1])
        assert math.isclose(ddim_sigma(a_t, a_prev, eta), eta * math.sqrt(float(posterior[t])), rel_tol=1e-9,
                            abs_tol=1e-15)


def test_dpmpp_sde_takes_each_steps_second_increment_from_its_own_stream_on_long_plans(registry, oracle):
    """k-diffusion's Brownian tree gives every step an independent increment over [sigma_next, s]: here stream
    EXTRA_STREAM + i at step i (samplers/kdiffusion.py), for every step of a plan longer than one block of
    STEP_BLOCK (16) noise draws, and the sampler's second draws are exactly those streams in order."""
    from bench.noise import STEP_BLOCK
    from bench.sampling import batch_noise
    from samplers.kdiffusion import EXTRA_STREAM, extra_draws
    from tests.helpers import run_sampler

    steps = STEP_BLOCK + 6
    base = batch_noise(0, torch.arange(2), oracle.image_shape, dtype=torch.float64)
    asked = []

    def noise(step):
        asked.append(step)
        return base(step)

    noise.initial = base.initial
    spec = registry.samplers["dpmpp-sde"]
    run_sampler(spec, spec.resolve_params({}), oracle, steps, torch.arange(2), noise=noise)
    assert set(range(EXTRA_STREAM, EXTRA_STREAM + steps - 1)) <= set(asked)
    draws = extra_draws(base)
    for k in range(2 * STEP_BLOCK + 3):
        torch.testing.assert_close(next(draws), base(EXTRA_STREAM + k), rtol=0, atol=0)


@pytest.mark.parametrize("beta", [0.01, 2e-4])
def test_vp_continuous_with_constant_betas_inverts_lambda_and_sigma_exactly(beta):
    """beta_start == beta_end: log alpha(t) = -beta_0 t / 2 (the linear schedule's closed form with b1 = b0), so
    t = -2 log alpha / beta_0, and t_from_lambda / t_from_sigma are the exact inverses there too."""
    from bench.paths import PathConfig, make_path

    path = make_path(PathConfig(kind="vp-continuous", beta_start=beta, beta_end=beta))
    for t in (path.t_min, 0.1, 0.5, path.t_max):
        assert math.isclose(path.log_alpha(t), -0.5 * beta * path.path_config.num_timesteps * t, rel_tol=1e-12)
        assert math.isclose(path.t_from_lambda(path.lambda_at(t)), t, rel_tol=1e-9)
        assert math.isclose(path.t_from_sigma(path.sigma_at(t)), t, rel_tol=1e-9)


def test_the_reference_convergence_check_records_the_rms_difference_against_its_rms_tolerance(registry,
                                                                                              monkeypatch):
    """config.json's reference.convergence: rms_difference is the RMS per pixel of (half-step solution - reference),
    compared with CONVERGENCE_TOLERANCE (RMS per pixel): a 0.02 difference everywhere is 0.02, not converged."""
    import bench.reference
    from bench.reference import CONVERGENCE_STEPS, CONVERGENCE_TOLERANCE, compute_references
    from models.oracle import OracleDenoiser, make_mixture

    den = OracleDenoiser(make_mixture(8))

    def fake_solve(registry, denoiser, indices, steps, seed, classes, guidance):
        offset = 0.02 if steps == CONVERGENCE_STEPS else 0.0
        return torch.full((len(indices), *denoiser.image_shape), 0.5 + offset)

    monkeypatch.setattr(bench.reference, "_solve", fake_solve)
    info = compute_references(registry, den, [(0, 3)], 0, 3).info
    assert CONVERGENCE_TOLERANCE < 0.02
    assert info["convergence"]["rms_difference"] == pytest.approx(0.02, rel=1e-5)
    assert info["convergence"]["converged"] is False
