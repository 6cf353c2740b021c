"""Hardening of the numerics (samplers/*.py, bench/plans, paths, schedule, ode, denoiser, sampling, orders):
the rarely taken branches and parameters that the conformance and order tests never reach at their defaults.

Each test pins a documented value or a closed-form answer for one such branch: which per-image noise stream
each stochastic sampler draws at each step, eta / s_noise / s_churn / s_tmax / lower_order_final / h_init /
percentile at values other than the defaults, ancestral steps with eta > 1, plan edge cases (one step, a flow
shift, sections whose sizes differ, the continuous Karras rho), range checks of the schedule and round_time,
the path conversions (v, flow, x0 on a continuous path; EDM preconditioning; the cosine VP derivative) and the
boundaries of the step-count checks. The mutants these tests kill are listed in docs/hardening-2026-12-02.md.
"""

from __future__ import annotations

import argparse
import math

import pytest
import torch

from bench.errors import UserError
from bench.noise import NoiseSource, StepNoise
from bench.plans import karras_plan
from bench.schedule import NoiseSchedule, make_betas

T = 1000


def _noise(images=4, shape=(1, 8, 8)):
    return StepNoise(NoiseSource(0), torch.arange(images), shape, dtype=torch.float64)


class _Recorder:
    """A noise callable that records which stream ids a sampler asks for, optionally scaled."""

    def __init__(self, base, scale=1.0):
        self.base, self.scale, self.asked = base, scale, []

    def __call__(self, step):
        self.asked.append(step)
        return self.base(step) * self.scale


class _Counting:
    """Counts calls and records the first row's time of each, around any denoiser."""

    def __init__(self, inner):
        self.inner, self.calls, self.seen = inner, 0, []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __call__(self, x, t, cond=None):
        self.calls += 1
        self.seen.append(float(t[0]) if isinstance(t, torch.Tensor) and t.dim() else float(t))
        return self.inner(x, t, cond)


def _run_direct(registry, oracle, name, params, steps, noise, x=None):
    spec = registry.samplers[name]
    params = spec.resolve_params(params)
    timesteps = spec.timesteps(oracle.schedule, steps, params)
    x = _noise().initial() if x is None else x
    return spec.fn(oracle, x, timesteps, noise, **spec.sampler_kwargs(params)), timesteps


# --------------------------------------------------------------------------- noise streams


@pytest.mark.parametrize("name, params", [
    ("stride-uniform", {}), ("stride-uniform", {"variance": "large"}), ("ddim", {"eta": 0.5}),
    ("ddim", {"sigma_hat": True}), ("dpm-solver++-sde", {}), ("dpm-solver++-sde", {"order": 1}),
    ("euler-ancestral", {}), ("dpm-2-ancestral", {}), ("dpmpp-2s-ancestral", {"eta": 0.5}), ("dpmpp-3m-sde", {}),
    ("edm-stochastic", {"s_tmin": 0.0, "s_tmax": math.inf}),
])
def test_a_stochastic_sampler_draws_stream_i_at_step_i_and_none_on_the_final_step(registry, oracle, name, params):
    """Step i's fresh noise is noise(i) (bench.noise: image i's noise at step k depends on (seed, i, k) only), and the
    final step to clean data adds none: the streams asked for are exactly 0, 1, ..., N - 2, in order."""
    rec = _Recorder(_noise())
    _run_direct(registry, oracle, name, params, 7, rec)
    assert rec.asked == list(range(6))


def test_dpmpp_sde_takes_its_second_increment_from_the_extra_streams(registry, oracle):
    """The Brownian increment over [sigma_next, s] is z2 from EXTRA_STREAM + i (a block of STEP_BLOCK is fetched at
    once), independent of z1 = noise(i): both kinds of stream are drawn, and no other."""
    from bench.noise import STEP_BLOCK
    from samplers.kdiffusion import EXTRA_STREAM

    rec = _Recorder(_noise())
    _run_direct(registry, oracle, "dpmpp-sde", {}, 7, rec)
    assert sorted(i for i in rec.asked if i >= 0) == list(range(6))
    assert sorted(i for i in rec.asked if i < 0) == list(range(EXTRA_STREAM, EXTRA_STREAM + STEP_BLOCK))


