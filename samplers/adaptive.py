"""DPM-Solver adaptive (Lu et al. 2022a, "DPM-Solver: A Fast ODE Solver for Diffusion Probabilistic Model
Sampling in Around 10 Steps", Sec. 3.3 and App. C: DPM-Solver-12 and DPM-Solver-23 with an adaptive step size).

Each step from s to t = t(lambda_s + h) is taken twice, by DPM-Solver-k and DPM-Solver-(k-1), sharing their
evaluations; the difference is the error estimate. With delta = max(atol, rtol max(|x_lower|, |x_prev|)),
E = ||(x_higher - x_lower) / delta||_2 / sqrt(D) (per image), the step is accepted when E <= 1 and the next
h = min(theta h E^(-1/k), lambda_end - lambda_s). Here every image has its own step-size controller, so how many
calls an image takes depends on that image only, not on the batch it is in (the official implementation takes
the batch's largest E); the images still go through the network together, one call per stage, each at its own
time. eps at s is kept across a rejected trial, so a rejection costs k - 1 calls (the official code recomputes it,
k calls). After reaching the path's last time the sampler takes the denoising step every solver here ends with.

Discrete-time models (every trained `vp-discrete` network) are evaluated at trained timesteps only: each time
is rounded (`round_time`) and the coefficients come from the rounded times (as DPM-Solver-2 here does), so a step
spans at least k integer times; when fewer than k are left, the rest is one first-order (DDIM) step.
"""

from __future__ import annotations

import math

import torch

from bench import AdaptiveSample, Param, SamplerSpec, hookimpl, x0_from_eps
from bench.ode import level


def _coefficients(schedule, times: list) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
    """alpha, sigma (as (n,) float64 tensors) and lambda (floats) at each time, from bench.ode's levels."""
    lv = [level(schedule, t) for t in times]
    return (torch.tensor([v.alpha for v in lv], dtype=torch.float64),
            torch.tensor([v.sigma for v in lv], dtype=torch.float64), [v.lam for v in lv])


def _times(denoiser, s: float, h: float, fractions: tuple[float, ...], t_end, lam_end: float,
           discrete: bool) -> list:
    """The stage times inside the step s -> t(lambda_s + h) at the given fractions of h, and t itself (last).

    Discrete-time models: rounded to trained timesteps, strictly decreasing, t >= t_end."""
    schedule = denoiser.schedule
    lam_s = schedule.lambda_at(s)
    last = t_end if lam_s + h >= lam_end else schedule.t_from_lambda(lam_s + h)  # the last step ends on t_end
    raw = [schedule.t_from_lambda(lam_s + r * h) for r in fractions] + [last]
    if not discrete:
        return raw
    k = len(raw)
    t = max(min(denoiser.round_time(raw[-1]), s - k), t_end)
    out = [t]
    for i in range(k - 2, -1, -1):  # inner times, latest first: each strictly between its neighbours
        upper = s - (i + 1)
        out.insert(0, min(max(denoiser.round_time(raw[i]), out[0] + 1), upper))
    return out


def _call(denoiser, x: torch.Tensor, times: list, discrete: bool, cond) -> torch.Tensor:
    dtype = torch.long if discrete else torch.float64
    return denoiser(x, torch.tensor(times, dtype=dtype, device=x.device), cond)


