"""k-diffusion's samplers (Katherine Crowson, k_diffusion/sampling.py), as ComfyUI and A1111 run them, and Restart
sampling (Xu et al. 2023, "Restart Sampling for Improving Generative Processes").

They work in EDM's variables, as samplers/karras.py does: x = x_VP / alpha, sigma = sigma_VP / alpha, the model's
denoised output is D = x - sigma eps and the probability-flow slope dx/dsigma is eps; lambda = -log sigma. The state
goes back to VP coordinates (times alpha) to call the model; LMS, which takes seeded `history`, carries the VP state
between steps, so a seeded tail starts from exactly the state a full run reports.

Intermediate noise levels (the DPM-2 and DPM++ midpoints) are rounded through `denoiser.round_time` and every
coefficient is computed at the level the model was evaluated at (`intermediate_level`), so a discrete model gets
trained timesteps and the NFE stays exact. The last step never adds noise.

Noise: a step's draw is `noise(i)` for loop index i. A step that needs a second, independent draw (DPM++ SDE) takes
it from the stream EXTRA_STREAM + i, and Restart's re-noising draws come from EXTRA_STREAM, EXTRA_STREAM + 1, ...:
streams far below -1 (x_T's stream), which nothing else uses, so noise(i) for i >= N - 1 stays untouched (the
conformance tests poison it) and every draw is per image, whatever the batch.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch

from bench import Param, Preset, SamplerSpec, hookimpl, x0_from_eps
from bench.errors import UserError
from bench.noise import STEP_BLOCK
from bench.ode import Level, level, levels, plan_params, two_stage_nfe
from samplers.karras import heun_step

EXTRA_STREAM = -(1 << 20)  # the first stream of second draws; loop indices never reach 2**20


def ancestral_step(sigma_from: float, sigma_to: float, eta: float = 1.0) -> tuple[float, float]:
    """k-diffusion's get_ancestral_step: (sigma_down, sigma_up) with sigma_up = min(sigma_to, eta sigma_to
    sqrt(sigma_from^2 - sigma_to^2) / sigma_from) and sigma_down^2 + sigma_up^2 = sigma_to^2."""
    if not eta or sigma_to == 0:
        return sigma_to, 0.0
    sigma_up = min(sigma_to, eta * sigma_to * math.sqrt(sigma_from**2 - sigma_to**2) / sigma_from)
    return math.sqrt(max(sigma_to**2 - sigma_up**2, 0.0)), sigma_up


def intermediate_level(denoiser, cur: Level, nxt: Level, sigma: float) -> Level:
    """The level the model is evaluated at for a wanted EDM sigma inside the step cur -> nxt: its time rounded
    through `round_time` and, on a discrete model, kept in [nxt.t, cur.t - 1], so it lies strictly inside the
    step and never repeats the step's own time."""
    schedule = denoiser.schedule
    t = denoiser.round_time(schedule.t_from_sigma(max(sigma, schedule.sigma_at(schedule.t_min))))
    if isinstance(t, int):
        t = min(max(t, nxt.t), cur.t - 1)
    return level(schedule, t)


def extra_draws(noise, start: int = EXTRA_STREAM) -> Iterator[torch.Tensor]:
    """noise(start), noise(start + 1), ... fetched STEP_BLOCK at a time, so that taking one per step does not
    make the per-step noise(i) redraw its block at every call."""
    while True:
        yield from [noise(start + k) for k in range(STEP_BLOCK)]
        start += STEP_BLOCK


def _report(callback, i, cur, x, eps):
    if callback is not None:
        callback({"step": i, "t": cur.t, "x": x * cur.alpha, "x0": x - cur.sigma_edm * eps})


def sample_euler_ancestral(denoiser, x, timesteps, noise, *, eta=1.0, s_noise=1.0, callback=None, cond=None, **_):
    """k-diffusion's sample_euler_ancestral: Euler to sigma_down, then fresh noise of sigma_up (get_ancestral_step);
    with eta = 1 it is DDIM with eta = 1 (DDPM's posterior variance) on the same plan."""
    lv = levels(denoiser.schedule, timesteps)
    x = x / lv[0].alpha
    for i, (cur, nxt) in enumerate(zip(lv[:-1], lv[1:])):
        eps = denoiser(x * cur.alpha, cur.t, cond)
        _report(callback, i, cur, x, eps)
        sigma_down, sigma_up = ancestral_step(cur.sigma_edm, nxt.sigma_edm, eta)
        x = x + (sigma_down - cur.sigma_edm) * eps
        if sigma_up * s_noise > 0:
            x = x + noise(i) * (s_noise * sigma_up)
    return x