@pytest.mark.parametrize("name, params", [
    ("euler-ancestral", {}), ("dpm-2-ancestral", {}), ("dpmpp-2s-ancestral", {}), ("dpmpp-sde", {}),
    ("dpmpp-3m-sde", {}), ("edm-stochastic", {}),
])
def test_s_noise_scales_every_added_noise(registry, oracle, name, params):
    """s_noise multiplies the fresh noise: a run with s_noise = 0.5 equals one with s_noise = 1 on noise halved."""
    x = _noise().initial()
    half, _ = _run_direct(registry, oracle, name, {**params, "s_noise": 0.5}, 6, _noise(), x=x)
    ref, _ = _run_direct(registry, oracle, name, {**params, "s_noise": 1.0}, 6, _Recorder(_noise(), 0.5), x=x)
    torch.testing.assert_close(half, ref, rtol=0, atol=1e-10)
    full, _ = _run_direct(registry, oracle, name, {**params, "s_noise": 1.0}, 6, _noise(), x=x)
    assert (full - half).abs().max() > 1e-3  # the noise matters at all


# --------------------------------------------------------------------------- DDIM, EDM stochastic


class _ConstantEps:
    def __init__(self, schedule, value=0.3):
        self.schedule, self.value = schedule, value

    def __call__(self, x, t, cond=None):
        return torch.full_like(x, self.value)


def test_ddim_with_eta_above_one_drops_the_eps_term_where_its_variance_would_be_negative():
    """DDIM Eq. 12 with sqrt(max(1 - a_prev - sigma^2, 0)): at eta = 2 on the step 999 -> 500, sigma^2 > 1 - a_prev,
    so x_prev = sqrt(a_prev) x0 + sigma z exactly (no eps term)."""
    from samplers.ddim import ddim_sigma, sample_ddim

    schedule = NoiseSchedule.linear(T)
    den = _ConstantEps(schedule)
    noise = _noise()
    x = noise.initial()
    a_t, a_prev = schedule.alpha_bar_at(999), schedule.alpha_bar_at(500)
    sigma = ddim_sigma(a_t, a_prev, 2.0)
    assert sigma**2 > 1 - a_prev
    seen = []
    sample_ddim(den, x, [999, 500], noise, eta=2.0, callback=lambda s: seen.append(s["x"].clone()))
    x0 = (x - math.sqrt(1 - a_t) * 0.3) / math.sqrt(a_t)
    torch.testing.assert_close(seen[1], math.sqrt(a_prev) * x0 + sigma * noise(0), rtol=0, atol=1e-9)


def test_edm_stochastic_churn_is_capped_at_sigma_max_and_gamma_is_s_churn_over_n():
    """gamma = min(S_churn / N, sqrt(2) - 1) (Alg. 2), and the raised level is capped at the schedule's sigma_max: with
    S_tmax = inf the first step churns from sigma_max and stays there; step i > 0 goes to sigma_i (1 + S_churn / N)."""
    from samplers.karras import sample_edm_stochastic
    from tests.helpers import discrete_oracle

    den = discrete_oracle()
    schedule = den.schedule
    n = 10
    plan = karras_plan(schedule, n)
    sample_edm_stochastic(den, _noise().initial(), plan, _noise(), s_churn=3.0, s_tmin=0.0, s_tmax=math.inf,
                          s_noise=1.0)
    assert den.seen[0] == T - 1
    for i in (1, 2, 3):  # calls: the churned level of step i at 2i, the Heun correction at 2i + 1
        wanted = schedule.sigma_at(plan[i]) * (1 + 3.0 / n)
        assert den.seen[2 * i] == den.round_time(schedule.t_from_sigma(wanted)) > plan[i]


