"""DPM-Solver (Lu et al. 2022a, "DPM-Solver: A Fast ODE Solver for Diffusion Probabilistic Model
Sampling in Around 10 Steps") and DPM-Solver++ (Lu et al. 2022b, "DPM-Solver++: Fast Solver for
Guided Sampling of Diffusion Probabilistic Models").

Exponential integrators in lambda = log(alpha / sigma): the linear part of the ODE is solved
exactly and only the model output is approximated, by a polynomial in lambda built from the
last few evaluations (multistep) or from an extra evaluation inside the step (singlestep).
All coefficients come from float64 alpha_bar at the times the model was actually evaluated at.
"""

from __future__ import annotations

import math

import torch

from bench import Param, Preset, SamplerSpec, hookimpl, x0_from_eps
from bench.ode import (
    AFS_PARAM,
    Level,
    afs_eps,
    check_afs,
    level,
    levels,
    multistep_nfe,
    plan_params,
    step_order,
    two_stage_nfe,
)


def dpmpp_update(x: torch.Tensor, past: list[tuple[Level, torch.Tensor]], nxt: Level, order: int) -> torch.Tensor:
    """One multistep DPM-Solver++ step from the last of `past` (level, x0 prediction; oldest first) to `nxt`.

    x_next = (sigma_n / sigma) x + alpha_n integral of e^{-(lambda_n - lambda)} x0(lambda) dlambda, with x0
    a polynomial in lambda through the last `order` predictions:
      order 1 (DDIM):       x0 = m0;
      order 2 (Alg. 2, 2M): D = (1 + 1/(2r)) m0 - 1/(2r) m1, r = h_prev / h;
      order 3 (3M):         x0 Taylor-expanded at lambda_0 with slope and curvature from divided
                            differences, integrated exactly: h phi_2 x0' - h^2 phi_3 x0''.
    """
    cur, m0 = past[-1]
    h = nxt.lam - cur.lam
    phi_1 = math.expm1(-h)  # e^{-h} - 1
    x_next = torch.add(x * (nxt.sigma / cur.sigma), m0, alpha=-nxt.alpha * phi_1)
    if order == 1:
        return x_next
    prev, m1 = past[-2]
    h_0 = cur.lam - prev.lam
    if order == 2:
        r = h_0 / h
        return x_next.add_(m0 - m1, alpha=-nxt.alpha * phi_1 / (2 * r))
    prev2, m2 = past[-3]
    h_1 = prev.lam - prev2.lam
    slope_0, slope_1 = (m0 - m1) / h_0, (m1 - m2) / h_1            # x0' at the midpoints of the last two gaps
    curvature = (slope_0 - slope_1) * (2 / (h_0 + h_1))             # x0''
    slope = slope_0 + curvature * (h_0 / 2)                         # x0' at lambda_0
    phi_2 = phi_1 / h + 1
    phi_3 = phi_2 / h - 0.5
    return x_next.add_(slope, alpha=nxt.alpha * h * phi_2).add_(curvature, alpha=-nxt.alpha * h * h * phi_3)


def sample_dpmpp(denoiser, x, timesteps, noise, *, order=2, lower_order_final=True, afs=False, history=(),
                 callback=None, cond=None, **_):
    """Multistep DPM-Solver++ (Lu et al. 2022b, Alg. 2 for 2M; 3M as their third-order multistep update):
    one call per time, data prediction, orders 1-3 with a lower-order warm-up and lower-order-final."""
    schedule = denoiser.schedule
    lv = levels(schedule, timesteps)
    past = [(level(schedule, e.t), x0_from_eps(e.x, e.eps, schedule.alpha_bar_at(e.t))) for e in history]
    for i, (cur, nxt) in enumerate(zip(lv[:-1], lv[1:])):
        eps = afs_eps(x) if afs and i == 0 and not past else denoiser(x, cur.t, cond)
        x0 = x0_from_eps(x, eps, cur.alpha_bar)
        if callback is not None:
            callback({"step": i, "t": cur.t, "x": x, "x0": x0})
        if nxt.clean:
            return x0  # the final jump to sigma = 0 is the denoising step
        past = past[-2:] + [(cur, x0)]
        x = dpmpp_update(x, past, nxt, step_order(order, i, len(timesteps), len(history), lower_order_final))
    return x