def sample_dpm_2_ancestral(denoiser, x, timesteps, noise, *, eta=1.0, s_noise=1.0, callback=None, cond=None, **_):
    """k-diffusion's sample_dpm_2_ancestral: the midpoint method (DPM-Solver-2, Lu et al. 2022a) to sigma_down with
    the slope at the log-sigma midpoint, then sigma_up fresh noise; the final step is Euler to 0; 2N-1 calls.
    (At eta = 1, sigma_down = sigma_next^2 / sigma, so that midpoint is sigma_next itself.)"""
    lv = levels(denoiser.schedule, timesteps)
    x = x / lv[0].alpha
    for i, (cur, nxt) in enumerate(zip(lv[:-1], lv[1:])):
        eps = denoiser(x * cur.alpha, cur.t, cond)
        _report(callback, i, cur, x, eps)
        sigma_down, sigma_up = ancestral_step(cur.sigma_edm, nxt.sigma_edm, eta)
        if nxt.clean:
            return x - cur.sigma_edm * eps
        mid = intermediate_level(denoiser, cur, nxt, math.sqrt(cur.sigma_edm * sigma_down))
        eps_mid = denoiser((x + (mid.sigma_edm - cur.sigma_edm) * eps) * mid.alpha, mid.t, cond)
        x = x + (sigma_down - cur.sigma_edm) * eps_mid
        if sigma_up * s_noise > 0:
            x = x + noise(i) * (s_noise * sigma_up)
    return x


def sample_dpmpp_2s_ancestral(denoiser, x, timesteps, noise, *, eta=1.0, s_noise=1.0, callback=None, cond=None,
                              **_):
    """k-diffusion's sample_dpmpp_2s_ancestral: DPM-Solver++(2S) (Lu et al. 2022b, Alg. 1) to sigma_down with the
    data prediction at the lambda-midpoint s, then sigma_up fresh noise. With s rounded, r = (lambda_s - lambda) / h
    and D = (1 - 1/(2r)) D_0 + 1/(2r) D_s (D_s alone at r = 1/2, as k-diffusion); 2N-1 calls."""
    lv = levels(denoiser.schedule, timesteps)
    x = x / lv[0].alpha
    for i, (cur, nxt) in enumerate(zip(lv[:-1], lv[1:])):
        eps = denoiser(x * cur.alpha, cur.t, cond)
        _report(callback, i, cur, x, eps)
        denoised = x - cur.sigma_edm * eps
        if nxt.clean:
            return denoised
        sigma_down, sigma_up = ancestral_step(cur.sigma_edm, nxt.sigma_edm, eta)
        mid = intermediate_level(denoiser, cur, nxt, math.sqrt(cur.sigma_edm * sigma_down))
        h, r = math.log(cur.sigma_edm / sigma_down), math.log(cur.sigma_edm / mid.sigma_edm)
        r /= h
        x_mid = torch.lerp(denoised, x, mid.sigma_edm / cur.sigma_edm)  # (s/sigma) x + (1 - s/sigma) D
        denoised_mid = x_mid - mid.sigma_edm * denoiser(x_mid * mid.alpha, mid.t, cond)
        x = torch.lerp(torch.lerp(denoised, denoised_mid, 1 / (2 * r)), x, sigma_down / cur.sigma_edm)
        if sigma_up * s_noise > 0:
            x = x + noise(i) * (s_noise * sigma_up)
    return x