def test_edm_stochastic_with_s_noise_zero_adds_no_noise():
    """s_noise = 0: the churn still raises the level (the model is called there), but no noise is added."""
    from samplers.karras import sample_edm_stochastic
    from tests.helpers import discrete_oracle

    den = discrete_oracle()
    plan = karras_plan(den.schedule, 8)
    x = _noise().initial()
    a = sample_edm_stochastic(den, x, plan, _noise(), s_noise=0.0)
    b = sample_edm_stochastic(den, x, plan, lambda i: torch.zeros_like(x), s_noise=1.003)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


# --------------------------------------------------------------------------- multistep options


@pytest.mark.parametrize("name, params", [("deis", {"order": 3}), ("unipc", {"order": 3})])
def test_lower_order_final_false_keeps_the_full_order_on_the_last_step_of_a_short_plan(registry, oracle, name, params):
    """lower_order_final only lowers the order of the step into the plan's last time: with order 3 on 5 steps that
    step is order 2 when it is true and order 3 when false, so the two samples differ (and agree before it)."""
    x = _noise().initial()
    on, _ = _run_direct(registry, oracle, name, {**params, "lower_order_final": True}, 5, None, x=x)
    off, _ = _run_direct(registry, oracle, name, {**params, "lower_order_final": False}, 5, None, x=x)
    assert (on - off).abs().max() > 1e-6


def test_deis_lower_order_final_is_a_no_op_on_plans_of_fifteen_steps_or_more(registry, oracle):
    x = _noise().initial()
    on, _ = _run_direct(registry, oracle, "deis", {"lower_order_final": True}, 15, None, x=x)
    off, _ = _run_direct(registry, oracle, "deis", {"lower_order_final": False}, 15, None, x=x)
    torch.testing.assert_close(on, off, rtol=0, atol=0)


def test_step_order_counts_seeded_history_towards_the_fifteen_step_threshold():
    """'plans under 15 steps, the whole plan, seeded part included': 10 steps + 5 seeded is not under 15."""
    from bench.ode import step_order

    assert step_order(3, 9, 10, 5, True) == 3
    assert step_order(3, 9, 10, 4, True) == 1
    assert step_order(3, 8, 10, 4, True) == 2
    assert step_order(3, 0, 10, 0, False) == 1 and step_order(3, 1, 10, 0, False) == 2


def test_ipndm_of_order_one_is_euler_on_the_same_plan(registry, oracle):
    """Adams-Bashforth of order 1 in the sigma ODE is Euler's method: the `order` parameter is honoured."""
    x = _noise().initial()
    ipndm, _ = _run_direct(registry, oracle, "ipndm", {"order": 1, "plan": "karras"}, 8, None, x=x)
    euler, _ = _run_direct(registry, oracle, "euler", {"plan": "karras"}, 8, None, x=x)
    torch.testing.assert_close(ipndm, euler, rtol=0, atol=1e-10)
    ipndm2, _ = _run_direct(registry, oracle, "ipndm", {"order": 2, "plan": "karras"}, 8, None, x=x)
    assert (ipndm2 - euler).abs().max() > 1e-4


def test_step_count_checks_sit_exactly_at_their_documented_minimum():
    """plms with Runge-Kutta warm-up needs steps >= 4, with improved Euler >= 2; afs needs >= 2."""
    from bench.ode import check_afs
    from samplers.pndm import check_plms

    with pytest.raises(UserError):
        check_plms([3, 2, 1], {"warmup": "runge-kutta"})
    check_plms([4, 3, 2, 1], {"warmup": "runge-kutta"})
    with pytest.raises(UserError):
        check_plms([1], {"warmup": "improved-euler"})
    check_plms([2, 1], {"warmup": "improved-euler"})
    with pytest.raises(UserError):
        check_afs([999], {"afs": True})
    check_afs([999, 0], {"afs": True})
    check_afs([999], {"afs": False})


# --------------------------------------------------------------------------- k-diffusion helpers


