"""UniPC, DEIS-tAB, iPNDM and PLMS: order of accuracy on the exact Gaussian ODE map, exact NFE, bad input."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch
from numpy.polynomial import polynomial as P

from bench.errors import UserError
from bench.measure import CountingDenoiser
from bench.orders import OrderCase, fit_order, measure
from bench.plans import logsnr_times
from bench.plugins import load_registry
from bench.sampling import batch_noise
from models.oracle import OracleDenoiser
from samplers.deis import lagrange_weights, tab_coefficients
from samplers.pndm import ADAMS_BASHFORTH
from samplers.unipc import phi
from tests.helpers import run_sampler

# Fit where every method here is in its asymptotic regime (UniPC-3 is still pre-asymptotic below NFE ~60).
FIT_STEPS = (80, 160, 320)
TOLERANCE = 0.3
FAST = ("unipc-2-bh2", "unipc-3-bh2", "deis-3", "ipndm-v-4")  # the headline orders also run without -m slow

# (label, sampler, params, order): UniC raises UniP-p to p + 1 (Zhao et al. 2023, Theorem 3.1), and iPNDM's
# equal-step Adams-Bashforth weights are second order on the unequal sigma steps of a logSNR grid.
ORDER_CASES = [
    ("unip-1", "unipc", {"order": 1, "corrector": False}, 1),
    ("unipc-1-bh1", "unipc", {"order": 1, "variant": "bh1"}, 2),
    ("unipc-1-bh2", "unipc", {"order": 1, "variant": "bh2"}, 2),
    ("unip-2", "unipc", {"order": 2, "corrector": False}, 2),
    ("unipc-2-bh1", "unipc", {"order": 2, "variant": "bh1"}, 3),
    ("unipc-2-bh2", "unipc", {"order": 2, "variant": "bh2"}, 3),
    ("unipc-3-bh2", "unipc", {"order": 3}, 4),
    ("deis-1", "deis", {"order": 1}, 1),
    ("deis-2", "deis", {"order": 2}, 2),
    ("deis-3", "deis", {"order": 3}, 3),
    ("ipndm-1", "ipndm", {"order": 1}, 1),
    ("ipndm-4-equal-step-weights", "ipndm", {"order": 4}, 2),
    ("ipndm-v-3", "ipndm", {"order": 3, "variable_step": True}, 3),
    ("ipndm-v-4", "ipndm", {"order": 4, "variable_step": True}, 4),
    ("plms", "plms", {}, 2),
]
PARAMS = [pytest.param(*case, id=case[0], marks=() if case[0] in FAST else pytest.mark.slow) for case in ORDER_CASES]
T = 1000


@functools.cache
def _measured(label: str):
    """Errors at every fit grid size, seeded and with the standard warm-up (shared by the two tests)."""
    _, sampler, params, order = next(c for c in ORDER_CASES if c[0] == label)
    registry = load_registry()
    denoiser = registry.model("gaussian-single").load("cpu")
    return measure(OrderCase(label, sampler, order, dict(params)), registry, denoiser, FIT_STEPS, num_images=4)


@pytest.mark.parametrize("label,sampler,params,order", PARAMS)
def test_order_of_accuracy_with_history_seeded_from_the_exact_trajectory(label, sampler, params, order):
    result = _measured(label)
    measured = fit_order(result.nfe, result.seeded_errors)
    assert abs(measured - order) < TOLERANCE, f"{label}: order {measured:.2f}, errors {result.seeded_errors}"


@pytest.mark.parametrize("label,sampler,params,order", PARAMS)
def test_order_of_accuracy_with_the_standard_warm_up(label, sampler, params, order):
    result = _measured(label)
    measured = fit_order(result.nfe, result.errors)
    assert abs(measured - order) < TOLERANCE, f"{label}: order {measured:.2f}, errors {result.errors}"


@pytest.fixture(scope="module")
def single(registry):
    return registry.model("gaussian-single").load("cpu")


def _run(registry, name, params, denoiser, steps, images=torch.arange(4), **kwargs):
    spec = registry.samplers[name]
    return run_sampler(spec, spec.resolve_params(params), denoiser, steps, images, dtype=torch.float64, **kwargs)


@pytest.mark.parametrize("name,params", [("unipc", {"order": 1, "corrector": False}), ("deis", {"order": 1}),
                                         ("ipndm", {"order": 1})])
def test_first_order_variants_are_ddim_element_by_element(registry, oracle, name, params):
    ddim, timesteps = _run(registry, "ddim", {"plan": "logsnr"}, oracle, 12)
    other, other_timesteps = _run(registry, name, {**params, "plan": "logsnr"}, oracle, 12)
    assert other_timesteps == timesteps
    assert torch.allclose(other, ddim, rtol=0, atol=1e-12)


@pytest.mark.parametrize("order", [2, 3])
@pytest.mark.parametrize("steps,lower_order_final", [(12, True), (20, False)])
def test_the_unipc_predictor_alone_is_dpm_solver_pp_multistep(registry, oracle, order, steps, lower_order_final):
    """UniP-p with B(h) = e^{-h} - 1 and DPM-Solver++(pM) are the same exponential integrator (x0 extrapolated
    in lambda), written independently here and in samplers/dpm_solver.py: they must agree element by element."""
    options = {"order": order, "lower_order_final": lower_order_final}
    dpmpp, _ = _run(registry, "dpm-solver++", options, oracle, steps)
    unip, _ = _run(registry, "unipc", {**options, "corrector": False}, oracle, steps)
    assert torch.allclose(unip, dpmpp, rtol=0, atol=1e-10)


@pytest.mark.parametrize("order,variant", [(1, "bh2"), (2, "bh1"), (2, "bh2"), (3, "bh1"), (3, "bh2")])
def test_unipc_corrected_states_match_diffusers_unipc_on_the_same_timesteps(registry, oracle, order, variant):
    """diffusers' UniPCMultistepScheduler (float32 sigmas) as a cross-check of every corrected state.

    The final jump differs by design: ours denoises from the corrected state, diffusers returns the data
    prediction made at the uncorrected one (and with bh1 its B(h) = -h is -inf there: NaN in 0.42.1).
    """
    diffusers = pytest.importorskip("diffusers")
    ours = []
    _, timesteps = _run(registry, "unipc", {"order": order, "variant": variant}, oracle, 9,
                        callback=lambda state: ours.append(state["x"].clone()))
    scheduler = diffusers.UniPCMultistepScheduler(solver_order=order, solver_type=variant)
    scheduler.set_timesteps(len(timesteps))
    scheduler.timesteps = torch.tensor(timesteps)
    scheduler.sigmas = torch.tensor([oracle.schedule.sigma_at(t) for t in timesteps] + [0.0], dtype=torch.float32)
    x = ours[0]
    for t, state in zip(timesteps, ours):
        x = scheduler.step(oracle(x, t), t, x).prev_sample
        assert torch.allclose(scheduler.last_sample, state, rtol=0, atol=2e-6)


@pytest.mark.parametrize("steps", [6, 25])
@pytest.mark.parametrize("warmup,extra", [("runge-kutta", 9), ("improved-euler", 1)])
def test_plms_matches_diffusers_pndm_with_the_same_warm_up(registry, oracle, steps, warmup, extra):
    """diffusers' PNDMScheduler ('leading' timesteps, final alpha_bar 1; skip_prk_steps for the improved-Euler
    start) as a cross-check: same result to float32 precision, and the same number of model calls."""
    diffusers = pytest.importorskip("diffusers")
    ours, timesteps = _run(registry, "plms", {"plan": "leading", "warmup": warmup}, oracle, steps)
    scheduler = diffusers.PNDMScheduler(skip_prk_steps=warmup != "runge-kutta", set_alpha_to_one=True,
                                        steps_offset=0, timestep_spacing="leading")
    scheduler.set_timesteps(steps)
    assert len(scheduler.timesteps) == steps + extra
    x = batch_noise(0, torch.arange(4), oracle.image_shape, dtype=torch.float64).initial()
    for t in scheduler.timesteps:
        x = scheduler.step(oracle(x, int(t)), t, x).prev_sample
    assert torch.allclose(x, ours, rtol=0, atol=1e-5)


def test_unipc_corrector_costs_no_network_call_and_changes_the_result(registry, oracle):
    counts, results = [], []
    for corrector in (True, False):
        counter = CountingDenoiser(oracle)
        x, timesteps = _run(registry, "unipc", {"corrector": corrector}, counter, 9)
        counts.append(counter.calls)
        results.append(x)
    assert counts == [len(timesteps)] * 2
    assert not torch.allclose(*results, atol=1e-6)


@pytest.mark.parametrize("steps", [4, 5, 9])
@pytest.mark.parametrize("warmup,extra", [("runge-kutta", 9), ("improved-euler", 1)])
def test_plms_counts_the_calls_of_its_warm_up(registry, oracle, steps, warmup, extra):
    counter = CountingDenoiser(oracle)
    params = registry.samplers["plms"].resolve_params({"warmup": warmup})
    _, timesteps = _run(registry, "plms", params, counter, steps)
    assert counter.calls == len(timesteps) + extra == registry.samplers["plms"].expected_nfe(timesteps, params)


class _Recorder:
    """Records the time of every model call."""

    def __init__(self, inner):
        self.inner, self.times = inner, []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __call__(self, x, t, cond=None):
        self.times.append(t)
        return self.inner(x, t, cond)


def test_plms_evaluates_a_discrete_model_at_rounded_midpoints(registry, oracle):
    discrete = OracleDenoiser(oracle.mixture)
    discrete.continuous_time = False   # as a trained network: only integer timesteps
    recorder = _Recorder(discrete)
    _, timesteps = _run(registry, "plms", {"plan": "logsnr"}, recorder, 8)
    exact_mids = [(a + b) / 2 for a, b in zip(timesteps[:3], timesteps[1:4])]
    assert any(m != int(m) for m in exact_mids)   # the plan exercises the rounding
    expected = []
    for i, mid in enumerate(exact_mids):
        expected += [timesteps[i], math.floor(mid + 0.5), math.floor(mid + 0.5), timesteps[i + 1]]
    assert recorder.times == expected + timesteps[3:]
    assert all(isinstance(t, int) for t in recorder.times)


class _FirstCallReturnsInput:
    """A model whose first output is its input: what AFS assumes at t = T-1."""

    def __init__(self, inner):
        self.inner, self.calls = inner, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __call__(self, x, t, cond=None):
        self.calls += 1
        return x.clone() if self.calls == 1 else self.inner(x, t, cond)


@pytest.mark.parametrize("name", ["unipc", "deis", "ipndm"])
def test_afs_uses_x_T_as_the_first_eps_and_saves_exactly_one_call(registry, oracle, name):
    counter = CountingDenoiser(oracle)
    with_afs, timesteps = _run(registry, name, {"afs": True}, counter, 8)
    first_call_is_x = _FirstCallReturnsInput(oracle)
    reference, _ = _run(registry, name, {}, first_call_is_x, 8)
    assert counter.calls == first_call_is_x.calls - 1 == len(timesteps) - 1
    assert counter.calls == registry.samplers[name].expected_nfe(timesteps, {"afs": True})
    assert torch.equal(with_afs, reference)


def test_variable_step_weights_on_equal_steps_are_the_adams_bashforth_weights():
    for order, weights in ADAMS_BASHFORTH.items():
        nodes = [3.0 + 0.5 * k for k in range(order)]   # newest first; the step goes on by -0.5
        variable = lagrange_weights(nodes, 3.0, 2.5, lambda s: s)
        assert np.allclose(variable, [-0.5 * w for w in weights], rtol=0, atol=1e-14)


def test_lagrange_weights_integrate_polynomials_exactly_across_breaks():
    nodes, start, end = [7.3, 9.1, 10.6], 7.3, 4.2   # extrapolation, as in a multistep step

    def w(tau):
        return np.abs(tau - 5.5) ** 3   # not smooth at 5.5: the break must be honoured

    def exact(p):  # int w'(tau) p(tau) dtau for a polynomial p, by splitting at 5.5
        total = 0.0
        for lo, hi, sign in ((4.2, 5.5, -1.0), (5.5, 7.3, 1.0)):
            integrand = P.polymul(P.polymul(P.polypow([-5.5, 1.0], 2), [3 * sign]), p)
            antiderivative = P.polyint(integrand)
            total += P.polyval(hi, antiderivative) - P.polyval(lo, antiderivative)
        return -total   # from start 7.3 down to end 4.2

    weights = lagrange_weights(nodes, start, end, w, breaks=[5.5])
    for p in ([1.0], [0.0, 1.0], [2.0, -1.0, 0.5]):
        from_weights = sum(c * P.polyval(n, p) for c, n in zip(weights, nodes))
        assert from_weights == pytest.approx(exact(p), rel=1e-12)


def test_deis_weights_sum_to_the_sigma_step(single):
    schedule = single.schedule
    start, end = 612.25, 431.5
    weights = tab_coefficients(schedule, (start, 700.0, 801.75), start, end)
    assert sum(weights) == pytest.approx(schedule.sigma_at(end) - schedule.sigma_at(start), rel=1e-13)


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_phi_series_and_recursion_agree_and_match_the_closed_form(k):
    for z in (-0.4999999, -0.5000001, -2.0, 0.3):
        closed = (math.exp(z) - sum(z**j / math.factorial(j) for j in range(k))) / z**k
        assert phi(k, z) == pytest.approx(closed, rel=1e-9)
    assert phi(k, -0.4999999) == pytest.approx(phi(k, -0.5000001), rel=1e-6)


@pytest.mark.parametrize("name,params,match", [
    ("unipc", {"order": 4}, "order=4 must be one of 1, 2, 3"),
    ("unipc", {"variant": "bh3"}, "variant='bh3' must be one of bh1, bh2"),
    ("deis", {"order": 0}, "order=0 must be one of 1, 2, 3"),
    ("ipndm", {"order": 5}, "order=5 must be one of 1, 2, 3, 4"),
    ("plms", {"plan": "full"}, "plan='full' must be one of"),
])
def test_unsupported_options_are_one_line_errors_naming_the_allowed_values(registry, name, params, match):
    with pytest.raises(UserError, match=match) as info:
        registry.samplers[name].resolve_params(params)
    assert "\n" not in str(info.value)


def test_plms_with_too_few_steps_for_its_warm_up_is_refused_while_planning(registry, oracle):
    spec = registry.samplers["plms"]
    with pytest.raises(UserError, match=r"plms with warmup=runge-kutta needs steps >= 4 .* got steps=3"):
        spec.timesteps(oracle.schedule, 3, spec.resolve_params())
    assert len(spec.timesteps(oracle.schedule, 4, spec.resolve_params())) == 4
    with pytest.raises(UserError, match=r"warmup=improved-euler needs steps >= 2 .* got steps=1"):
        spec.timesteps(oracle.schedule, 1, spec.resolve_params({"warmup": "improved-euler"}))


@pytest.mark.parametrize("name", ["unipc", "deis", "ipndm"])
def test_afs_with_a_single_step_is_refused_while_planning(registry, oracle, name):
    spec = registry.samplers[name]
    with pytest.raises(UserError, match="afs"):
        spec.timesteps(oracle.schedule, 1, spec.resolve_params({"afs": True}))


@functools.cache
def _mixture_reference():
    """x_T and the state at t = 0 from DPM-Solver++(3M) at 2560 steps (error ~1e-9) on the 4-component mixture."""
    registry = load_registry()
    oracle = registry.model("gaussian-oracle").load("cpu")
    x_T = torch.randn(8, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    spec = registry.samplers["dpm-solver++"]
    return registry, oracle, x_T, _state_at_t0(spec, spec.resolve_params({"order": 3}), oracle, x_T, 2560)


def _state_at_t0(spec, params, denoiser, x_T, steps):
    seen = {}
    spec.fn(denoiser, x_T, logsnr_times(denoiser.schedule, steps), None, callback=seen.update,
            **spec.sampler_kwargs(params))
    return seen["x"]


@pytest.mark.slow
@pytest.mark.parametrize("name,params,order", [("unipc", {"order": 2}, 3), ("deis", {"order": 3}, 3),
                                               ("ipndm", {"order": 4, "variable_step": True}, 4)],
                         ids=["unipc-2", "deis-3", "ipndm-v-4"])
def test_order_on_a_mixture_against_an_independent_fine_reference(name, params, order):
    """Beyond the single Gaussian (where some error terms nearly cancel): the 4-component mixture, against
    DPM-Solver++(3M) at 2560 steps, a different implementation."""
    registry, oracle, x_T, reference = _mixture_reference()
    spec = registry.samplers[name]
    nfe = [160, 320, 640]   # variable-step iPNDM-4 is still pre-asymptotic at 80 (local slope 3.5)
    errors = [float((_state_at_t0(spec, spec.resolve_params(params), oracle, x_T, n) - reference).pow(2).mean().sqrt())
              for n in nfe]
    assert abs(fit_order(nfe, errors) - order) < TOLERANCE, f"{name}: errors {errors}"