def sample_dpmpp_sde(denoiser, x, timesteps, noise, *, eta=1.0, s_noise=1.0, callback=None, cond=None, **_):
    """k-diffusion's sample_dpmpp_sde with r = 1/2: singlestep DPM-Solver++ (stochastic), an ancestral substep to the
    lambda-midpoint s, then the whole step with D = (1 - 1/(2r)) D_0 + 1/(2r) D_s, each adding sigma_up noise.

    k-diffusion draws both noises from one Brownian tree in sigma: (W(s) - W(sigma)) / sqrt(sigma - s) and
    (W(sigma_next) - W(sigma)) / sqrt(sigma - sigma_next). The increments over [s, sigma] (z1 = noise(i)) and
    [sigma_next, s] (z2, the extra stream) are independent, so z1 and (sqrt(sigma - s) z1 + sqrt(s - sigma_next) z2) /
    sqrt(sigma - sigma_next) have exactly the tree's joint law, and steps cover disjoint sigma intervals; 2N-1 calls.
    """
    lv = levels(denoiser.schedule, timesteps)
    x = x / lv[0].alpha
    second = extra_draws(noise)
    stochastic = eta * s_noise > 0
    for i, (cur, nxt) in enumerate(zip(lv[:-1], lv[1:])):
        eps = denoiser(x * cur.alpha, cur.t, cond)
        _report(callback, i, cur, x, eps)
        denoised = x - cur.sigma_edm * eps
        if nxt.clean:
            return denoised
        sigma, mid = cur.sigma_edm, intermediate_level(denoiser, cur, nxt, math.sqrt(cur.sigma_edm * nxt.sigma_edm))
        r = (mid.lam - cur.lam) / (nxt.lam - cur.lam)
        z1, z2 = (noise(i), next(second)) if stochastic else (0.0, 0.0)
        sigma_down, sigma_up = ancestral_step(sigma, mid.sigma_edm, eta)
        x_mid = torch.lerp(denoised, x, sigma_down / sigma) + z1 * (s_noise * sigma_up)
        denoised_mid = x_mid - mid.sigma_edm * denoiser(x_mid * mid.alpha, mid.t, cond)
        sigma_down, sigma_up = ancestral_step(sigma, nxt.sigma_edm, eta)
        a, b = sigma - mid.sigma_edm, mid.sigma_edm - nxt.sigma_edm
        z = (math.sqrt(a) * z1 + math.sqrt(b) * z2) / math.sqrt(a + b)  # W(sigma_next) - W(sigma), normalised
        x = torch.lerp(torch.lerp(denoised, denoised_mid, 1 / (2 * r)), x, sigma_down / sigma)
        x = x + z * (s_noise * sigma_up)
    return x


def sample_dpmpp_3m_sde(denoiser, x, timesteps, noise, *, eta=1.0, s_noise=1.0, callback=None, cond=None, **_):
    """k-diffusion's sample_dpmpp_3m_sde: DPM-Solver++(3M) SDE, x' = e^{-h(1+eta)} x + (1 - e^{-h(1+eta)}) D plus
    phi_2 / phi_3 corrections from the last two data predictions (orders 1, 2, 3 as they become available), then
    sigma' sqrt(1 - e^{-2 eta h}) fresh noise; the final step is the denoising step; one call per step. As in
    k-diffusion (and DPM-Solver's reference code) D2 = h^2 x0''/2 is weighted by phi_3, where the exact integral
    gives 2 phi_3 (the README's order notes; samplers/dpm_solver.py's 3M uses the exact one)."""
    lv = levels(denoiser.schedule, timesteps)
    x = x / lv[0].alpha
    past: list[tuple[float, torch.Tensor]] = []  # (h of the step after it, data prediction), newest last
    for i, (cur, nxt) in enumerate(zip(lv[:-1], lv[1:])):
        eps = denoiser(x * cur.alpha, cur.t, cond)
        _report(callback, i, cur, x, eps)
        denoised = x - cur.sigma_edm * eps
        if nxt.clean:
            return denoised
        h = nxt.lam - cur.lam
        h_eta = h * (eta + 1)
        phi_2 = math.expm1(-h_eta) / h_eta + 1
        phi_3 = phi_2 / h_eta - 0.5
        x = torch.lerp(denoised, x, math.exp(-h_eta))
        if len(past) >= 2:  # slope d1 and curvature d2 of D in lambda, in units of h, from divided differences
            (h_2, d_2), (h_1, d_1) = past[-2:]
            r0, r1 = h_1 / h, h_2 / h
            d1_0, d1_1 = (denoised - d_1) / r0, (d_1 - d_2) / r1
            d1 = d1_0 + (d1_0 - d1_1) * (r0 / (r0 + r1))
            d2 = (d1_0 - d1_1) / (r0 + r1)
            x = x + phi_2 * d1 - phi_3 * d2
        elif past:
            h_1, d_1 = past[-1]
            x = x + phi_2 * (denoised - d_1) / (h_1 / h)
        if eta * s_noise > 0:
            x = x + noise(i) * (nxt.sigma_edm * math.sqrt(-math.expm1(-2 * eta * h)) * s_noise)
        past = past[-1:] + [(h, denoised)]
    return x