def test_get_ancestral_step_caps_sigma_up_at_sigma_to_for_eta_above_one():
    """k-diffusion: sigma_up = min(sigma_to, eta sigma_to sqrt(sigma_from^2 - sigma_to^2) / sigma_from)."""
    from samplers.kdiffusion import ancestral_step

    assert ancestral_step(2.0, 1.0, eta=2.0) == (0.0, 1.0)
    down, up = ancestral_step(2.0, 1.0, eta=0.5)
    assert up == pytest.approx(0.5 * math.sqrt(3) / 2, abs=1e-15)
    assert down == pytest.approx(math.sqrt(1 - up**2), abs=1e-15)
    assert ancestral_step(2.0, 0.0, eta=1.0) == (0.0, 0.0) and ancestral_step(2.0, 1.0, eta=0.0) == (1.0, 0.0)


def test_an_intermediate_level_never_repeats_the_steps_own_time_on_a_discrete_model():
    from bench.ode import level
    from samplers.kdiffusion import intermediate_level
    from tests.helpers import discrete_oracle

    den = discrete_oracle()
    cur, nxt = level(den.schedule, 5), level(den.schedule, 2)
    assert intermediate_level(den, cur, nxt, cur.sigma_edm).t == 4
    assert intermediate_level(den, cur, nxt, nxt.sigma_edm * 0.5).t == 2


def test_restart_point_is_never_the_first_plan_time_and_its_top_lies_above_it(oracle):
    """restart_interval: j is in 1..N-1 even when restart_min is above every sigma; when restart_max is not above
    sigma_j the grid starts at the plan time before j."""
    from bench.ode import levels
    from bench.plans import karras_plan
    from samplers.kdiffusion import restart_interval

    lv = levels(oracle.schedule, karras_plan(oracle.schedule, 10))
    j, grid = restart_interval(oracle, lv, 1e6, 2e6, 2)
    assert j == 1
    j, grid = restart_interval(oracle, lv, 0.06, 0.03, 2)
    assert grid[0] == lv[j - 1] and grid[-1] == lv[j] and len(grid) == 3


def test_restart_on_two_steps_makes_the_documented_number_of_calls(oracle):
    """2N-1 + 2 restart_times restart_steps calls, N = 2 included (only N = 1 has no restart)."""
    from samplers.kdiffusion import restart_nfe, sample_restart

    assert restart_nfe([999, 0], {"restart_times": 2, "restart_steps": 3}) == 3 + 12
    assert restart_nfe([999], {"restart_times": 2, "restart_steps": 3}) == 1
    den = _Counting(oracle)
    sample_restart(den, _noise().initial(), [999, 0], _noise(), restart_times=2, restart_steps=3)
    assert den.calls == 15


def test_restart_min_and_max_are_only_checked_when_there_are_restarts():
    from samplers.kdiffusion import check_restart

    check_restart([999, 0], {"restart_times": 0, "restart_min": 0.5, "restart_max": 0.1})
    with pytest.raises(UserError):
        check_restart([999, 0], {"restart_times": 1, "restart_min": 0.5, "restart_max": 0.1})


# --------------------------------------------------------------------------- plans


def test_sections_give_the_extra_timesteps_to_the_first_sections_as_guided_diffusion():
    """Nichol & Dhariwal's space_timesteps: T = 1000 in 3 sections is 334, 333, 333 (size_per + 1 if i < extra)."""
    from bench.plans import sections_plan

    assert sections_plan(T, "2,2,2") == [999, 667, 666, 334, 333, 0]
    assert sections_plan(10, "2,2,2,2") == [9, 8, 7, 6, 5, 3, 2, 0]


def test_the_continuous_karras_plan_honours_rho():
    from bench.paths import PathConfig, make_path
    from bench.plans import make_plan

    path = make_path(PathConfig("vp-continuous"))
    times = make_plan("karras", path, 6, rho=3.0)
    top, bottom = path.sigma_at(path.t_max) ** (1 / 3), path.sigma_at(path.t_min) ** (1 / 3)
    assert path.sigma_at(times[1]) == pytest.approx((top + (bottom - top) / 5) ** 3, rel=1e-9)
    assert make_plan("karras", path, 6, rho=7.0) != times


