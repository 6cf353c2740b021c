"""Continuous noise levels, the exact ODE map, and the Karras / DPM-Solver family proven by their orders."""

import math

import pytest
import torch

from bench.denoiser import Denoiser, DenoiserInfo
from bench.errors import UserError
from bench.measure import CountingDenoiser
from bench.ode import step_order
from bench.orders import ORDER_CASES, fit_order, measure
from bench.plans import logsnr_times
from bench.schedule import NoiseSchedule
from models.oracle import OracleDenoiser, make_gaussian, make_mixture
from tests.helpers import run_sampler

T = 1000


class TimeEcho(torch.nn.Module):
    """A 'network' whose output is the time it received, to see what the Denoiser passes on."""

    def forward(self, x, t):
        return t.to(x.dtype).view(-1, *[1] * (x.dim() - 1)).expand_as(x).clone()


@pytest.fixture(scope="module")
def echo():
    return Denoiser(NoiseSchedule.linear(T), DenoiserInfo("echo", (1, 2, 2)), TimeEcho())


@pytest.fixture(scope="module")
def gaussian():
    return OracleDenoiser(make_gaussian(8), name="gaussian-single")


@pytest.mark.parametrize("t,expected", [(2.4, 2), (2.5, 3), (2.6, 3), (3.5, 4), (-0.3, 0), (999.4, 999)])
def test_a_discrete_model_gets_the_nearest_trained_timestep_never_a_truncated_one(echo, t, expected):
    x = torch.zeros(3, 1, 2, 2)
    assert echo.round_time(t) == expected
    assert bool((echo(x, t) == expected).all())
    assert bool((echo(x, torch.tensor([t] * 3, dtype=torch.float64)) == expected).all())


def test_integer_timesteps_reach_a_discrete_model_unchanged(echo):
    x = torch.zeros(2, 1, 2, 2)
    assert bool((echo(x, 17) == 17).all()) and bool((echo(x, torch.tensor([5, 6])) == torch.tensor([5.0, 6.0])
                                                     .view(2, 1, 1, 1)).all())