def lms_coefficients(sigmas, i: int, order: int) -> list[float]:
    """k-diffusion's linear_multistep_coeff for j = 0..order-1: the integral over [sigma_i, sigma_{i+1}] of the
    Lagrange basis polynomial through sigma_i, ..., sigma_{i-order+1} that is 1 at sigma_{i-j}, by Gauss-Legendre
    quadrature with `order` nodes (exact: the polynomials have degree order - 1 <= 2 order - 1)."""
    nodes, weights = np.polynomial.legendre.leggauss(order)
    lo, hi = float(sigmas[i]), float(sigmas[i + 1])
    tau = (hi - lo) / 2 * nodes + (hi + lo) / 2
    points = [float(sigmas[i - k]) for k in range(order)]
    out = []
    for j in range(order):
        basis = np.ones_like(tau)
        for k in range(order):
            if k != j:
                basis *= (tau - points[k]) / (points[j] - points[k])
        out.append(float((hi - lo) / 2 * np.dot(weights, basis)))
    return out


def sample_lms(denoiser, x, timesteps, noise, *, order=4, history=(), callback=None, cond=None, **_):
    """k-diffusion's sample_lms: linear multistep in EDM's sigma, dx/dsigma = eps interpolated by the Lagrange
    polynomial through the last `order` slopes and integrated exactly over the actual sigmas; order 1, 2, ...
    while the history fills; the step to sigma = 0 is an LMS step too, as in k-diffusion and diffusers."""
    schedule = denoiser.schedule
    lv = levels(schedule, timesteps)
    sigmas = [level(schedule, e.t).sigma_edm for e in history] + [v.sigma_edm for v in lv]
    slopes = [e.eps for e in history]  # seeded evaluations (bench.ode.Evaluation): eps is dx/dsigma
    for i, (cur, nxt) in enumerate(zip(lv[:-1], lv[1:])):  # x stays a VP state, so a seeded tail starts from
        eps = denoiser(x, cur.t, cond)                      # exactly the state a full run reports
        if callback is not None:
            callback({"step": i, "t": cur.t, "x": x, "x0": x0_from_eps(x, eps, cur.alpha_bar)})
        slopes = (slopes + [eps])[-order:]
        x_edm = x * (1 / cur.alpha)
        for c, d in zip(lms_coefficients(sigmas, len(history) + i, len(slopes)), reversed(slopes)):
            x_edm = x_edm.add(d, alpha=c)
        x = x_edm.mul_(nxt.alpha)
    return x


def karras_sigmas(sigma_max: float, sigma_min: float, num: int, rho: float = 7.0) -> list[float]:
    """`num` sigmas from sigma_max down to sigma_min spaced as Karras et al. (2022), Eq. 5."""
    top, bottom = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return [(top + i / (num - 1) * (bottom - top)) ** rho for i in range(num)]


def restart_interval(denoiser, lv: list[Level], restart_min: float, restart_max: float, restart_steps: int):
    """Where Restart runs: the index j of the plan time nearest sigma = restart_min in log sigma (never the first),
    and the restart grid from sigma = restart_max (rounded; the plan time before j if that is not above sigma_j)
    down to sigma_j in `restart_steps` Karras-spaced (rho = 7) steps, intermediate times rounded."""
    schedule = denoiser.schedule
    j = min(range(1, len(lv) - 1), key=lambda i: abs(math.log(lv[i].sigma_edm / restart_min)))
    sigma_top = min(max(restart_max, schedule.sigma_at(schedule.t_min)), schedule.sigma_at(schedule.t_max))
    top = level(schedule, denoiser.round_time(schedule.t_from_sigma(sigma_top)))
    if not top.sigma_edm > lv[j].sigma_edm:
        top = lv[j - 1]
    sigmas = karras_sigmas(top.sigma_edm, lv[j].sigma_edm, restart_steps + 1)
    inner = [level(schedule, denoiser.round_time(schedule.t_from_sigma(s))) for s in sigmas[1:-1]]
    return j, [top, *inner, lv[j]]