def test_flow_plans_apply_the_shift_even_for_one_step_and_on_diffusers_flow_sigmas():
    from bench.paths import PathConfig, flow_shift, make_path
    from bench.plans import make_plan

    path = make_path(PathConfig("flow", shift=3.0))
    assert make_plan("uniform", path, 1) == [pytest.approx(flow_shift(1 - 1 / T, 3.0), abs=1e-15)]
    assert path.t_max == pytest.approx(flow_shift(1 - 1 / T, 3.0), abs=1e-15)
    sigmas = make_plan("flow-sigmas", path, 4)
    expected = [flow_shift(1 - (1 + i / 4 * (1 / T - 1)), 3.0) for i in range(5)][::-1][:-1]
    assert sigmas == pytest.approx(expected, abs=1e-15)
    assert sigmas[0] == pytest.approx(flow_shift(1 - 1 / T, 3.0), abs=1e-15)


# --------------------------------------------------------------------------- schedule, paths, denoiser


def test_alpha_bar_at_refuses_times_beyond_t_minus_one_with_a_value_error():
    schedule = NoiseSchedule.linear(T)
    for t in (999.5, 1000, 1000.0):
        with pytest.raises(ValueError):
            schedule.alpha_bar_at(t)
    assert schedule.alpha_bar_at(-0.5) == 1.0


def test_scaled_linear_betas_are_linear_in_sqrt_beta():
    betas = make_betas("scaled-linear", 1001, 1e-4, 0.02)
    assert float(betas[0]) == pytest.approx(1e-4, rel=1e-12) and float(betas[-1]) == pytest.approx(0.02, rel=1e-12)
    assert float(betas[500]) == pytest.approx(((0.01 + math.sqrt(0.02)) / 2) ** 2, rel=1e-12)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_vp_continuous_derivatives_match_finite_differences(schedule):
    from bench.paths import PathConfig, make_path

    path = make_path(PathConfig("vp-continuous", schedule=schedule))
    for t in (0.1, 0.5, 0.9):
        d = 1e-6
        assert path.d_alpha(t) == pytest.approx((path.alpha(t + d) - path.alpha(t - d)) / (2 * d), rel=1e-6)
        assert path.d_sigma(t) == pytest.approx((path.sigma(t + d) - path.sigma(t - d)) / (2 * d), rel=1e-6)


@pytest.mark.parametrize("kind", ["flow", "ve", "vp-continuous"])
def test_every_native_prediction_converts_back_to_the_true_eps(kind):
    """x = alpha x0 + sigma eps; x0, v (VP-normalised: sqrt(ab) eps - sqrt(1-ab) x0) and the flow velocity
    u = alpha' x0 + sigma' eps must each give eps back."""
    from bench.paths import PathConfig, eps_from_native, make_path

    path = make_path(PathConfig(kind))
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(3, 4, generator=g, dtype=torch.float64), torch.randn(3, 4, generator=g, dtype=torch.float64)
    t = torch.tensor([0.3 if kind != "ve" else 3.0] * 3, dtype=torch.float64)
    a, s, da, ds = (c.view(-1, 1) for c in path.coefficients_of(t))
    x = a * x0 + s * eps
    norm = (a * a + s * s).sqrt()
    predictions = {"eps": eps, "x0": x0, "v": (a / norm) * eps - (s / norm) * x0, "flow": da * x0 + ds * eps}
    for name, prediction in predictions.items():
        torch.testing.assert_close(eps_from_native(prediction, x, a, s, da, ds, name), eps, rtol=0, atol=1e-10)


def test_edm_preconditioning_is_karras_table_one():
    from bench.paths import edm_preconditioning

    c_skip, c_out, c_in, c_noise = edm_preconditioning(torch.tensor([2.0], dtype=torch.float64), 0.5)
    assert float(c_skip) == pytest.approx(0.25 / 4.25, rel=1e-14)
    assert float(c_out) == pytest.approx(1.0 / math.sqrt(4.25), rel=1e-14)
    assert float(c_in) == pytest.approx(1 / math.sqrt(4.25), rel=1e-14)
    assert float(c_noise) == pytest.approx(math.log(2.0) / 4, rel=1e-14)


