"""Exact-answer tests of every registered sampler on the Gaussian-mixture oracle."""

import math

import pytest
import torch

from bench.measure import CountingDenoiser
from bench.noise import NoiseSource, StepNoise
from bench.plugins import load_registry
from tests.helpers import all_configurations, oracle_for, run_sampler

CONFIGS = all_configurations(load_registry())
IDS = [c[0] for c in CONFIGS]
T = 1000


def _steps(spec, params, steps):
    return None if spec.fixed_steps(T, params) is not None else steps


@pytest.mark.parametrize("label,spec,params", CONFIGS, ids=IDS)
def test_conformance_shape_finite_deterministic_and_exact_nfe(label, spec, params, oracle):
    oracle = oracle_for(spec, oracle)
    counter = CountingDenoiser(oracle)
    stats = {}
    x, timesteps = run_sampler(spec, params, counter, _steps(spec, params, 7), torch.arange(6), stats=stats)
    assert x.shape == (6, *oracle.image_shape)
    assert bool(torch.isfinite(x).all())
    if spec.adaptive:  # its calls per image vary: what it reports per image adds up to the rows counted
        assert spec.expected_nfe(timesteps, params) is None
        assert int(stats["image_nfe"].sum()) == counter.rows and stats["image_nfe"].min() >= 2
    else:
        assert counter.calls == spec.expected_nfe(timesteps, params)
    again, _ = run_sampler(spec, params, oracle, _steps(spec, params, 7), torch.arange(6))
    assert torch.equal(x, again)


@pytest.mark.parametrize("label,spec,params", CONFIGS, ids=IDS)
def test_conformance_moments_match_the_oracle_at_many_steps(label, spec, params, oracle):
    oracle = oracle_for(spec, oracle)
    n = 1000
    x, _ = run_sampler(spec, params, oracle, _steps(spec, params, 250), torch.arange(n))
    flat = x.view(n, -1).double()
    mixture = oracle.mixture
    mean_err = (flat.mean(0) - mixture.mean()).abs().max()
    var_err = (flat.var(0) - mixture.covariance().diag()).abs().max()
    assert mean_err < 0.12, f"{label}: mean error {mean_err:.3f}"
    assert var_err < 0.15, f"{label}: variance error {var_err:.3f}"


@pytest.mark.parametrize("label,spec,params", CONFIGS, ids=IDS)
def test_last_step_adds_no_noise(label, spec, params, oracle):
    """Noise for the last loop index is NaN: a sampler that uses it returns NaN."""
    oracle = oracle_for(spec, oracle)
    _assert_last_step_adds_no_noise(spec, params, oracle)


def test_edm_churn_adds_no_noise_on_the_final_jump_whatever_its_range(registry, oracle):
    spec = registry.samplers["edm-stochastic"]
    _assert_last_step_adds_no_noise(spec, spec.resolve_params({"s_tmin": 0, "s_tmax": "inf"}), oracle)


def _assert_last_step_adds_no_noise(spec, params, oracle):
    images = torch.arange(3)
    timesteps = spec.timesteps(oracle.schedule, _steps(spec, params, 5), params)
    last = len(timesteps) - 1
    base = StepNoise(NoiseSource(0), images, oracle.image_shape)

    class PoisonedLastStep(StepNoise):
        def __call__(self, step):
            return torch.full_like(base(step), math.nan) if step >= last else base(step)

    poisoned = PoisonedLastStep(NoiseSource(0), images, oracle.image_shape)
    x, _ = run_sampler(spec, params, oracle, _steps(spec, params, 5), images, noise=poisoned)
    assert bool(torch.isfinite(x).all())


@pytest.mark.parametrize("label,spec,params", CONFIGS, ids=IDS)
def test_an_image_does_not_depend_on_the_batch_it_is_in(label, spec, params, oracle):
    oracle = oracle_for(spec, oracle)
    whole, _ = run_sampler(spec, params, oracle, _steps(spec, params, 6), torch.arange(10))
    part, _ = run_sampler(spec, params, oracle, _steps(spec, params, 6), torch.arange(7, 10))
    assert torch.allclose(whole[7:], part, atol=1e-5)


