"""Euler, Heun and the stochastic sampler of Karras et al. (2022), "Elucidating the Design Space of
Diffusion-Based Generative Models" (EDM), Algorithms 1 and 2.

They work in EDM's variables: x = x_VP / alpha and sigma = sqrt((1 - alpha_bar) / alpha_bar), where
the probability-flow ODE is dx/dsigma = (x - D(x; sigma)) / sigma, and that slope is exactly the
model's eps. Euler on this ODE is DDIM (Song et al. 2021) on the same plan.
"""

from __future__ import annotations

import math

from bench import Param, Preset, SamplerSpec, hookimpl
from bench.ode import AFS_PARAM, afs_eps, check_afs, level, levels, multistep_nfe, plan_params, two_stage_nfe


def sample_euler(denoiser, x, timesteps, noise, *, afs=False, callback=None, cond=None, **_):
    """Euler's method, x_{i+1} = x_i + (sigma_{i+1} - sigma_i) d_i (Karras et al. 2022, Alg. 1 without line 9)."""
    lv = levels(denoiser.schedule, timesteps)
    x = x / lv[0].alpha
    for i, (cur, nxt) in enumerate(zip(lv[:-1], lv[1:])):
        d = afs_eps(x * cur.alpha) if afs and i == 0 else denoiser(x * cur.alpha, cur.t, cond)  # dx/dsigma
        if callback is not None:
            callback({"step": i, "t": cur.t, "x": x * cur.alpha, "x0": x - cur.sigma_edm * d})
        x = x + (nxt.sigma_edm - cur.sigma_edm) * d
    return x


def sample_heun(denoiser, x, timesteps, noise, *, afs=False, callback=None, cond=None, **_):
    """Heun's 2nd-order method (Karras et al. 2022, Alg. 1): an Euler step, then the trapezoidal
    correction with the slope at its end (line 9), except on the final jump to sigma = 0; 2N-1 calls."""
    lv = levels(denoiser.schedule, timesteps)
    x = x / lv[0].alpha
    for i, (cur, nxt) in enumerate(zip(lv[:-1], lv[1:])):
        d = afs_eps(x * cur.alpha) if afs and i == 0 else denoiser(x * cur.alpha, cur.t, cond)
        if callback is not None:
            callback({"step": i, "t": cur.t, "x": x * cur.alpha, "x0": x - cur.sigma_edm * d})
        x = heun_step(denoiser, x, d, cur, nxt, cond)
    return x


def heun_step(denoiser, x, d, start, end, cond):
    """From EDM sigma `start` to `end` with slope d: Euler, then the trapezoidal correction with the slope at
    the end point (Karras et al. 2022, Alg. 1 lines 5-8), except on the final jump to sigma = 0 (line 8)."""
    x_next = x + (end.sigma_edm - start.sigma_edm) * d
    if end.clean:
        return x_next
    d_next = denoiser(x_next * end.alpha, end.t, cond)
    return x + (end.sigma_edm - start.sigma_edm) * (d + d_next) / 2


def sample_edm_stochastic(denoiser, x, timesteps, noise, *, s_churn=40.0, s_tmin=0.05, s_tmax=50.0, s_noise=1.003,
                          callback=None, cond=None, **_):
    """EDM's stochastic sampler (Karras et al. 2022, Alg. 2): raise the noise level by gamma (churn),
    then a Heun step back down. The raised level is rounded through the model (EDM's round_sigma) and
    the added noise matches the level actually reached. The final jump to sigma = 0 adds no noise."""
    schedule = denoiser.schedule
    lv = levels(schedule, timesteps)
    sigma_max = schedule.sigma_at(schedule.t_max)
    gamma_max = min(s_churn / len(timesteps), math.sqrt(2) - 1)
    x = x / lv[0].alpha
    for i, (cur, nxt) in enumerate(zip(lv[:-1], lv[1:])):
        gamma = gamma_max if s_tmin <= cur.sigma_edm <= s_tmax and not nxt.clean else 0.0
        hat, x_cur = cur, x * cur.alpha
        if gamma > 0:
            t_hat = denoiser.round_time(schedule.t_from_sigma(min(cur.sigma_edm * (1 + gamma), sigma_max)))
            hat = level(schedule, t_hat)
            x = x + math.sqrt(max(hat.sigma_edm**2 - cur.sigma_edm**2, 0.0)) * s_noise * noise(i)
        d = denoiser(x * hat.alpha, hat.t, cond)
        if callback is not None:  # the state at the plan time; x0 as predicted at the churned point
            callback({"step": i, "t": cur.t, "x": x_cur, "x0": x - hat.sigma_edm * d})
        x = heun_step(denoiser, x, d, hat, nxt, cond)
    return x




@hookimpl
def register_samplers(register):
    register(SamplerSpec(
        "euler", sample_euler, "Euler on the probability-flow ODE in EDM's sigma (Karras et al. 2022, Alg. 1 "
        "without the correction); equals DDIM on the same plan", {**plan_params("uniform"), "afs": AFS_PARAM},
        plan="uniform", nfe=multistep_nfe, check=check_afs))
    register(SamplerSpec(
        "heun", sample_heun, "Heun's 2nd-order method (Karras et al. 2022, Alg. 1); 2N-1 calls for N steps",
        {**plan_params("uniform"), "afs": AFS_PARAM}, plan="uniform", nfe=two_stage_nfe, check=check_afs))
    register(SamplerSpec(
        "edm-stochastic", sample_edm_stochastic, "EDM's stochastic sampler with churn (Karras et al. 2022, Alg. 2; "
        "ImageNet-64 settings); 2N-1 calls",
        {**plan_params("karras"),
         "s_churn": Param(40.0, "total churn S_churn (gamma = min(S_churn/N, sqrt(2)-1))", low=0.0),
         "s_tmin": Param(0.05, "churn only where sigma >= S_tmin (EDM sigma)", low=0.0),
         "s_tmax": Param(50.0, "churn only where sigma <= S_tmax (EDM sigma)", low=0.0, finite=False),
         "s_noise": Param(1.003, "scale of the added noise S_noise", low=0.0)},
        plan="karras", nfe=two_stage_nfe))


@hookimpl
def register_presets(register):
    register(Preset("euler-karras", "euler", {"plan": "karras"}, "Euler on Karras sigmas (rho=7)"))
    register(Preset("heun-karras", "heun", {"plan": "karras"}, "Heun on Karras sigmas (rho=7), as EDM samples"))
