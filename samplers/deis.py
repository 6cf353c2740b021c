"""DEIS-tAB (Zhang & Chen 2023): exponential integrator with eps extrapolated by a polynomial in time."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from bench import Param, Preset, SamplerSpec, hookimpl, x0_from_eps
from bench.ode import AFS_PARAM, afs_eps, check_afs, levels, multistep_nfe, plan_params, step_order

ORDERS = (1, 2, 3)
# Gauss-Legendre nodes and weights on [-1, 1], 8 per smooth piece: exact for the polynomials, ~1e-16 for sigma(t).
_GAUSS_X, _GAUSS_W = np.polynomial.legendre.leggauss(8)


def lagrange_weights(nodes: Sequence[float], start: float, end: float, w: Callable[[np.ndarray], np.ndarray],
                     breaks: Sequence[float] = ()) -> list[float]:
    """C_j = int_start^end w'(tau) l_j(tau) dtau for the Lagrange basis l_j on `nodes`, in float64.

    Integrated by parts, C_j = [w l_j]_start^end - int w(tau) l_j'(tau) dtau, so only w itself is needed;
    the integral uses Gauss-Legendre on each piece between `breaks` (where w is not smooth).
    """
    nodes = [float(n) for n in nodes]
    lo, hi = min(start, end), max(start, end)
    cuts = [lo] + sorted(b for b in breaks if lo < b < hi) + [hi]
    lows, highs = np.array(cuts[:-1]), np.array(cuts[1:])
    taus = ((lows + highs)[:, None] / 2 + (highs - lows)[:, None] / 2 * _GAUSS_X).ravel()
    weights = ((highs - lows)[:, None] / 2 * _GAUSS_W).ravel()
    sign = 1.0 if end >= start else -1.0
    values = w(np.concatenate([taus, [start, end]]))
    w_taus, w_start, w_end = values[:-2], values[-2], values[-1]
    out = []
    for j, node in enumerate(nodes):
        others = [n - start for k, n in enumerate(nodes) if k != j]   # shifted to start: no cancellation
        basis = np.atleast_1d(np.poly(others)) / math.prod(node - start - n for n in others)
        boundary = w_end * np.polyval(basis, end - start) - w_start * np.polyval(basis, 0.0)
        interior = np.sum(weights * w_taus * np.polyval(np.polyder(basis), taus - start))
        out.append(float(boundary - sign * interior))
    return out


@functools.lru_cache(maxsize=4096)  # a plan's steps recur in every batch: integrate each once
def tab_coefficients(schedule, nodes: tuple[float, ...], start: float, end: float) -> list[float]:
    """C_j = int_start^end dsigma/dtau l_j(tau) dtau for the Lagrange basis on the times `nodes` (newest first),
    sigma = sqrt((1 - alpha_bar) / alpha_bar) at real time tau. Between trained timesteps the schedule
    interpolates log alpha_bar linearly, so the integral is split at every integer time."""

    def sigma_of(tau: np.ndarray) -> np.ndarray:
        a = schedule.alpha_bar_of(torch.as_tensor(tau, dtype=torch.float64)).numpy()
        return np.sqrt((1 - a) / a)

    breaks = range(math.ceil(min(start, end)), math.floor(max(start, end)) + 1)
    return lagrange_weights(nodes, start, end, sigma_of, breaks)


def sample_deis(denoiser, x, timesteps, noise, *, order=3, afs=False, lower_order_final=True, history=(),
                callback=None, cond=None, **_):
    """tAB-DEIS (Zhang & Chen 2023, "Fast Sampling of Diffusion Models with Exponential Integrator": the
    multistep exponential integrator with eps polynomial in t, and its weights C_ij):

        x_{i+1} / alpha_{i+1} = x_i / alpha_i + sum_j C_ij eps_{i-j},
        C_ij = int_{t_i}^{t_{i+1}} dsigma/dtau l_j(tau) dtau

    alpha = sqrt(alpha_bar), sigma = sqrt((1 - alpha_bar) / alpha_bar), l_j the Lagrange basis on the last q
    times: the linear part is solved exactly and eps is extrapolated by a polynomial of degree q - 1 in the
    model's own time. C_ij is computed in float64 by Gauss-Legendre quadrature (`tab_coefficients`).
    Order 1 is DDIM. q grows with the history; on plans under 15 steps lower-order-final steps into the last
    time at order <= 2. The final jump to clean data is the denoising step.
    """
    schedule = denoiser.schedule
    lv = levels(schedule, timesteps)
    past = [(e.t, e.eps) for e in history]   # (time, eps), oldest first
    for i, (cur, nxt) in enumerate(zip(lv[:-1], lv[1:])):
        eps = afs_eps(x) if afs and i == 0 and not past else denoiser(x, cur.t, cond)
        if callback is not None:
            callback({"step": i, "t": cur.t, "x": x, "x0": x0_from_eps(x, eps, cur.alpha_bar)})
        if nxt.clean:
            return x0_from_eps(x, eps, cur.alpha_bar)
        past = (past + [(cur.t, eps)])[-order:]
        q = step_order(order, i, len(timesteps), len(history), lower_order_final)
        newest_first = past[::-1][:q]
        coefficients = tab_coefficients(schedule, tuple(t for t, _ in newest_first), cur.t, nxt.t)
        x_hat = x * (1 / cur.alpha)
        for c, (_, e) in zip(coefficients, newest_first):
            x_hat = x_hat.add(e, alpha=c)
        x = x_hat.mul_(nxt.alpha)
    return x


@hookimpl
def register_samplers(register):
    register(SamplerSpec(
        "deis", sample_deis, "DEIS-tAB3 (Zhang & Chen 2023): exponential integrator, eps extrapolated by a "
        "polynomial in time through the last 3 outputs",
        {"order": Param(3, "polynomial order q (tAB-q): eps through the last q model outputs", ORDERS),
         "afs": AFS_PARAM,
         "lower_order_final": Param(True, "on plans under 15 steps, step into the last time at order <= 2"),
         **plan_params("logsnr")},
        plan="logsnr", nfe=multistep_nfe, check=check_afs))


@hookimpl
def register_presets(register):
    register(Preset("deis-2", "deis", {"order": 2}, "DEIS-tAB2 (eps linear in time)"))
    register(Preset("deis-3", "deis", {"order": 3}, "DEIS-tAB3 (eps quadratic in time; the deis defaults, so "
                    "--samplers all runs it once, under this name)"))
