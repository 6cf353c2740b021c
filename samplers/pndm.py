"""Pseudo numerical methods: PLMS with pseudo Runge-Kutta warm-up (Liu et al. 2022), iPNDM (Zhang & Chen 2023)."""

from __future__ import annotations

import functools

import numpy as np
import torch

from bench import Param, Preset, SamplerSpec, hookimpl, x0_from_eps
from bench.errors import UserError
from bench.ode import AFS_PARAM, Level, afs_eps, check_afs, level, levels, multistep_nfe, plan_params
from samplers.deis import lagrange_weights

IPNDM_ORDERS = (1, 2, 3, 4)
PLMS_WARMUP = 3   # pseudo Runge-Kutta steps before the linear multistep takes over
PLMS_WARMUPS = ("runge-kutta", "improved-euler")
# Adams-Bashforth weights for equal steps, newest output first (iPNDM uses them whatever the step sizes).
ADAMS_BASHFORTH = {1: (1.0,), 2: (3 / 2, -1 / 2), 3: (23 / 12, -16 / 12, 5 / 12),
                   4: (55 / 24, -59 / 24, 37 / 24, -9 / 24)}


def ddim_transfer(x: torch.Tensor, eps: torch.Tensor, cur: Level, nxt: Level) -> torch.Tensor:
    """PNDM's transfer part phi(x_t, eps, t, t') (Liu et al. 2022): the deterministic DDIM step."""
    x0 = x0_from_eps(x, eps, cur.alpha_bar)
    return x0.mul_(nxt.alpha).add_(eps, alpha=nxt.sigma)


def sample_plms(denoiser, x, timesteps, noise, *, warmup="runge-kutta", history=(), callback=None, cond=None,
                **_):
    """PLMS (Liu et al. 2022, "Pseudo Numerical Methods for Diffusion Models on Manifolds"), the pseudo linear
    multistep method:

        x_{i+1} = phi(x_i, e'_i, t_i, t_{i+1}),   e'_i = (55 e_i - 59 e_{i-1} + 37 e_{i-2} - 9 e_{i-3}) / 24.

    Warm-up 'runge-kutta' (the paper): three pseudo Runge-Kutta steps, their pseudo 4th-order gradient
    e' = (e_1 + 2 e_2 + 2 e_3 + e_4) / 6 with e_1 at x_i, e_2 and e_3 at the midpoint time, e_4 at t_{i+1};
    NFE = 4 x 3 + (N - 3). A discrete-time model evaluates the midpoint at its rounded time, and phi uses
    alpha_bar there. Warm-up 'improved-euler' (Stable Diffusion's PLMS sampler, diffusers' PNDM with
    skip_prk_steps): one pseudo improved-Euler step e' = (e_0 + eps(phi(x_0, e_0), t_1)) / 2, then
    Adams-Bashforth of orders 2 and 3 while the history fills; NFE = N + 1.
    Seeded `history` (three evaluations) replaces either warm-up.
    """
    check_plms(timesteps, {"warmup": warmup})
    schedule = denoiser.schedule
    lv = levels(schedule, timesteps)
    past = [e.eps for e in history]
    for i, (cur, nxt) in enumerate(zip(lv[:-1], lv[1:])):
        e_1 = denoiser(x, cur.t, cond)
        if callback is not None:
            callback({"step": i, "t": cur.t, "x": x, "x0": x0_from_eps(x, e_1, cur.alpha_bar)})
        if len(past) < PLMS_WARMUP and warmup == "runge-kutta":   # nxt is a plan time since N > PLMS_WARMUP
            mid = level(schedule, denoiser.round_time((cur.t + nxt.t) / 2))
            e_2 = denoiser(ddim_transfer(x, e_1, cur, mid), mid.t, cond)
            e_3 = denoiser(ddim_transfer(x, e_2, cur, mid), mid.t, cond)
            e_4 = denoiser(ddim_transfer(x, e_3, cur, nxt), nxt.t, cond)
            e_prime = (e_1 + 2 * e_2 + 2 * e_3 + e_4) / 6
        elif not past:   # pseudo improved Euler; nxt is a plan time since N >= 2
            e_prime = (e_1 + denoiser(ddim_transfer(x, e_1, cur, nxt), nxt.t, cond)) / 2
        else:            # linear multistep: Adams-Bashforth weights on eps, newest first
            weights = ADAMS_BASHFORTH[min(len(past) + 1, 4)]
            e_prime = sum(w * e for w, e in zip(weights, [e_1, *reversed(past)]))
        past = (past + [e_1])[-PLMS_WARMUP:]
        x = ddim_transfer(x, e_prime, cur, nxt)
    return x


def check_plms(timesteps, params) -> None:
    """Each warm-up needs its steps before the final jump: 3 for Runge-Kutta, 1 for improved Euler."""
    steps = PLMS_WARMUP if params.get("warmup", "runge-kutta") == "runge-kutta" else 1
    if len(timesteps) <= steps:
        raise UserError(f"plms with warmup={params.get('warmup', 'runge-kutta')} needs steps >= {steps + 1} "
                        f"({steps} warm-up step{'s' if steps > 1 else ''} before the final one); "
                        f"got steps={len(timesteps)}")


