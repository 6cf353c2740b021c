"""Continuous noise levels, the exact ODE map, and the Karras / DPM-Solver family proven by their orders."""

import math

import pytest
import torch

from bench.denoiser import Denoiser, DenoiserInfo
from bench.orders import fit_order
from bench.schedule import NoiseSchedule
from models.oracle import OracleDenoiser, make_gaussian, make_mixture

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