def test_time_inputs_index_fraction_and_one_indexed_fraction():
    from bench.denoiser import time_input

    t = torch.tensor([0, 499, 999])
    assert time_input(t, T, "index").tolist() == [0, 499, 999]
    torch.testing.assert_close(time_input(t, T, "fraction"), torch.tensor([0.0, 0.499, 0.999]))
    torch.testing.assert_close(time_input(t, T, "fraction-1"), torch.tensor([0.001, 0.5, 1.0]))


def test_round_time_and_model_time_round_half_up_and_clamp_to_the_trained_range():
    from tests.helpers import discrete_oracle

    den = discrete_oracle()
    assert [den.round_time(t) for t in (999.7, 999.4, 2.5, 2.49, -0.7, -3.0)] == [999, 999, 3, 2, 0, 0]
    assert den.model_time(999.7, 2, torch.device("cpu")).tolist() == [999, 999]
    assert den.model_time(-0.7, 1, torch.device("cpu")).tolist() == [0]


class _FixedX0:
    """An inner denoiser whose predicted x_0 is a given tensor (eps computed to match)."""

    def __init__(self, oracle, x0):
        self.schedule, self.model_time, self.x0 = oracle.schedule, oracle.model_time, x0

    def __call__(self, x, t, cond=None):
        a = self.schedule.alpha_bar_at(t)
        return (x - math.sqrt(a) * self.x0) / math.sqrt(1 - a)


@pytest.mark.parametrize("percentile, values, s", [
    (0.5, [0.5, 2.0, 3.0, 4.0], 2.5),      # the median of |x0| (linear interpolation) is 2.5
    (0.995, [0.1, -0.2, 0.3, 0.4], 1.0),   # s = max(1, quantile): small x0 is left alone
])
def test_dynamic_thresholding_uses_the_given_percentile_and_never_scales_below_one(oracle, percentile, values, s):
    from bench.sampling import ClippedDenoiser

    x0 = torch.tensor([values], dtype=torch.float64)
    x = torch.ones_like(x0) * 0.3
    den = ClippedDenoiser(_FixedX0(oracle, x0), "dynamic", percentile)
    a = oracle.schedule.alpha_bar_at(500)
    eps = den(x, 500)
    clipped = (x - math.sqrt(1 - a) * eps) / math.sqrt(a)
    torch.testing.assert_close(clipped, x0.clamp(-s, s) / s, rtol=0, atol=1e-9)


# --------------------------------------------------------------------------- adaptive, orders


def test_dpm_adaptive_takes_its_first_trial_step_of_h_init_in_log_snr(oracle):
    """DPM-Solver-12: the first trial's inner stage is at lambda_s + h_init / 2."""
    from samplers.adaptive import solve_adaptive

    schedule = oracle.schedule
    for h_init in (0.2, 1.0):
        den = _Counting(oracle)
        solve_adaptive(den, _noise(1).initial(), 999, 0, order=2, h_init=h_init)
        expected = schedule.t_from_lambda(schedule.lambda_at(999) + h_init / 2)
        assert den.seen[1] == pytest.approx(expected, rel=1e-9)


def test_orders_refuses_a_grid_smaller_than_seed_points_plus_two():
    from bench.orders import SEED_POINTS, run_orders

    args = argparse.Namespace(num_threads=1, model=None, solvers="ddim", steps=f"{SEED_POINTS + 1},10", images=2)
    try:
        with pytest.raises(UserError, match="--steps"):
            run_orders(args)
    finally:
        torch.set_num_threads(1)


def test_fit_order_needs_two_points_above_round_off():
    from bench.orders import fit_order

    assert math.isnan(fit_order([10, 20, 40], [1e-3, 1e-12, 1e-13]))
    assert fit_order([10, 20], [1e-2, 2.5e-3]) == pytest.approx(2.0, abs=1e-12)