@pytest.mark.parametrize("label,spec,params", CONFIGS, ids=IDS)
def test_callback_sees_every_step_with_x_t_and_predicted_x0(label, spec, params, oracle):
    oracle = oracle_for(spec, oracle)
    seen = []
    _, timesteps = run_sampler(spec, params, oracle, _steps(spec, params, 4), torch.arange(2),
                               callback=lambda s: seen.append((s["t"], s["x"].shape, s["x0"].shape)))
    assert [t for t, _, _ in seen] == list(timesteps[: len(seen)])
    assert len(seen) == len(timesteps) * spec.nfe_per_step or len(seen) == len(timesteps)
    assert all(a == oracle.image_shape and a == b for _, a_, b in seen for a in [a_[1:]] for b in [b[1:]])


def test_ddpm_reproduces_the_oracle_mean_and_variance_within_monte_carlo_error(registry, oracle):
    n = 4000
    spec = registry.samplers["ddpm"]
    x, _ = run_sampler(spec, spec.resolve_params(), oracle, None, torch.arange(n), dtype=torch.float64)
    flat = x.view(n, -1)
    mean, var = oracle.mixture.mean(), oracle.mixture.covariance().diag()
    # 5 standard errors per pixel over 64 pixels: a false alarm has probability < 1e-4.
    assert bool(((flat.mean(0) - mean).abs() < 5 * (var / n).sqrt()).all())
    fourth = ((flat - mean) ** 4).mean(0)
    var_se = ((fourth - var**2) / n).sqrt()
    assert bool(((flat.var(0) - var).abs() < 5 * var_se + 2e-3).all())


def test_ddim_with_eta_one_on_the_full_schedule_equals_ddpm_element_by_element(registry, oracle):
    images = torch.arange(16)
    ddpm, _ = run_sampler(registry.samplers["ddpm"], {"variance": "small"}, oracle, None, images,
                          dtype=torch.float64)
    ddim_spec = registry.samplers["ddim"]
    ddim, _ = run_sampler(ddim_spec, ddim_spec.resolve_params({"eta": 1.0}), oracle, T, images, dtype=torch.float64)
    assert torch.allclose(ddpm, ddim, atol=1e-8, rtol=0)


def test_ddim_with_eta_one_equals_ancestral_sampling_on_the_same_respaced_timesteps(registry, oracle):
    images = torch.arange(16)
    stride, _ = run_sampler(registry.samplers["stride-uniform"], {"variance": "small"}, oracle, 25, images,
                            dtype=torch.float64)
    ddim_spec = registry.samplers["ddim"]
    ddim, _ = run_sampler(ddim_spec, ddim_spec.resolve_params({"eta": 1.0}), oracle, 25, images,
                          dtype=torch.float64)
    assert torch.allclose(stride, ddim, atol=1e-8, rtol=0)


def test_a_stride_plan_keeping_all_timesteps_equals_ddpm(registry, oracle):
    images = torch.arange(8)
    ddpm, _ = run_sampler(registry.samplers["ddpm"], {"variance": "small"}, oracle, None, images)
    stride, timesteps = run_sampler(registry.samplers["stride-uniform"], {"variance": "small"}, oracle, T, images)
    assert timesteps == list(range(T - 1, -1, -1))
    assert torch.equal(ddpm, stride)


def test_ddim_with_eta_zero_is_deterministic_given_x_T(registry, oracle):
    spec = registry.samplers["ddim"]
    a, _ = run_sampler(spec, spec.resolve_params(), oracle, 20, torch.arange(4), seed=0)
    b = spec.fn(oracle, StepNoise(NoiseSource(0), torch.arange(4), oracle.image_shape).initial(),
                spec.timesteps(T, 20, {"plan": "uniform"}), lambda step: torch.randn(4, 1, 8, 8), eta=0.0)
    assert torch.equal(a, b)


def test_more_steps_bring_ddim_closer_to_the_data(registry, oracle):
    spec = registry.samplers["ddim"]
    errors = []
    for steps in (5, 20, 100):
        x, _ = run_sampler(spec, spec.resolve_params(), oracle, steps, torch.arange(2000))
        errors.append(float((x.view(2000, -1).double().var(0) - oracle.mixture.covariance().diag()).abs().mean()))
    assert errors[0] > errors[1] > errors[2]