def sample_restart(denoiser, x, timesteps, noise, *, restart_min=0.06, restart_max=0.30, restart_steps=2,
                   restart_times=2, callback=None, cond=None, **_):
    """Restart sampling (Xu et al. 2023, Alg. 1): Heun's ODE steps on the plan; on reaching the plan time t_min
    nearest sigma = restart_min, restart_times times: add noise up to t_max (sigma = restart_max),
    x += sqrt(sigma_max^2 - sigma_min^2) z, and solve back down to t_min with restart_steps Heun steps."""
    lv = levels(denoiser.schedule, timesteps)
    j, grid = restart_interval(denoiser, lv, restart_min, restart_max, restart_steps) if len(lv) > 2 else (-1, [])
    x = x / lv[0].alpha
    for i, (cur, nxt) in enumerate(zip(lv[:-1], lv[1:])):
        for k in range(restart_times if i == j else 0):
            x = x + math.sqrt(grid[0].sigma_edm**2 - cur.sigma_edm**2) * noise(EXTRA_STREAM + k)
            for start, end in zip(grid[:-1], grid[1:]):
                x = heun_step(denoiser, x, denoiser(x * start.alpha, start.t, cond), start, end, cond)
        eps = denoiser(x * cur.alpha, cur.t, cond)
        _report(callback, i, cur, x, eps)
        x = heun_step(denoiser, x, eps, cur, nxt, cond)
    return x


def restart_nfe(timesteps, params) -> int:
    """Heun's 2N-1 on the plan, plus restart_times x restart_steps Heun steps of 2 calls once the plan has N >= 2."""
    restarts = params.get("restart_times", 2) * params.get("restart_steps", 2) if len(timesteps) >= 2 else 0
    return two_stage_nfe(timesteps, {}) + 2 * restarts


def check_restart(timesteps, params) -> None:
    """restart_min must lie below restart_max: the restarts add noise from the one up to the other."""
    if params.get("restart_times", 2) and not params.get("restart_min", 0.06) < params.get("restart_max", 0.30):
        raise UserError(f"restart: restart_min={params.get('restart_min')} must be below "
                        f"restart_max={params.get('restart_max')} (EDM sigmas; the restarts add noise from one up to "
                        "the other)")


def _noise_params(eta_high: float | None = None) -> dict[str, Param]:
    eta_help = "ancestral noise scale eta (0: deterministic, 1: k-diffusion's default)"
    if eta_high is not None:
        eta_help += "; at most 1, where sigma_down stays > 0 and the step keeps its two calls"
    return {"eta": Param(1.0, eta_help, low=0.0, high=eta_high),
            "s_noise": Param(1.0, "scale of the added noise s_noise", low=0.0)}