def test_deis_coefficients_integrate_exactly_across_every_integer_time():
    """C_j = int dsigma/dtau l_j dtau with sigma's kinks at integer times (log alpha_bar piecewise linear): checked
    against scipy's adaptive quadrature told where the kinks are, on a step whose both ends are fractional."""
    from scipy.integrate import quad

    from samplers.deis import tab_coefficients

    schedule = NoiseSchedule.linear(T)

    def sigma(tau):
        return schedule.sigma_at(tau)

    start, end, nodes = 500.3, 490.6, (500.3, 510.7)
    integral = quad(sigma, end, start, points=list(range(491, 501)), epsabs=0, epsrel=1e-13, limit=200)[0]
    slope = 1 / (nodes[0] - nodes[1])  # l_0' (l_1' = -slope)
    l0 = [(t - nodes[1]) * slope for t in (start, end)]
    c0 = sigma(end) * l0[1] - sigma(start) * l0[0] + slope * integral  # by parts; the integral runs end -> start
    c = tab_coefficients(schedule, nodes, start, end)
    assert c[0] == pytest.approx(c0, rel=1e-12)
    assert c[0] + c[1] == pytest.approx(sigma(end) - sigma(start), rel=1e-12)


def test_guidance_sends_the_null_label_num_classes_and_mixes_with_weight_one_plus_w():
    from bench.sampling import GuidedDenoiser

    class Labels:
        num_classes = 10

        def __init__(self):
            self.cond = None

        def __call__(self, x, t, cond=None):
            self.cond = cond.clone()
            return x * 0 + cond.view(-1, 1).to(x.dtype)

    inner = Labels()
    out = GuidedDenoiser(inner, 2.0)(torch.zeros(3, 1, dtype=torch.float64), torch.tensor([5, 5, 5]),
                                     torch.tensor([0, 1, 2]))
    assert inner.cond.tolist() == [0, 1, 2, 10, 10, 10]
    torch.testing.assert_close(out.view(-1), torch.tensor([10 + 3 * (c - 10) for c in (0.0, 1.0, 2.0)],
                                                           dtype=torch.float64))


def test_linspace_and_trailing_equal_diffusers_spacings_including_half_ties():
    """Once a real bug (half up, floor(x + 0.5), gave 167 and 833 at linspace N=7). diffusers
    DDIMScheduler.set_timesteps: 'linspace' = np.linspace(0, T-1, N).round()[::-1]; 'trailing' =
    np.round(np.arange(T, 0, -T/N)) - 1. numpy rounds .5 to even."""
    import numpy as np

    from bench.plans import linspace_plan, trailing_plan

    for n in (7, 16, 80):
        assert linspace_plan(T, n) == [int(v) for v in np.linspace(0, T - 1, n).round()[::-1]]
        assert trailing_plan(T, n) == [int(v) - 1 for v in np.round(np.arange(T, 0, -T / n))]


def test_plms_after_its_warm_up_uses_the_fourth_order_adams_bashforth_weights():
    """e' = (55 e_i - 59 e_{i-1} + 37 e_{i-2} - 9 e_{i-3}) / 24 once three earlier outputs exist (seeded here): with
    eps = (t / 100)^3 at t = 100 after 400, 300, 200 that is (55 - 59 * 8 + 37 * 27 - 9 * 64) / 24 = 1/4."""
    from bench.ode import Evaluation, level
    from samplers.pndm import ddim_transfer, sample_plms

    schedule = NoiseSchedule.linear(T)

    class Cubic:
        def __init__(self):
            self.schedule = schedule

        def __call__(self, x, t, cond=None):
            return torch.full_like(x, (float(t) / 100) ** 3)

    x = _noise().initial()
    history = [Evaluation(t, x, torch.full_like(x, (t / 100) ** 3)) for t in (400, 300, 200)]
    states = []
    sample_plms(Cubic(), x, [100, 0], None, warmup="improved-euler", history=history,
                callback=lambda s: states.append(s["x"].clone()))
    expected = ddim_transfer(x, torch.full_like(x, 0.25), level(schedule, 100), level(schedule, 0))
    torch.testing.assert_close(states[1], expected, rtol=0, atol=1e-10)