def plms_nfe(timesteps, params) -> int:
    """Runge-Kutta warm-up: four calls in each of its three steps; improved Euler: two in the first step."""
    if params.get("warmup", "runge-kutta") == "runge-kutta":
        return len(timesteps) + 3 * min(PLMS_WARMUP, len(timesteps))
    return len(timesteps) + 1


def sample_ipndm(denoiser, x, timesteps, noise, *, order=4, variable_step=False, afs=False, history=(),
                 callback=None, cond=None, **_):
    """iPNDM (Zhang & Chen 2023, their improved PNDM; the form diff-sampler ships): Adams-Bashforth
    on eps in the ODE dx^/dsigma = eps of x^ = x / alpha, sigma = sqrt((1 - alpha_bar) / alpha_bar):

        x^_{i+1} = x^_i + (sigma_{i+1} - sigma_i) sum_j b_j eps_{i-j},   b = (55, -59, 37, -9) / 24 at order 4,

    with the lower orders (1; (3, -1)/2; (23, -16, 5)/12) while the history fills. These are the weights for
    equal steps; on the unequal sigma steps of every practical plan the method is second order (see the
    README's order table). `variable_step` integrates the Lagrange polynomial through the actual sigmas
    instead (exact in float64), which keeps the nominal order: that is DEIS's rhoAB (Zhang & Chen 2023, eps
    polynomial in rho = sigma) and the idea of diff-sampler's iPNDM_v.
    PLMS after its warm-up is this method with equal-step weights (phi is the Euler step in x^ and sigma).
    The last step lands on sigma = 0 with the same formula.
    """
    schedule = denoiser.schedule
    lv = levels(schedule, timesteps)
    past = [(level(schedule, e.t), e.eps) for e in history]   # (level, eps), oldest first
    for i, (cur, nxt) in enumerate(zip(lv[:-1], lv[1:])):
        eps = afs_eps(x) if afs and i == 0 and not past else denoiser(x, cur.t, cond)
        if callback is not None:
            callback({"step": i, "t": cur.t, "x": x, "x0": x0_from_eps(x, eps, cur.alpha_bar)})
        past = (past + [(cur, eps)])[-order:]
        newest_first = past[::-1]
        if variable_step:
            weights = variable_step_weights(tuple(lv_.sigma_edm for lv_, _ in newest_first), nxt.sigma_edm)
        else:
            weights = [(nxt.sigma_edm - cur.sigma_edm) * b for b in ADAMS_BASHFORTH[len(past)]]
        x_hat = x * (1 / cur.alpha)
        for w, (_, e) in zip(weights, newest_first):
            x_hat = x_hat.add(e, alpha=w)
        x = x_hat.mul_(nxt.alpha)
    return x


@functools.lru_cache(maxsize=4096)  # a plan's steps recur in every batch: integrate each once
def variable_step_weights(sigmas: tuple[float, ...], sigma_next: float) -> list[float]:
    """int_{sigma_0}^{sigma_next} l_j(s) ds for the Lagrange basis on `sigmas` (newest first): the
    Adams-Bashforth weights for the actual, unequal steps."""
    return lagrange_weights(sigmas, sigmas[0], sigma_next, _identity)


def _identity(values: np.ndarray) -> np.ndarray:
    return values


@hookimpl
def register_samplers(register):
    register(SamplerSpec(
        "ipndm", sample_ipndm, "iPNDM-4 (Zhang & Chen 2023, as in diff-sampler): Adams-Bashforth on eps in the "
        "sigma ODE with lower-order warm-up; NFE = steps",
        {"order": Param(4, "Adams-Bashforth order (model outputs combined)", IPNDM_ORDERS),
         "variable_step": Param(False, "weights for the actual (unequal) sigma steps instead of equal-step ones"),
         "afs": AFS_PARAM, **plan_params("karras")},
        plan="karras", nfe=multistep_nfe, check=check_afs))
    register(SamplerSpec(
        "plms", sample_plms, "PLMS (Liu et al. 2022): pseudo linear multistep after 3 pseudo Runge-Kutta "
        "warm-up steps of 4 calls each; NFE = steps + 9 (warmup=improved-euler: steps + 1)",
        {"warmup": Param("runge-kutta", "runge-kutta (the paper: 3 steps of 4 calls) or improved-euler (Stable "
                         "Diffusion's PLMS: 1 extra call)", PLMS_WARMUPS),
         **plan_params("uniform")},
        plan="uniform", nfe=plms_nfe, check=check_plms))


@hookimpl
def register_presets(register):
    register(Preset("ipndm-v", "ipndm", {"variable_step": True}, "iPNDM-4 with variable-step Adams-Bashforth "
                    "weights (keeps order 4 on unequal steps; = DEIS's rhoAB-4)"))
    register(Preset("plms-sd", "plms", {"warmup": "improved-euler", "plan": "leading"}, "PLMS as Stable "
                    "Diffusion's PLMS sampler and diffusers' PNDM (skip_prk_steps) run it: improved-Euler start, "
                    "leading plan, N + 1 calls"))