@hookimpl
def register_samplers(register):
    register(SamplerSpec(
        "euler-ancestral", sample_euler_ancestral, "Euler ancestral (k-diffusion sample_euler_ancestral; ComfyUI "
        "euler_ancestral, A1111 'Euler a'): Euler to sigma_down plus sigma_up fresh noise; N calls",
        {**plan_params("karras"), **_noise_params()}, plan="karras"))
    register(SamplerSpec(
        "dpm-2-ancestral", sample_dpm_2_ancestral, "DPM2 ancestral (k-diffusion sample_dpm_2_ancestral): the "
        "midpoint method at the log-sigma midpoint to sigma_down, plus sigma_up noise; 2N-1 calls",
        {**plan_params("karras"), **_noise_params(eta_high=1.0)}, plan="karras", nfe=two_stage_nfe))
    register(SamplerSpec(
        "dpmpp-2s-ancestral", sample_dpmpp_2s_ancestral, "DPM-Solver++(2S) ancestral (k-diffusion "
        "sample_dpmpp_2s_ancestral; Lu et al. 2022b): singlestep second order to sigma_down, plus sigma_up noise; "
        "2N-1 calls", {**plan_params("karras"), **_noise_params(eta_high=1.0)}, plan="karras", nfe=two_stage_nfe))
    register(SamplerSpec(
        "dpmpp-sde", sample_dpmpp_sde, "DPM-Solver++ SDE (k-diffusion sample_dpmpp_sde, r = 1/2): singlestep "
        "stochastic second order, Brownian increments exact in law; 2N-1 calls",
        {**plan_params("karras"), **_noise_params()}, plan="karras", nfe=two_stage_nfe))
    register(SamplerSpec(
        "dpmpp-3m-sde", sample_dpmpp_3m_sde, "DPM-Solver++(3M) SDE (k-diffusion sample_dpmpp_3m_sde): third-order "
        "multistep reverse SDE in data prediction; N calls", {**plan_params("karras"), **_noise_params()},
        plan="karras"))
    register(SamplerSpec(
        "lms", sample_lms, "Linear multistep (k-diffusion sample_lms): Adams-Bashforth in EDM's sigma with "
        "coefficients integrated over the actual sigmas, order 4; N calls",
        {**plan_params("karras"), "order": Param(4, "multistep order (k-diffusion's default 4)", (1, 2, 3, 4))},
        plan="karras"))
    register(SamplerSpec(
        "restart", sample_restart, "Restart sampling (Xu et al. 2023): Heun on the plan, then restart_times "
        "re-noisings from sigma restart_min to restart_max, each solved back with restart_steps Heun steps; "
        "2N-1 + 2 restart_times restart_steps calls (2N-1 for N = 1)",
        {**plan_params("karras"),
         "restart_min": Param(0.06, "EDM sigma of the plan time where restarts start (the nearest one)", low=1e-6),
         "restart_max": Param(0.30, "EDM sigma the restarts add noise up to", low=1e-6),
         "restart_steps": Param(2, "Heun steps per restart back down", low=1, high=1000),
         "restart_times": Param(2, "restarts K", low=0, high=100)},
        plan="karras", nfe=restart_nfe, check=check_restart))


@hookimpl
def register_presets(register):
    register(Preset("euler-a", "euler-ancestral", {"plan": "linspace"},
                    "Euler ancestral as A1111's 'Euler a' runs it: eta=1 on the uniform (linspace) schedule"))
    register(Preset("dpmpp-2m-sde-karras", "dpm-solver++-sde", {"order": 2, "plan": "karras"},
                    "SDE-DPM-Solver++(2M) on Karras sigmas (ComfyUI dpmpp_2m_sde + karras, A1111 'DPM++ 2M SDE "
                    "Karras')"))
    register(Preset("dpmpp-3m-sde-exponential", "dpmpp-3m-sde", {"plan": "exponential"},
                    "DPM-Solver++(3M) SDE on exponential sigmas (A1111 'DPM++ 3M SDE Exponential')"))
    register(Preset("lms-linspace", "lms", {"plan": "linspace"},
                    "LMS on the uniform (linspace) schedule, as A1111's 'LMS' and diffusers' LMSDiscreteScheduler"))
    # ComfyUI's other schedulers, each with a sampler it is commonly paired with, so --samplers all runs every plan
    register(Preset("euler-beta", "euler", {"plan": "beta"}, "Euler on the beta schedule (Lee et al. 2024, "
                    "alpha = beta = 0.6; ComfyUI euler + beta)"))
    register(Preset("dpmpp-2m-kl-optimal", "dpm-solver++", {"order": 2, "plan": "kl_optimal"},
                    "DPM-Solver++(2M) on the KL-optimal schedule (Sabour et al. 2024; ComfyUI dpmpp_2m + kl_optimal)"))
    register(Preset("dpmpp-2m-sgm-uniform", "dpm-solver++", {"order": 2, "plan": "sgm_uniform"},
                    "DPM-Solver++(2M) on ComfyUI's sgm_uniform schedule (dpmpp_2m + sgm_uniform)"))
    register(Preset("euler-simple", "euler", {"plan": "simple"}, "Euler on ComfyUI's simple schedule "
                    "(euler + simple)"))