def sample_dpmpp_sde(denoiser, x, timesteps, noise, *, order=2, lower_order_final=True, callback=None, cond=None,
                     **_):
    """SDE-DPM-Solver++(2M) (Lu et al. 2022b, App. on SDE solvers): the reverse SDE in data prediction,
    x_next = (sigma_n/sigma) e^{-h} x + alpha_n (1 - e^{-2h}) D + sigma_n sqrt(1 - e^{-2h}) z,
    with D = m0 (order 1) or m0 + (m0 - m1) / (2r) (order 2, the midpoint form)."""
    lv = levels(denoiser.schedule, timesteps)
    past: list[tuple[Level, torch.Tensor]] = []
    for i, (cur, nxt) in enumerate(zip(lv[:-1], lv[1:])):
        x0 = x0_from_eps(x, denoiser(x, cur.t, cond), cur.alpha_bar)
        if callback is not None:
            callback({"step": i, "t": cur.t, "x": x, "x0": x0})
        if nxt.clean:
            return x0
        past = past[-1:] + [(cur, x0)]
        h = nxt.lam - cur.lam
        d = x0
        if step_order(order, i, len(timesteps), 0, lower_order_final) == 2:
            prev, m1 = past[-2]
            d = x0 + (x0 - m1) * (h / (2 * (cur.lam - prev.lam)))
        decay = -math.expm1(-2 * h)  # 1 - e^{-2h}
        x = torch.add(x * (nxt.sigma / cur.sigma * math.exp(-h)), d, alpha=nxt.alpha * decay)
        x.add_(noise(i), alpha=nxt.sigma * math.sqrt(decay))
    return x


def sample_dpm_solver_2(denoiser, x, timesteps, noise, *, afs=False, callback=None, cond=None, **_):
    """Singlestep DPM-Solver-2 (Lu et al. 2022a, Alg. 1 with r1 = 1/2; the general-r1 update of their
    Alg. 4 so the intermediate time may be rounded): eps at the lambda-midpoint s, 2 calls per step.

    For a discrete-time model s is rounded through `round_time` and r = (lambda_s - lambda) / h is
    recomputed at the rounded s; if rounding lands back on the step's own time, s is the next time (r = 1).
    """
    schedule = denoiser.schedule
    lv = levels(schedule, timesteps)
    for i, (cur, nxt) in enumerate(zip(lv[:-1], lv[1:])):
        eps = afs_eps(x) if afs and i == 0 else denoiser(x, cur.t, cond)
        if callback is not None:
            callback({"step": i, "t": cur.t, "x": x, "x0": x0_from_eps(x, eps, cur.alpha_bar)})
        if nxt.clean:
            return x0_from_eps(x, eps, cur.alpha_bar)
        h = nxt.lam - cur.lam
        t_mid = denoiser.round_time(schedule.t_from_lambda(cur.lam + h / 2))
        mid = level(schedule, t_mid if t_mid < cur.t else nxt.t)
        r = (mid.lam - cur.lam) / h
        u = torch.add(x * (mid.alpha / cur.alpha), eps, alpha=-mid.sigma * math.expm1(r * h))
        eps_mid = denoiser(u, mid.t, cond)
        x = torch.add(x * (nxt.alpha / cur.alpha), eps, alpha=-nxt.sigma * math.expm1(h))
        x.add_(eps_mid - eps, alpha=-nxt.sigma * math.expm1(h) / (2 * r))
    return x


_LOWER_ORDER_FINAL = Param(True, "on plans under 15 steps, step into the last time at order <= 2")


@hookimpl
def register_samplers(register):
    register(SamplerSpec(
        "dpm-solver++", sample_dpmpp, "Multistep DPM-Solver++ (Lu et al. 2022b): data prediction, one call "
        "per step, orders 1-3",
        {"order": Param(2, "solver order", (1, 2, 3)), "lower_order_final": _LOWER_ORDER_FINAL, "afs": AFS_PARAM,
         **plan_params("logsnr")},
        plan="logsnr", nfe=multistep_nfe, check=check_afs))
    register(SamplerSpec(
        "dpm-solver++-sde", sample_dpmpp_sde, "SDE-DPM-Solver++ (Lu et al. 2022b): multistep reverse-SDE "
        "solver in data prediction, orders 1-2, fresh noise every step",
        {"order": Param(2, "solver order", (1, 2)), "lower_order_final": _LOWER_ORDER_FINAL, **plan_params("logsnr")},
        plan="logsnr"))
    register(SamplerSpec(
        "dpm-solver-2", sample_dpm_solver_2, "Singlestep DPM-Solver-2 (Lu et al. 2022a): eps at the log-SNR "
        "midpoint of each step; 2N-1 calls", {"afs": AFS_PARAM, **plan_params("logsnr")},
        plan="logsnr", nfe=two_stage_nfe, check=check_afs))


@hookimpl
def register_presets(register):
    register(Preset("dpmpp-2m", "dpm-solver++", {"order": 2}, "DPM-Solver++(2M), log-SNR plan"))
    register(Preset("dpmpp-3m", "dpm-solver++", {"order": 3}, "DPM-Solver++(3M), log-SNR plan"))
    register(Preset("dpmpp-2m-karras", "dpm-solver++", {"order": 2, "plan": "karras"},
                    "DPM-Solver++(2M) on Karras sigmas (rho=7)"))
    register(Preset("dpmpp-2m-sde", "dpm-solver++-sde", {"order": 2}, "SDE-DPM-Solver++(2M), log-SNR plan"))