def test_the_oracle_is_continuous_in_time_and_exact_between_timesteps(oracle):
    assert oracle.continuous_time and oracle.round_time(12.3) == 12.3
    x = torch.randn(5, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    a = oracle.schedule.alpha_bar_at(12.3)
    exact = oracle.mixture.optimal_eps(x, torch.tensor(a, dtype=torch.float64))
    assert torch.allclose(oracle(x, 12.3), exact, rtol=0, atol=1e-13)
    assert not torch.allclose(oracle(x, 12.3), oracle(x, 12))


def test_the_exact_map_composes_and_carries_the_noisy_marginal_onto_the_data(gaussian):
    g, s = gaussian.mixture, gaussian.schedule
    mu, var = g.means[0].view(1, 1, 8, 8), g.variances[0].view(1, 1, 8, 8)
    z = torch.randn(20000, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    a0, a1 = s.alpha_bar_at(999), s.alpha_bar_at(400.5)
    x_T = math.sqrt(a0) * mu + (a0 * var + 1 - a0).sqrt() * z  # exact samples of the noisy marginal
    assert torch.allclose(g.exact_ode_map(g.exact_ode_map(x_T, a0, a1), a1, 1.0), g.exact_ode_map(x_T, a0, 1.0),
                          rtol=0, atol=1e-12)
    clean = g.exact_ode_map(x_T, a0, 1.0).view(20000, -1)
    assert bool(((clean.mean(0) - g.means[0]).abs() < 5 * (g.variances[0] / 20000).sqrt()).all())
    assert bool(((clean.var(0) / g.variances[0] - 1).abs() < 0.06).all())


def test_the_exact_map_is_the_flow_of_the_oracles_eps(gaussian):
    """dx_edm/dsigma = eps*(x) (Karras et al. 2022, Eq. 1 in EDM variables), by central differences."""
    g, s = gaussian.mixture, gaussian.schedule
    x_T = torch.randn(4, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    a_T, t = s.alpha_bar_at(999), 123.4
    sigma, delta = s.sigma_at(t), 1e-5

    def x_edm(sig):
        a = 1 / (1 + sig * sig)
        return g.exact_ode_map(x_T, a_T, a) / math.sqrt(a)

    slope = (x_edm(sigma + delta) - x_edm(sigma - delta)) / (2 * delta)
    x_t = g.exact_ode_map(x_T, a_T, s.alpha_bar_at(t))
    assert torch.allclose(slope, gaussian(x_t, t), rtol=0, atol=1e-6)


def test_the_exact_map_refuses_a_mixture():
    with pytest.raises(ValueError):
        make_mixture(8).exact_ode_map(torch.zeros(1, 1, 8, 8), 0.5, 0.9)


def test_fit_order_recovers_a_known_power_and_ignores_round_off():
    nfe = [20, 40, 80, 160, 320]
    assert fit_order(nfe, [3.0 * n**-2.0 for n in nfe]) == pytest.approx(2.0)
    assert fit_order(nfe, [n**-3.0 for n in nfe[:3]] + [1e-15, 1e-15]) == pytest.approx(3.0)


# ----------------------------------------------------------------------------- solvers: orders of accuracy

ORDER_STEPS = (20, 40, 80, 160, 320)
MY_CASES = [c for c in ORDER_CASES if c.label in ("ddim", "euler", "heun", "dpm-solver-2", "dpmpp-2m", "dpmpp-3m")]


@pytest.fixture(scope="module")
def single(registry):
    return registry.model("gaussian-single").load("cpu")


@pytest.mark.parametrize("case", [c for c in MY_CASES if c.nominal < 3], ids=lambda c: c.label)
def test_measured_order_equals_the_nominal_order_on_the_exact_gaussian_flow(case, registry, single):
    result = measure(case, registry, single, ORDER_STEPS, num_images=8)
    own = result.seeded_order if result.seeded_order is not None else result.order
    assert abs(own - case.nominal) < 0.3, f"{case.label}: own order {own:.2f}"
    assert abs(result.order - case.nominal) < 0.3, f"{case.label}: order with warm-up {result.order:.2f}"


def test_third_order_multistep_is_at_least_third_order_on_the_gaussian(registry, single):
    """On a single Gaussian its h^3 error term nearly cancels (x0 is almost constant in lambda along exact
    trajectories), so it measures ~4 over NFE 20-320; the mixture test below shows the asymptotic 3."""
    result = measure(next(c for c in MY_CASES if c.label == "dpmpp-3m"), registry, single, ORDER_STEPS, 8)
    assert result.seeded_order > 2.7 and result.order > 2.7


def _final_state(spec, params, denoiser, x_T, steps):
    seen = {}
    spec.fn(denoiser, x_T, logsnr_times(denoiser.schedule, steps), None, callback=seen.update,
            **spec.sampler_kwargs(params))
    return seen["x"]


@pytest.mark.parametrize("order,nominal", [(2, 2), (3, 3)])
def test_third_order_and_2m_converge_at_their_order_on_a_mixture_against_a_fine_reference(registry, oracle, order,
                                                                                           nominal):
    spec = registry.samplers["dpm-solver++"]
    params = spec.resolve_params({"order": order})
    x_T = torch.randn(8, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    reference = _final_state(spec, spec.resolve_params({"order": 3}), oracle, x_T, 2560)
    nfe = [80, 160, 320]
    errors = [float((_final_state(spec, params, oracle, x_T, n) - reference).pow(2).mean().sqrt()) for n in nfe]
    assert abs(fit_order(nfe, errors) - nominal) < 0.3


# ----------------------------------------------------------------------------- solvers: exact identities

def _run(registry, name, overrides, denoiser, steps, images=torch.arange(8), **kw):
    spec = registry.samplers[name]
    return run_sampler(spec, spec.resolve_params(overrides), denoiser, steps, images, dtype=torch.float64, **kw)


@pytest.mark.parametrize("plan", ["uniform", "karras", "logsnr"])
def test_euler_in_edm_variables_is_ddim_on_the_same_plan(registry, oracle, plan):
    euler, t1 = _run(registry, "euler", {"plan": plan}, oracle, 12)
    ddim, t2 = _run(registry, "ddim", {"plan": plan}, oracle, 12)
    assert t1 == t2 and torch.allclose(euler, ddim, rtol=0, atol=1e-10)


def test_first_order_dpm_solver_pp_is_ddim(registry, oracle):
    dpm, _ = _run(registry, "dpm-solver++", {"order": 1}, oracle, 15)
    ddim, _ = _run(registry, "ddim", {"plan": "logsnr"}, oracle, 15)
    assert torch.allclose(dpm, ddim, rtol=0, atol=1e-10)


def test_lower_order_final_and_warm_up_orders_on_a_short_plan():
    assert [step_order(3, i, 5, 0, True) for i in range(5)] == [1, 2, 3, 2, 1]
    assert [step_order(3, i, 5, 0, False) for i in range(5)] == [1, 2, 3, 3, 3]
    assert [step_order(3, i, 20, 2, True) for i in range(3)] == [3, 3, 3]


@pytest.mark.parametrize("name", ["dpm-solver++", "dpm-solver-2", "heun", "euler"])
def test_afs_saves_exactly_one_call_and_stays_close(registry, oracle, name):
    counter = CountingDenoiser(oracle)
    with_afs, timesteps = _run(registry, name, {"afs": True}, counter, 10)
    spec = registry.samplers[name]
    assert counter.calls == spec.expected_nfe(timesteps, {"afs": False}) - 1
    without, _ = _run(registry, name, {}, oracle, 10)
    assert (with_afs - without).abs().max() < 0.05


class DiscreteOracle(OracleDenoiser):
    """The oracle as a discrete-time model, recording every timestep it is evaluated at."""

    continuous_time = False

    def __init__(self, mixture):
        super().__init__(mixture)
        self.seen = []

    def predict_eps(self, x_t, t, cond=None):
        self.seen += t.unique().tolist()
        assert not t.is_floating_point()
        return super().predict_eps(x_t, t, cond)


@pytest.mark.parametrize("name,overrides", [("dpm-solver-2", {}), ("edm-stochastic", {"s_tmin": 0.0})])
def test_intermediate_levels_on_a_discrete_model_are_trained_timesteps(registry, name, overrides):
    model = DiscreteOracle(make_mixture(8))
    x, timesteps = _run(registry, name, overrides, model, 8)
    assert bool(torch.isfinite(x).all())
    extra = set(model.seen) - set(timesteps)
    assert extra and all(isinstance(t, int) and 0 <= t < T for t in extra)


def test_dpm_solver_2_midpoint_is_the_rounded_log_snr_midpoint(registry):
    model = DiscreteOracle(make_mixture(8))
    _, timesteps = _run(registry, "dpm-solver-2", {}, model, 6)
    s = model.schedule
    mids = {min(model.round_time(s.t_from_lambda((s.lambda_at(a) + s.lambda_at(b)) / 2)), a - 1)
            for a, b in zip(timesteps, timesteps[1:])}
    assert set(model.seen) == set(timesteps) | mids


class NaiveDiscreteGaussian(DiscreteOracle):
    """A discrete-time model whose solver computes coefficients at the requested time, not the one evaluated."""

    def round_time(self, t):
        return t


def test_recomputing_coefficients_at_the_rounded_time_keeps_dpm_solver_2_converging(registry):
    """The rounding rule, on integer log-SNR plans of a discrete-time Gaussian, against the exact map: with
    coefficients at the rounded midpoint the error keeps falling at second order; with coefficients at the
    real midpoint while the network sees the rounded one, it stalls near 1e-3."""
    spec = registry.samplers["dpm-solver-2"]
    x_T = torch.randn(8, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    errors = {}
    for model_class in (DiscreteOracle, NaiveDiscreteGaussian):
        model = model_class(make_gaussian(8))
        for steps in (80, 320):
            plan = spec.timesteps(model.schedule, steps, spec.resolve_params())
            seen = {}
            spec.fn(model, x_T, plan, None, callback=seen.update)
            schedule = model.schedule
            exact = model.mixture.exact_ode_map(x_T, schedule.alpha_bar_at(plan[0]), schedule.alpha_bar_at(plan[-1]))
            errors[model_class, steps] = float((seen["x"] - exact).pow(2).mean().sqrt())
    assert errors[DiscreteOracle, 320] < errors[DiscreteOracle, 80] / 10
    assert errors[DiscreteOracle, 320] < errors[NaiveDiscreteGaussian, 320] / 10


@pytest.mark.parametrize("name", ["dpm-solver-2", "edm-stochastic"])
def test_intermediate_real_times_work_on_the_class_conditional_oracle_too(registry, name):
    model = registry.model("gaussian-oracle-cond").load("cpu")
    x, _ = _run(registry, name, {}, model, 6)
    assert bool(torch.isfinite(x).all())


# ----------------------------------------------------------------------------- stochastic solvers

def test_edm_stochastic_without_churn_is_heun(registry, oracle):
    edm, t1 = _run(registry, "edm-stochastic", {"s_churn": 0.0}, oracle, 9)
    heun, t2 = _run(registry, "heun", {"plan": "karras"}, oracle, 9)
    assert t1 == t2 and torch.allclose(edm, heun, rtol=0, atol=1e-12)


def test_first_order_sde_dpm_solver_pp_is_ddim_with_eta_one_on_the_same_noise(registry, oracle):
    """SDE-DPM-Solver-1's noise variance sigma_n^2 (1 - e^{-2h}) is DDIM's sigma(eta=1)^2 (Lu et al. 2022b)."""
    sde, _ = _run(registry, "dpm-solver++-sde", {"order": 1}, oracle, 12)
    ddim, _ = _run(registry, "ddim", {"eta": 1.0, "plan": "logsnr"}, oracle, 12)
    assert torch.allclose(sde, ddim, rtol=0, atol=1e-10)


@pytest.mark.parametrize("name,overrides", [("edm-stochastic", {"s_noise": 1.0}), ("dpm-solver++-sde", {})])
def test_stochastic_solver_moments_approach_the_oracle_as_steps_grow(registry, oracle, name, overrides):
    n = 3000
    target_var = oracle.mixture.covariance().diag()
    errors = []
    for steps in (5, 25, 150):
        x, _ = _run(registry, name, overrides, oracle, steps, images=torch.arange(n))
        flat = x.view(n, -1)
        errors.append(float((flat.var(0) - target_var).abs().mean() + (flat.mean(0) - oracle.mixture.mean()).abs()
                            .mean()))
    assert errors[0] > errors[2] and errors[2] < 0.02


# ----------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("name,overrides,match", [
    ("dpm-solver++", {"order": 4}, "order"),
    ("dpm-solver++-sde", {"order": 3}, "order"),
    ("heun", {"plan": "full"}, "plan"),
    ("euler", {"rho": 0}, "rho"),
])
def test_bad_solver_options_are_one_line_errors_naming_the_option(registry, name, overrides, match):
    with pytest.raises(UserError, match=match) as info:
        registry.samplers[name].resolve_params(overrides)
    assert "\n" not in str(info.value)


def test_afs_with_one_step_is_refused_while_planning(registry):
    spec = registry.samplers["dpm-solver++"]
    with pytest.raises(UserError, match="afs"):
        spec.timesteps(NoiseSchedule.linear(T), 1, spec.resolve_params({"afs": True}))


def test_a_noise_level_plan_needs_the_schedule(registry):
    spec = registry.samplers["dpm-solver++"]
    with pytest.raises(UserError, match="schedule"):
        spec.timesteps(T, 10, spec.resolve_params())