def _col(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.to(like.device, like.dtype).view(-1, *[1] * (like.dim() - 1))


def _dpm_pair(denoiser, x, e0, s, stages, order, discrete, cond):
    """One trial step of every active image from s to its stage times' last: (lower, higher) = DPM-Solver-1 and -2
    (order 2; Lu et al. 2022a Alg. 1, general r1) or DPM-Solver-2 and -3 (order 3; Alg. 1 with r1 and Alg. 2,
    general r1, r2), sharing eps at s (e0) and the k - 1 evaluations inside the step."""
    schedule = denoiser.schedule
    a_s, _, l_s = _coefficients(schedule, s)
    coef = [_coefficients(schedule, [st[k] for st in stages]) for k in range(order)]  # stage 1, (2,) and t

    def first_order(k):  # DDIM from s to stage k: (alpha_k / alpha_s) x - sigma_k (e^{r h} - 1) eps_s, and r h
        a_k, g_k, l_k = coef[k]
        rh = torch.tensor([lk - l0 for lk, l0 in zip(l_k, l_s, strict=True)], dtype=torch.float64)
        return x * _col(a_k / a_s, x) - e0 * _col(g_k * torch.expm1(rh), x), rh

    _, g_t, _ = coef[-1]
    base, h = first_order(order - 1)
    phi_1 = torch.expm1(h)
    u1, r1h = first_order(0)
    r1 = r1h / h
    e1 = _call(denoiser, u1, [st[0] for st in stages], discrete, cond)
    second = base - (e1 - e0) * _col(g_t * phi_1 / (2 * r1), x)
    if order == 2:
        return base, second
    _, g_2, _ = coef[1]
    u2, r2h = first_order(1)
    r2 = r2h / h
    u2 = u2 - (e1 - e0) * _col(g_2 * (r2 / r1) * (torch.expm1(r2h) / r2h - 1), x)
    e2 = _call(denoiser, u2, [st[1] for st in stages], discrete, cond)
    return second, base - (e2 - e0) * _col(g_t * (phi_1 / h - 1) / r2, x)


def solve_adaptive(denoiser, x: torch.Tensor, t_start, t_end, *, order: int = 3, rtol: float = 0.05,
                   atol: float = 0.0078, h_init: float = 0.05, theta: float = 0.9, cond=None, callback=None):
    """Integrate the probability-flow ODE from t_start to t_end with per-image adaptive DPM-Solver-(k-1)k.

    Returns (x at t_end, evaluations per image as an int64 tensor)."""
    schedule = denoiser.schedule
    discrete = not getattr(denoiser, "continuous_time", False)
    batch = x.shape[0]
    x = x.clone()
    s = [t_start] * batch
    h = [h_init] * batch
    lam_end = schedule.lambda_at(t_end)
    x_prev = x.clone()
    eps_s: list[torch.Tensor | None] = [None] * batch
    nfe = torch.zeros(batch, dtype=torch.int64)
    fractions = (0.5,) if order == 2 else (1 / 3, 2 / 3)
    started = False
    while True:
        active = [i for i in range(batch) if s[i] != t_end]
        if not active:
            return x, nfe
        # eps at each active image's s (kept across rejections)
        need = [i for i in active if eps_s[i] is None]
        if need:
            out = _call(denoiser, x[need], [s[i] for i in need], discrete, None if cond is None else cond[need])
            for j, i in enumerate(need):
                eps_s[i] = out[j]
            nfe[need] += 1
            if callback is not None and not started:  # the first round: every image at t_start
                alpha_bar = schedule.alpha_bar_at(t_start)
                callback({"step": 0, "t": t_start, "x": x.clone(), "x0": x0_from_eps(x, out, alpha_bar)})
            started = True
        short = [i for i in active if discrete and s[i] - t_end < order]
        end = level(schedule, t_end)
        for i in short:  # fewer than k trained times left: one first-order (DDIM) step to t_end
            cur = level(schedule, s[i])
            x[i] = x[i] * (end.alpha / cur.alpha) - eps_s[i] * (end.sigma * math.expm1(end.lam - cur.lam))
            s[i], eps_s[i] = t_end, None
        active = [i for i in active if i not in short]
        if not active:
            continue
        stages = [_times(denoiser, s[i], min(h[i], lam_end - schedule.lambda_at(s[i])), fractions, t_end, lam_end,
                         discrete) for i in active]
        lower, higher = _dpm_pair(denoiser, x[active], torch.stack([eps_s[i] for i in active]),
                                  [s[i] for i in active], stages, order, discrete,
                                  None if cond is None else cond[active])
        nfe[active] += order - 1
        delta = torch.maximum(torch.full_like(lower, atol),
                              rtol * torch.maximum(lower.abs(), x_prev[active].abs()))
        error = ((higher - lower) / delta).flatten(1).pow(2).mean(1).sqrt().double().cpu()
        for j, i in enumerate(active):
            e = float(error[j])
            if not math.isfinite(e):  # NaN/inf from the network: no step size would ever be accepted
                raise ValueError(f"dpm-adaptive: the error estimate of image {i} is {e} at t={s[i]}")
            t_new = stages[j][-1]
            if e <= 1.0 or (discrete and t_new == s[i] - order):  # the smallest step there is: taken
                x[i], x_prev[i] = higher[j], lower[j]
                s[i], eps_s[i] = t_new, None
            lam_s = schedule.lambda_at(s[i])
            grow = math.inf if e == 0 else theta * h[i] * e ** (-1.0 / order)
            h[i] = min(grow, lam_end - lam_s) if s[i] != t_end else h[i]


def sample_dpm_adaptive(denoiser, x, timesteps, noise, *, order=3, rtol=0.05, atol=0.0078, h_init=0.05,
                        theta=0.9, callback=None, cond=None, **_):
    """DPM-Solver-12 / -23 with adaptive step size (Lu et al. 2022a, Sec. 3.3): from the plan's first time to its
    last, then the denoising step x_0 = x0_hat(x, t_last). Returns AdaptiveSample(x0, calls per image)."""
    t_start, t_end = timesteps[0], timesteps[-1]
    x, nfe = solve_adaptive(denoiser, x, t_start, t_end, order=order, rtol=rtol, atol=atol, h_init=h_init,
                            theta=theta, cond=cond, callback=callback)
    eps = denoiser(x, t_end, cond)
    x0 = x0_from_eps(x, eps, denoiser.schedule.alpha_bar_at(t_end))
    if callback is not None:  # steps are per image, so the callback sees the start and the end only
        callback({"step": 1, "t": t_end, "x": x, "x0": x0})
    return AdaptiveSample(x0, nfe + 1)


@hookimpl
def register_samplers(register):
    register(SamplerSpec(
        "dpm-adaptive", sample_dpm_adaptive, "DPM-Solver adaptive (Lu et al. 2022a): DPM-Solver-23 (order 3) or "
        "-12 (order 2) with an error-controlled step size per image; ignores --steps, its calls per image vary",
        {"order": Param(3, "3: DPM-Solver-23, 2: DPM-Solver-12", (2, 3)),
         "rtol": Param(0.05, "relative tolerance", low=1e-6, high=1.0),
         "atol": Param(0.0078, "absolute tolerance (data in [-1, 1]: 1/128)", low=1e-8, high=1.0),
         "h_init": Param(0.05, "first step in log-SNR", low=1e-4, high=10.0),
         "theta": Param(0.9, "safety factor of the step-size rule", low=0.1, high=1.0)},
        plan="adaptive", adaptive=True))
